"""``stageline up`` / ``stageline worker``, exactly as the CLI runs them, plus the bench pipeline.

stageline has no way yet to load user actors into its own processes, so this
entry point opens the same ``Stack`` with the bench's no-op actors and
5-stage pipeline registered (``data.install``), then hands over to the CLI's
own command::

    python -m bench.stageline_proc up --port 8123
    python -m bench.stageline_proc worker
"""

from __future__ import annotations

import sys

from bench import data
from stageline import serve, stack
from stageline.settings import Settings


class BenchStack(stack.Stack):
    @classmethod
    async def open(cls, settings: Settings, *, embedded: bool = True) -> stack.Stack:
        opened = await super().open(settings, embedded=embedded)
        data.install(opened.actors, opened.catalog)
        return opened


def main(argv: list[str]) -> None:
    from stageline import cli

    serve.Stack = BenchStack  # type: ignore[misc]
    command = argv[0] if argv else "up"
    if command == "up":
        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 8000
        cli.up(host="127.0.0.1", port=port)
    elif command == "worker":
        cli.worker()
    else:
        raise SystemExit(f"usage: python -m bench.stageline_proc up [--port N] | worker ({argv})")


if __name__ == "__main__":
    main(sys.argv[1:])
