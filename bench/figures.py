"""What a scenario measures: figures (repeated samples), ratios between them, notes."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    """One measured quantity, sampled once per repetition (warm-ups are not kept)."""

    system: str
    variant: str
    unit: str
    samples: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.system}: {self.variant}"

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "variant": self.variant,
            "unit": self.unit,
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "samples": self.samples,
            "higher_is_better": self.higher_is_better,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass
class Ratio:
    """``numerator / denominator`` of two figures' medians (stageline over a peer)."""

    label: str
    numerator: str
    denominator: str


@dataclass
class Scenario:
    name: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def figure(
        self, system: str, variant: str, unit: str, *, higher_is_better: bool = True
    ) -> Figure:
        """The figure ``system: variant``, created on first use."""
        fig = Figure(system, variant, unit, higher_is_better=higher_is_better)
        return self.figures.setdefault(fig.key, fig)

    def ratio(self, label: str, numerator: Figure, denominator: Figure) -> None:
        self.ratios.append(Ratio(label, numerator.key, denominator.key))

    def ratio_value(self, ratio: Ratio) -> float | None:
        num, den = self.figures.get(ratio.numerator), self.figures.get(ratio.denominator)
        if num is None or den is None or not num.samples or not den.samples or den.median == 0:
            return None
        return num.median / den.median

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "seconds": round(self.seconds, 1),
            "figures": {key: fig.to_json() for key, fig in self.figures.items()},
            "ratios": [
                {
                    "label": r.label,
                    "numerator": r.numerator,
                    "denominator": r.denominator,
                    "value": self.ratio_value(r),
                }
                for r in self.ratios
            ],
            "notes": self.notes,
        }


Variant = Callable[[], Awaitable[dict[str, float]]]
"""One timed repetition: returns ``{figure key: value}`` for the figures it measured."""


async def repeat_round_robin(
    scenario: Scenario,
    variants: Sequence[tuple[Variant, Sequence[Figure]]],
    *,
    repeat: int,
    warmup: int,
    log: Callable[[str], None],
) -> None:
    """Run every variant ``warmup`` times (kept out of the figures), then ``repeat`` times.

    The variants take turns (A B C, A B C, ...) so that a noisy neighbour or a
    warming cache hits each of them alike instead of the one that ran last.
    """
    for round_ in range(warmup + repeat):
        warm = round_ < warmup
        for run, figures in variants:
            values = await run()
            for fig in figures:
                value = values.get(fig.key)
                if value is None:
                    continue
                if not warm:
                    fig.samples.append(value)
                log(f"  {'warm-up ' if warm else ''}{fig.key}: {format_value(value, fig.unit)}")


def format_value(value: float, unit: str) -> str:
    if value != value:  # nan
        return "-"
    if unit in {"ms"}:
        return f"{value:,.2f} {unit}"
    if unit in {"MB", "x"}:
        return f"{value:,.1f} {unit}"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}"
