"""Champion domains: category sets and numeric ranges the schema leaves open, taken from the champion's data.

A feature of dataset.columns that declares no `domain` (category) or no `min` / `max` (numeric) is checked
against the main-source rows of the snapshot the current champion was trained on (fetched from DVC by the
md5 the champion is tagged with, like drift): the categories seen there, or the range [min, max] seen there.
A declared domain or bound always wins: a column with a `domain` is checked only against it, and a numeric
column gets a champion bound only on the side(s) it leaves open. The checks themselves are GX expectations
(`retrain.data.validate.build_suite`); this module derives the reference and measures shares in pandas
(for the failure message and the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from retrain.config import ColumnSpec, DatasetConfig, DomainsConfig

MAX_CATEGORIES = 1000
"""A column with more distinct values than this in the reference gets no champion domain (an ID-like
column: a new batch always brings new values, and the set would bloat the suite and Data Docs)."""

TOP_VALUES = 5
"""How many offending values a message and the report name (most frequent first)."""


@dataclass(frozen=True)
class ColumnReference:
    """What one undeclared feature is checked against: the champion's categories or its observed range.

    `min` / `max` are None on a side the schema declares (the declared bound is checked instead).
    """

    kind: Literal["category", "numeric"]
    values: tuple[str, ...] = ()
    min: int | float | None = None
    max: int | float | None = None

    def as_json(self) -> dict[str, Any]:
        """The reference as the report shows it."""
        if self.kind == "category":
            return {"type": "category", "values": list(self.values)}
        return {"type": "numeric", "min": self.min, "max": self.max}


@dataclass(frozen=True)
class ChampionDomains:
    """The champion-domain part of the gate: which columns get which reference, or why none is checked.

    `status`: `computed` (reference derived), `off` (validate.domains.action off), `skipped` (no champion,
    or the champion was trained on this very snapshot), `unavailable` (its snapshot could not be fetched).
    """

    status: Literal["computed", "off", "skipped", "unavailable"]
    action: str
    reference: str = "none"
    reference_rows: int = 0
    columns: dict[str, ColumnReference] = field(default_factory=dict)
    skipped_columns: dict[str, str] = field(default_factory=dict)
    reason: str | None = None

    @property
    def active(self) -> bool:
        """Whether the gate gets champion-domain expectations."""
        return self.status == "computed" and self.action != "off" and bool(self.columns)

    def section(self, cfg: DomainsConfig) -> dict[str, Any]:
        """The report's `domains` section (no times or paths: same inputs, same bytes)."""
        out: dict[str, Any] = {"status": self.status, "action": self.action}
        if self.status in ("computed", "unavailable"):
            out["reference_data_hash"] = self.reference
        if self.reason:
            out["reason"] = self.reason
        if self.status == "computed":
            out.update(
                max_unseen_fraction=cfg.max_unseen_fraction,
                max_out_of_range_fraction=cfg.max_out_of_range_fraction,
                reference_rows=self.reference_rows,
                columns={name: ref.as_json() for name, ref in self.columns.items()},
                skipped_columns=dict(self.skipped_columns),
            )
        return out


def without_reference(action: str, reference: str, reason: str | None = None) -> ChampionDomains:
    """Champion domains when nothing is derived: switched off, no reference (`none`), or unavailable."""
    if action == "off" or reference == "off":
        return ChampionDomains("off", action)
    if reference == "none":
        why = "no reference: no champion yet, or the champion was trained on this very snapshot"
        return ChampionDomains("skipped", action, reason=why)
    return ChampionDomains("unavailable", action, reference=reference, reason=reason)


def open_sides(spec: ColumnSpec) -> tuple[bool, bool]:
    """Which bounds a numeric column leaves open (min, max); a category column: whether its domain is open."""
    if spec.type == "category":
        return spec.domain is None, False
    return spec.min is None, spec.max is None


def derive(reference: pd.DataFrame, dataset: DatasetConfig, action: str, md5: str) -> ChampionDomains:
    """The champion's categories / ranges for every feature whose schema leaves them open.

    `reference` is the main-source rows of the champion's training snapshot. A column the reference lacks,
    holds only nulls, or has more than MAX_CATEGORIES categories gets no reference (listed with the reason).
    """
    if action == "off":
        return without_reference(action, md5)
    columns: dict[str, ColumnReference] = {}
    skipped: dict[str, str] = {}
    for name, spec in dataset.schema.items():
        low_open, high_open = open_sides(spec)
        if not (low_open or high_open):
            continue
        if name not in reference.columns:
            skipped[name] = "not in the reference snapshot"
            continue
        if spec.type == "category":
            values = reference[name].dropna().astype("str").unique()
            if len(values) == 0:
                skipped[name] = "only nulls in the reference snapshot"
            elif len(values) > MAX_CATEGORIES:
                skipped[name] = f"{len(values)} categories in the reference snapshot (> {MAX_CATEGORIES})"
            else:
                columns[name] = ColumnReference("category", values=tuple(sorted(values)))
            continue
        numbers = pd.to_numeric(reference[name], errors="coerce").to_numpy(dtype=float)
        numbers = numbers[np.isfinite(numbers)]
        if len(numbers) == 0:
            skipped[name] = "no finite numbers in the reference snapshot"
            continue
        columns[name] = ColumnReference(
            "numeric",
            min=_number(numbers.min()) if low_open else None,
            max=_number(numbers.max()) if high_open else None,
        )
    return ChampionDomains("computed", action, md5, len(reference), columns, skipped)


def _number(value: float) -> int | float:
    """A bound as the data would print it: 90, not 90.0."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


@dataclass(frozen=True)
class Share:
    """Offending non-null values of a column: their share, count, and the most frequent ones with counts."""

    share: float
    count: int
    non_null: int
    top: list[tuple[Any, int]]

    def examples(self) -> str:
        """`['Astronaut' x750, 'Pilot' x3]`: the most frequent offending values, with counts."""
        return "[" + ", ".join(f"{value!r} x{count}" for value, count in self.top) + "]"


def unseen(series: pd.Series, values: tuple[str, ...] | list[str]) -> Share:
    """Non-null values outside `values` (compared as text, as GX's value_set is): nulls are never unseen."""
    present = series.dropna().astype("str")
    outside = present[~present.isin(set(values))]
    return _share(outside, len(present))


def out_of_range(series: pd.Series, low: float | None, high: float | None) -> Share:
    """Non-null numbers below `low` or above `high` (None: that side unbounded); text that is not a number counts."""
    present = series.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    outside = numbers.isna()
    if low is not None:
        outside |= numbers < low
    if high is not None:
        outside |= numbers > high
    return _share(present[outside], len(present))


def _share(outside: pd.Series, non_null: int) -> Share:
    """Share of `outside` among `non_null` values, with the TOP_VALUES most frequent (ties: by value)."""
    counts = outside.value_counts()
    ranked = sorted(counts.items(), key=lambda vc: (-vc[1], str(vc[0])))[:TOP_VALUES]
    top = [(_plain(value), int(count)) for value, count in ranked]
    return Share(len(outside) / non_null if non_null else 0.0, len(outside), int(non_null), top)


def _plain(value: Any) -> Any:
    """numpy scalars as Python values (so a message shows 250, not np.int64(250))."""
    return value.item() if isinstance(value, np.generic) else value
