"""``stageline up`` / ``stageline worker``, exactly as the CLI runs them, with the bench pipeline.

The bench's no-op actors and 5-stage pipeline are installed the way a user
installs their own (``STAGELINE_ACTORS``, here ``bench.data:install``); this
entry point only sets that and hands over to the CLI's own command, from the
repository root so that ``bench`` is importable::

    python -m bench.stageline_proc up --port 8123
    python -m bench.stageline_proc worker
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    from stageline import cli

    os.environ["STAGELINE_ACTORS"] = "bench.data:install"
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
