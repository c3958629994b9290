"""The command a stage actor receives on its channel, and its wire encoding."""

from __future__ import annotations

from typing import Any

import msgspec


class StageCommand(msgspec.Struct, frozen=True, kw_only=True):
    """Run stage ``index`` of a run, which was at ``version`` when the command was issued.

    ``item`` is the run's input merged with every earlier stage's output, so an
    actor never has to read the log on the happy path.
    """

    workspace: str
    run_id: str
    pipeline: str
    pipeline_version: int
    index: int
    version: int
    item: dict[str, Any]
    correlation_id: str | None = None
    cause: str | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StageCommand)


def encode(command: StageCommand) -> bytes:
    return _encoder.encode(command)


def decode(data: bytes) -> StageCommand:
    return _decoder.decode(data)
