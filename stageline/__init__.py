"""stageline: an event-sourced actor system on asyncio."""

__version__ = "0.1.0"
