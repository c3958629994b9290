"""What every scenario is given: the server, the scale, how often to repeat, where to log."""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Context:
    url: str
    """The bench's embedded server (store, views and broker)."""
    root: Path
    """A scratch directory (SQLite files, child logs), removed afterwards."""
    scale: float = 1.0
    repeat: int = 3
    warmup: int = 1
    quiet: bool = False
    shared: dict[str, Any] = field(default_factory=dict)
    """Figures one scenario leaves for another (the live pipeline's RSS for the footprint)."""
    _started: float = field(default_factory=time.monotonic)

    def n(self, full: int, minimum: int = 1) -> int:
        """``full`` scaled by ``--scale``, at least ``minimum``."""
        return max(minimum, round(full * self.scale))

    def seconds(self, full: float, minimum: float = 0.5) -> float:
        return max(minimum, full * self.scale)

    def log(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self._started
            print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)

    def workspace(self, kind: str) -> str:
        return f"bench-{kind}-{uuid.uuid4().hex[:8]}"

    def logdir(self) -> Path:
        path = self.root / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path
