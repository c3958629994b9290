"""Built-in stage actors."""

from stageline.actors.builtin import flaky, memory
from stageline.actors.builtin.memory import OntologyLoader
from stageline.actors.stage import ActorRegistry


def default_actors(ontology: OntologyLoader | None = None) -> ActorRegistry:
    """A registry holding every built-in actor; ``ontology`` loads a workspace's patterns
    (without it, ``extract`` and ``discover`` know the seed ontology only)."""
    return flaky.register(memory.register(ActorRegistry(), ontology))


__all__ = ["default_actors"]
