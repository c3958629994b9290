"""The command a stage actor receives on its channel, and its wire encoding."""

from __future__ import annotations

from typing import Any

import msgspec


class StageCommand(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
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
    attempt: int = 1
    correlation_id: str | None = None
    cause: str | None = None
    mark_start: bool = False
    """Record the start before running the stage, as for a redelivered command: set on a
    command put off because an attempt of its stage was in flight (which may be one that
    crashed its worker), so it runs again only once that attempt is recorded lost."""
    lost: int = 0
    """Attempts of this stage lost with their workers before this one: they do not count
    against the stage's retries."""

    def to(
        self,
        index: int,
        version: int,
        item: dict[str, Any],
        cause: str | None,
        attempt: int = 1,
        lost: int = 0,
    ) -> StageCommand:
        """The command for another stage (or another attempt) of the same run."""
        return StageCommand(
            workspace=self.workspace,
            run_id=self.run_id,
            pipeline=self.pipeline,
            pipeline_version=self.pipeline_version,
            index=index,
            version=version,
            item=item,
            attempt=attempt,
            correlation_id=self.correlation_id,
            cause=cause,
            lost=lost,
        )


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StageCommand)


def encode(command: StageCommand) -> bytes:
    return _encoder.encode(command)


def decode(data: bytes) -> StageCommand:
    return _decoder.decode(data)
