"""Built-in stage actors."""

from stageline.actors.builtin import memory
from stageline.actors.stage import ActorRegistry


def default_actors() -> ActorRegistry:
    """A registry holding every built-in actor."""
    return memory.register(ActorRegistry())


__all__ = ["default_actors"]
