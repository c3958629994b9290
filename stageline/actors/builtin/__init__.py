"""Built-in stage actors."""

from stageline.actors.builtin import flaky, memory
from stageline.actors.stage import ActorRegistry


def default_actors() -> ActorRegistry:
    """A registry holding every built-in actor."""
    return flaky.register(memory.register(ActorRegistry()))


__all__ = ["default_actors"]
