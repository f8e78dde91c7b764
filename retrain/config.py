"""Typed, frozen view of params.yaml: loaded once at the entry point, typos fail with the key's path."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from retrain.errors import ConfigError
from retrain.models.families import FAMILIES, Family, check_family, known


class Strict(BaseModel):
    """Base for every params section: unknown keys are errors and values never change after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(Strict):
    """One feature column of the declared schema."""

    type: Literal["int", "float", "category"]
    min: float | None = None
    max: float | None = None
    domain: tuple[str, ...] | None = None
    max_unseen_fraction: float = Field(0.0, ge=0.0, le=1.0)
    max_null_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.type == "category" and (self.min is not None or self.max is not None):
            raise ValueError("min/max apply to numeric columns, not category")
        if self.type != "category" and self.domain is not None:
            raise ValueError("domain applies to category columns only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


Task = Literal["binary", "multiclass", "regression"]

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "log_loss", "accuracy", "balanced_accuracy"),
    "multiclass": ("roc_auc_ovr", "log_loss", "accuracy", "balanced_accuracy"),
    "regression": ("r2", "rmse", "mae"),
}
"""Metrics each task can be scored with (see retrain/metrics.py for their direction)."""


class DatasetConfig(Strict):
    """What the data is: target, task, feature schema, protected attributes and slices.

    `columns: null` makes ingest infer the feature types from the main source (and log them);
    `labels: null` on a classification task infers the label set the same way.
    """

    name: str
    task: Task
    target: str
    labels: tuple[str, ...] | None = None
    positive_label: str | None = None
    columns: dict[str, ColumnSpec] | None = None
    exclude: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    slices: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DatasetConfig:
        if self.task == "regression":
            if self.labels is not None or self.positive_label is not None:
                raise ValueError("labels and positive_label apply to classification tasks, not regression")
        elif self.task == "binary":
            if self.positive_label is None:
                raise ValueError("a binary task needs positive_label")
            if self.labels is not None and (len(self.labels) != 2 or self.positive_label not in self.labels):
                raise ValueError(f"binary labels must be two values including positive_label, got {self.labels}")
        else:
            if self.positive_label is not None:
                raise ValueError("positive_label applies to binary tasks only")
            if self.labels is not None and len(self.labels) < 3:
                raise ValueError(f"a multiclass task needs at least 3 labels, got {self.labels}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels {self.labels} repeat a value")
        if self.columns is not None and not _data_checks_columns(info):
            if self.target in self.columns:
                raise ValueError(f"target {self.target!r} must not also be listed in columns")
            clash = [c for c in self.exclude if c in self.columns]
            if clash:
                raise ValueError(f"columns {clash} are both declared and excluded")
            for key, names in (("protected", self.protected), ("slices", self.slices)):
                unknown = [c for c in names if c not in self.columns]
                if unknown:
                    raise ValueError(f"{key} columns {unknown} are not declared in columns")
        if self.target in self.exclude:
            raise ValueError(f"target {self.target!r} cannot be excluded")
        return self

    @property
    def schema(self) -> dict[str, ColumnSpec]:
        """The feature columns; fails if they were neither declared nor resolved from the data."""
        if self.columns is None:
            raise ValueError("dataset.columns is not resolved yet (ingest infers it into data/raw/schema.json)")
        return self.columns

    @property
    def numeric(self) -> list[str]:
        """Numeric feature names, in declared order."""
        return [c for c, s in self.schema.items() if s.type != "category"]

    @property
    def categorical(self) -> list[str]:
        """Categorical feature names, in declared order."""
        return [c for c, s in self.schema.items() if s.type == "category"]

    @property
    def features(self) -> list[str]:
        """All feature names, in declared order (the model's input columns)."""
        return list(self.schema)

    @property
    def is_classification(self) -> bool:
        """Binary or multiclass."""
        return self.task != "regression"


class IngestConfig(Strict):
    """Where the raw data comes from and how its quirks are parsed.

    `source` is a CSV/Parquet file, a glob of batch files (`data/batches/*.csv`), or a SQLAlchemy URL
    (`sqlite:///data/source/adult.db`, `postgresql+psycopg://...`) read with `query`.
    """

    source: str
    query: str | None = None
    test_source: str | None = None
    test_query: str | None = None
    na_values: tuple[str, ...] = ("?",)
    label_suffix: str = ""
    delimiter: str = Field(",", min_length=1, max_length=1)
    drop_missing_target: bool = False
    max_bytes: int = Field(2_000_000_000, gt=0)
    sample_rows: int | None = Field(None, gt=0)


class VersionConfig(Strict):
    """Which DVC remote receives the snapshot (None: the repo's default remote)."""

    remote: str | None = None


class DriftConfig(Strict):
    """Drift of the new snapshot against the champion's training snapshot (PSI per feature)."""

    action: Literal["warn", "block", "off"] = "warn"
    psi_threshold: float = Field(0.25, gt=0.0)
    bins: int = Field(10, ge=2)

    @field_validator("action", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML reads a bare `off` as false: `action: off` and `--set validate.drift.action=off` mean "off"."""
        return "off" if value is False else value


class DomainsConfig(Strict):
    """Domains and ranges for columns that declare none, taken from the champion's training snapshot.

    A category column of dataset.columns without `domain`, or a numeric one without `min` / `max`, is checked
    against the values the current champion was trained on: a share of rows above `max_unseen_fraction`
    (categories never seen) or `max_out_of_range_fraction` (numbers outside the seen range) fails the data
    gate (`block`), is logged (`warn`), or is not checked (`off`). With no champion only what dataset.columns
    declares is checked (`retrain init` writes domains and ranges there).
    """

    action: Literal["block", "warn", "off"] = "block"
    max_unseen_fraction: float = Field(0.02, ge=0.0, le=1.0)
    max_out_of_range_fraction: float = Field(0.02, ge=0.0, le=1.0)

    @field_validator("action", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML reads a bare `off` as false."""
        return "off" if value is False else value


class ValidateConfig(Strict):
    """Table-level rules of the data gate (column rules come from dataset.columns)."""

    min_rows: int = Field(100, gt=0)
    max_rows: int = Field(100_000_000, gt=0)
    max_duplicate_fraction: float = Field(0.01, ge=0.0, le=1.0)
    min_class_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    leakage_threshold: float = Field(0.98, gt=0.5, le=1.0)
    drift: DriftConfig = DriftConfig()
    domains: DomainsConfig = DomainsConfig()


class SplitConfig(Strict):
    """How the snapshot becomes train / valid / test (stratified, grouped or time-ordered)."""

    valid_size: float = Field(0.2, gt=0.0, lt=1.0)
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    group_column: str | None = None
    time_column: str | None = None

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """The group / time column ingest keeps in the snapshot besides the features (none by default)."""
        return tuple(c for c in (self.group_column, self.time_column) if c)

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.group_column and self.time_column:
            raise ValueError("set group_column or time_column, not both")
        return self


class HeuristicConfig(Strict):
    """The non-ML rule baseline: per-category class shares / mean target of one column, or a numeric threshold.

    A categorical `column` groups by its values; a numeric one splits at `threshold` (None: the training median).
    """

    column: str = Field(min_length=1)
    threshold: float | None = None


class BaselinesConfig(Strict):
    """Which non-ML reference models every candidate must beat (`heuristic` needs `heuristic.column`)."""

    strategies: tuple[Literal["most_frequent", "stratified", "uniform", "mean", "median", "heuristic"], ...] = Field(
        min_length=1
    )
    heuristic: HeuristicConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> BaselinesConfig:
        if "heuristic" in self.strategies and self.heuristic is None:
            raise ValueError("strategy 'heuristic' needs baselines.heuristic: {column: <feature>}")
        return self


class ParamRange(Strict):
    """One dimension of a search space: a numeric range or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    int: bool = False
    choices: tuple[Any, ...] | None = None

    def outside(self, value: Any) -> str | None:
        """Why `value` is not a point of this range (None when it is one)."""
        if self.choices is not None:
            return None if value in self.choices else f"is not one of the choices {list(self.choices)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"is not a number (range [{self.low}, {self.high}])"
        if self.int and value != int(value):
            return f"is not an integer (range [{self.low}, {self.high}])"
        if not self.low <= value <= self.high:  # type: ignore[operator]
            return f"is outside the search space [{self.low}, {self.high}]"
        return None

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("give either choices or both low and high")
        if self.choices is None and self.low > self.high:  # type: ignore[operator]
            raise ValueError(f"low {self.low} > high {self.high}")
        return self


class FamilyConfig(Strict):
    """A model family: fixed hyperparameters, the space the search explores and its own budget.

    `space` left out means the family's default search space from its registry record
    (retrain/models/families.py); a `space` given replaces it as a whole (`space: {}`: no search, one fit
    of `fixed`). `n_trials` (None: `candidates.n_trials`) and `timeout_seconds` (None: no limit; a run cut
    by the clock is not reproducible) bound the search; `early_stopping_rounds` (families with boosting
    rounds: LightGBM) stops boosting inside each CV fold when the fold's validation loss stops improving;
    the refit then boosts the folds' mean best round count x sqrt(refit rows / fold rows). Each divisor d of
    `refit_learning_rate_divisors` is a train-only refit with learning_rate / d and d times the rounds, scored
    on valid; the one with the fewest trees whose valid score is within `refit_tolerance` (relative to the
    best of them) wins and is the saved model's setting (fewer trees: faster predictions, smaller file).
    `warm_start`: hyperparameter sets (each inside `space`; keys left out are sampled) enqueued as the
    search's first trials, before the champion's own (see `CandidatesConfig.warm_start_from_champion`);
    `warm_n_trials` (None: `n_trials`) is the budget of a search that starts from the champion's params.
    `pruning_warmup_rounds` (boosting rounds only; None: prune between folds
    only) reports each fold's validation loss to the pruner every few boosting rounds and lets it stop a
    trial mid-fold once this many rounds are done (not earlier: a high learning rate always looks better
    at first).
    """

    fixed: dict[str, Any] = {}
    space: dict[str, ParamRange] = {}
    n_trials: int | None = Field(default=None, ge=1)
    timeout_seconds: float | None = Field(default=None, gt=0)
    early_stopping_rounds: int | None = Field(default=None, ge=1)
    refit_learning_rate_divisors: tuple[float, ...] = Field(default=(1.0,), min_length=1)
    refit_tolerance: float = Field(default=0.0002, ge=0.0)
    pruning_warmup_rounds: int | None = Field(default=None, ge=1)
    warm_start: tuple[dict[str, Any], ...] = ()
    warm_n_trials: int | None = Field(default=None, ge=1)

    @field_validator("refit_learning_rate_divisors")
    @classmethod
    def _divisors(cls, divisors: tuple[float, ...]) -> tuple[float, ...]:
        """Positive and distinct, sorted: the refit tries the fewest trees first."""
        if any(d <= 0 for d in divisors) or len(set(divisors)) != len(divisors):
            raise ValueError(f"refit_learning_rate_divisors must be distinct numbers > 0, got {list(divisors)}")
        return tuple(sorted(divisors))

    @model_validator(mode="after")
    def _warm_start_in_space(self) -> FamilyConfig:
        """Every warm-start value names a dimension of `space` and lies inside it (the key path says which)."""
        for k, config in enumerate(self.warm_start):
            for name, value in config.items():
                where = f"warm_start[{k}].{name}"
                if name not in self.space:
                    dims = ", ".join(self.space) or "empty"
                    raise ValueError(f"{where}: not a dimension of the search space ({dims})")
                problem = self.space[name].outside(value)
                if problem:
                    raise ValueError(f"{where}: {value!r} {problem}")
        return self


def _default_space(record: Family) -> dict[str, dict[str, Any]]:
    """The family's default search space from its registry record, as params.yaml would write it."""
    return {name: dict(dim) for name, dim in record.space.items()}


COLUMNS_CHECKED = "columns_checked_against_data"
"""Validation-context flag: preflight checks every column reference against the data itself (with the
source's header in the message), so the declared-schema checks here would only repeat them."""


def _data_checks_columns(info: ValidationInfo) -> bool:
    """True when the caller (preflight) checks column references against the data."""
    return bool(info.context and info.context.get(COLUMNS_CHECKED))


def _family_section(section: Any, record: Family) -> Any:
    """A `candidates.<family>` section with the registry's defaults (space, fixed, ...) for every key it leaves out."""
    defaults = {**record.defaults, "space": _default_space(record)}
    if isinstance(section, FamilyConfig):
        given = section.model_dump(exclude_unset=True)
        if set(defaults) <= set(given):
            return section
        return FamilyConfig.model_validate({**defaults, **given})
    if isinstance(section, dict):
        return {**defaults, **section}
    return section  # a value pydantic will reject with the key's path


class CandidatesConfig(Strict):
    """Which families are tuned and how hard; `parallel_trials` > 1 is faster but not reproducible (TPE).

    `families` must name families of the registry (retrain/models/families.py `FAMILIES`). Each registered
    family has a section `candidates.<family>` (a FamilyConfig; absent: the family's defaults) held as a
    typed extra, so a new family needs no field here: read it with `family(name)` (or `candidates.lightgbm`
    / `getattr(candidates, name)`); it is dumped, looked up (`candidates.lightgbm.n_trials`) and overridden
    (`--set candidates.lightgbm.n_trials=3`) like any other key. A key that is neither a setting below nor
    a registered family is an error naming it.

    `storage`: None keeps Optuna studies in memory; `journal:<file>` appends them to a journal file
    (relative to the project root); a URL with `://` is an Optuna RDB storage. `monotone` maps numeric
    features to 1 (the score may only rise with it) or -1; families whose record has a `monotone_param`
    (LightGBM, HistGradientBoosting, random forest) are built with those constraints (logreg / ridge cannot
    be: the directional gate still checks whatever wins).

    `warm_start_from_champion`: each family's search first tries the hyperparameters the current champion
    (`promote.model_name@alias`) was tuned to when it is of that family (its dimensions inside the space),
    after the family's own `warm_start` list; the champion then enters the stage's cache key.

    `search_rows`: the hyperparameter search (CV trials) runs on a seeded sample of this many train rows,
    stratified on the label for classification (`retrain.models.sampling.search_positions`); the refits use every
    row. None: the search sees all rows. A large table's search cost then stays flat while the refits grow.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, FamilyConfig] = Field(init=False)

    families: tuple[str, ...] = Field(min_length=1)
    cv_folds: int = Field(3, ge=2)
    n_trials: int = Field(10, ge=1)
    parallel_trials: int = Field(default=1, ge=1)
    storage: str | None = None
    monotone: dict[str, Literal[-1, 1]] = {}
    warm_start_from_champion: bool = False
    search_rows: int | None = Field(default=None, ge=100)

    @model_validator(mode="before")
    @classmethod
    def _family_sections(cls, data: Any) -> Any:
        """Only settings and registered families are keys; every family gets a section (defaults filled in)."""
        if not isinstance(data, dict):
            return data
        unknown = [k for k in data if k not in cls.model_fields and k not in FAMILIES]
        if unknown:
            raise ValueError(
                "; ".join(f"candidates.{k}: unknown key" for k in unknown)
                + f" (neither a candidates setting: {', '.join(cls.model_fields)}; nor a model family: {known()})"
            )
        return {**data, **{name: _family_section(data.get(name, {}), r) for name, r in FAMILIES.items()}}

    @field_validator("families")
    @classmethod
    def _registered(cls, families: tuple[str, ...]) -> tuple[str, ...]:
        """Every listed family is in the registry: an unknown one fails here, not deep inside a run."""
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown model family {', '.join(map(repr, unknown))}; known families: {known()}")
        return families

    def family(self, name: str) -> FamilyConfig:
        """The section `candidates.<name>` of a registered family."""
        sections = self.__pydantic_extra__ or {}
        if name not in sections:
            raise ConfigError(f"candidates.{name}: unknown model family; known families: {known()}")
        return sections[name]

    @model_validator(mode="after")
    def _check(self) -> CandidatesConfig:
        bases = [f for f in self.families if not FAMILIES[f].meta]
        meta = [f for f in self.families if FAMILIES[f].meta]
        if meta and len(set(bases)) < 2:
            raise ValueError(f"family {meta[0]!r} needs at least two other families to stack, got {bases}")
        if self.storage is not None and not (self.storage.startswith("journal:") or "://" in self.storage):
            raise ValueError(
                f"storage {self.storage!r}: use null (in memory), 'journal:<file>' or an RDB URL (sqlite:///x.db)"
            )
        if self.search_rows is not None and meta:
            raise ValueError(
                f"search_rows: family {meta[0]!r} stacks out-of-fold scores of every train row, which a search on "
                f"a sample does not have; drop {meta[0]!r} from families or set search_rows: null"
            )
        return self


class Gate(Strict):
    """A gate of the policy; `enabled: false` skips it (recorded with status "skipped", it blocks nothing)."""

    enabled: bool = True


class MetricBoundsGate(Gate):
    """Absolute bounds on test metrics: `min` / `max` map a metric name (of the task) to its bound."""

    min: dict[str, float] = {}
    max: dict[str, float] = {}


class BaselineGate(Gate):
    """The candidate beats the best baseline by `margin`, in the metric's direction."""

    margin: float = 0.0


class ChampionGate(Gate):
    """No regression vs the champion: a seeded paired bootstrap CI of (candidate - champion) on test.

    Non-inferiority: passes when the lower end of the two-sided `confidence` interval of the improvement
    (candidate - champion in the better direction) is >= -`tolerance`, i.e. the test data show the
    candidate is not worse than the champion by more than the tolerance.
    `first_run`: what to do when no champion exists (promote: skip the comparison, logged; reject).
    """

    tolerance: float = Field(default=0.0, ge=0.0)
    resamples: int = Field(default=1000, ge=50)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    first_run: Literal["promote", "reject"] = "promote"


class SlicesGate(Gate):
    """The metric per slice: categorical `columns` (empty: dataset.slices), and numeric columns cut into `bands`.

    Slices under `min_rows` test rows are listed, not gated. The worst slice may trail the overall
    metric by at most `max_gap`; no slice may be worse than the champion's same slice by more than
    `champion_tolerance`.
    """

    columns: tuple[str, ...] = ()
    bands: dict[str, tuple[float, ...]] = {}
    min_rows: int = Field(default=30, ge=1)
    max_gap: float = Field(default=1.0, ge=0.0)
    champion_tolerance: float = Field(default=1.0, ge=0.0)


class PerturbationGate(Gate):
    """Noise numeric features (sigma = `noise_std` x the feature's std), swap categories at `swap_rate`.

    The metric may drop by at most `max_drop` (metric units); None: by at most `max_lift_share` of the
    candidate's lift over the best baseline (noise may eat at most half of what the model adds over the
    best non-ML rule, by default), a bound that means the same on every table and metric.
    """

    noise_std: float = Field(default=0.05, ge=0.0)
    swap_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_drop: float | None = Field(default=None, ge=0.0)
    max_lift_share: float = Field(default=0.5, gt=0.0, le=1.0)


class InvarianceGate(Gate):
    """Each attribute (empty: dataset.protected) swapped to each other value must barely move predictions.

    Bounds the share of rows whose predicted class changes and the mean |delta p| (regression: mean
    |delta prediction| / the target's std on test).
    """

    attributes: tuple[str, ...] = ()
    max_flip_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_mean_abs_delta: float = Field(default=0.05, ge=0.0)


class DirectionalGate(Gate):
    """Raising an `increasing` feature (by `step_std` x its std) must not lower the score; `decreasing` the reverse.

    The score is P(positive) (binary) or the prediction (regression). A row violates an expectation when
    its score moves the wrong way by more than `tolerance`; at most `max_violation_rate` of rows may.
    """

    increasing: tuple[str, ...] = ()
    decreasing: tuple[str, ...] = ()
    step_std: float = Field(default=0.5, gt=0.0)
    tolerance: float = Field(default=1e-6, ge=0.0)
    max_violation_rate: float = Field(default=0.01, ge=0.0, le=1.0)


class CalibrationGate(Gate):
    """Expected calibration error (`bins` equal-width bins) and Brier score bounded (classification).

    `method` (isotonic | sigmoid) calibrates the model on the validation split first; the calibrated
    model is then what is gated, registered and served.
    """

    method: Literal["isotonic", "sigmoid"] | None = None
    bins: int = Field(default=10, ge=2)
    max_ece: float = Field(default=0.05, ge=0.0)
    max_brier: float | None = Field(default=None, ge=0.0)


class ConfidenceGate(Gate):
    """A confidence threshold chosen on validation, stored with the model (classification).

    Confidence is the top class probability; rows under the threshold are abstentions. The threshold is
    the lowest that reaches `target_precision` (accuracy on the rows kept) on validation, or the one
    keeping `target_coverage` of them. On test the coverage and precision must reach the minimums.
    """

    target_precision: float | None = Field(default=None, gt=0.0, le=1.0)
    target_coverage: float | None = Field(default=None, gt=0.0, le=1.0)
    min_coverage: float = Field(default=0.0, ge=0.0, le=1.0)
    min_precision: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_target(self) -> ConfidenceGate:
        if self.enabled and (self.target_precision is None) == (self.target_coverage is None):
            raise ValueError("set exactly one of target_precision and target_coverage")
        return self


class FairnessGate(Gate):
    """Demographic-parity and equalized-odds differences per attribute (empty: dataset.protected) bounded.

    Binary tasks, on predictions at `threshold` on P(positive); groups under `min_rows` are ignored.
    """

    attributes: tuple[str, ...] = ()
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_rows: int = Field(default=30, ge=1)
    max_demographic_parity_difference: float = Field(default=1.0, ge=0.0)
    max_equalized_odds_difference: float = Field(default=1.0, ge=0.0)


class LatencyGate(Gate):
    """p95 single-row latency (`rows` single-row calls) and model size, absolute and vs the champion."""

    rows: int = Field(default=200, ge=10)
    max_p95_ms: float = Field(default=50.0, gt=0.0)
    max_size_mb: float = Field(default=100.0, gt=0.0)
    max_p95_ratio_vs_champion: float | None = Field(default=None, gt=0.0)
    max_size_ratio_vs_champion: float | None = Field(default=None, gt=0.0)


class ServingGate(Gate):
    """The model, packaged exactly as it will be registered, loads in a fresh process and predicts."""

    timeout_seconds: float = Field(default=120.0, gt=0.0)


class GatesConfig(Strict):
    """The gate policy: every gate a candidate must pass before `champion` moves to it."""

    metric_bounds: MetricBoundsGate = MetricBoundsGate()
    baseline: BaselineGate = BaselineGate()
    champion: ChampionGate = ChampionGate()
    slices: SlicesGate = SlicesGate()
    perturbation: PerturbationGate = PerturbationGate()
    invariance: InvarianceGate = InvarianceGate()
    directional: DirectionalGate = DirectionalGate()
    calibration: CalibrationGate = CalibrationGate()
    confidence: ConfidenceGate = ConfidenceGate(enabled=False)
    fairness: FairnessGate = FairnessGate()
    latency: LatencyGate = LatencyGate()
    serving: ServingGate = ServingGate()


ScreenGate = Literal["latency", "serving", "directional", "invariance"]
"""Gates that may decide between candidates: they need no test labels (docs/gates.md, "Selection")."""


class SelectionConfig(Strict):
    """How evaluate picks the one candidate it gates: the best on valid that passes the screening gates.

    Candidates are ranked by their valid score; those within `tie_tolerance` (relative: a share of the best
    valid score's magnitude) of the best count as tied, and the smaller model (bytes on disk) goes first.
    In that order, each candidate is screened by the label-free gates in `screen` (computed exactly as in
    the policy); the first to pass them all is gated on test, the others are recorded with the reason they
    were passed over. Test labels never rank candidates. `screen: []` gates the top-ranked one only.
    """

    tie_tolerance: float = Field(0.001, ge=0.0)
    screen: tuple[ScreenGate, ...] = ("latency", "directional", "invariance", "serving")


class EvaluateConfig(Strict):
    """The metric candidates are selected and gated by, the selection rule and the gate policy.

    `metric` left out: the task's default (binary roc_auc, multiclass roc_auc_ovr, regression r2).
    """

    metric: str
    selection: SelectionConfig = SelectionConfig()
    gates: GatesConfig = GatesConfig()


class PromoteConfig(Strict):
    """Where promotion happens in the registry, and the lock that serializes alias moves on it.

    `lock` (docs/concurrency.md): `auto` picks by the store: a PostgreSQL tracking URI takes a
    `pg_advisory_lock` in that database; an http(s) tracking URI with PREFECT_API_URL set takes a Prefect
    global concurrency limit; anything else (SQLite, file store) a file lock keyed on the store. The lock
    holds for promote and `retrain rollback`; `lock_timeout` seconds to wait for it, then fail naming the holder.
    """

    model_name: str
    alias: str = "champion"
    lock: Literal["auto", "file", "postgres", "prefect"] = "auto"
    lock_timeout: float = Field(600.0, ge=0.0)


class TrackingConfig(Strict):
    """MLflow location; None means the SQLite file at the project root."""

    tracking_uri: str | None = None
    experiment: str
    ui_url: str | None = None
    """Base URL of the MLflow UI for printed links; None: the tracking server itself (an http:// tracking_uri),
    else $RETRAIN_MLFLOW_UI_URL, else the UI `make servers` started (its port), else http://127.0.0.1:5000."""


class RunnerConfig(Strict):
    """Where candidate families train; results do not depend on it (but `dask_lightgbm_min_rows`, the one key of it
    in the candidates stage's cache key), so it is in no other stage's cache key.

    `default` fits the families one after another in the flow's process. `dask` submits each base family
    (its whole search and refits) as a Prefect task to a prefect-dask `DaskTaskRunner`: a LocalCluster
    of `dask_workers` processes on 127.0.0.1 started for the stage, or the scheduler at `dask_address`, whose
    workers may run from any directory on any host (the models come back to the flow process, which saves
    them) but must import the flow's code (checked by an md5 of its modules). With `candidates.parallel_trials`
    > 1 and an RDB `candidates.storage`, a family's trials spread over the workers through the shared study.

    `dask_lightgbm_min_rows`: with `dask`, a LightGBM fit on at least this many rows trains data-parallel on
    the Dask workers (`lightgbm.dask`, retrain/models/distributed.py) instead of in one process; None: never.
    Such a model is not bit-identical to the in-process one, so a non-null value changes results.
    """

    task_runner: Literal["default", "dask"] = "default"
    dask_address: str | None = None
    dask_workers: int = Field(default=2, ge=1)
    dask_threads_per_worker: int = Field(default=1, ge=1)
    dask_lightgbm_min_rows: int | None = Field(default=None, ge=1)


TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "binary": {
        "metric": "roc_auc",
        "families": ["lightgbm", "hgb", "logreg"],
        "baselines": ["most_frequent", "stratified", "uniform"],
    },
    "multiclass": {
        "metric": "roc_auc_ovr",
        "families": ["lightgbm", "hgb", "logreg"],
        "baselines": ["most_frequent", "stratified", "uniform"],
    },
    "regression": {"metric": "r2", "families": ["lightgbm", "hgb", "ridge"], "baselines": ["mean", "median"]},
}
"""What a params file that leaves a section out gets, per task (see `Params._defaults`)."""


def model_name_for(dataset_name: str) -> str:
    """A registry-safe model name from the dataset name (letters, digits, `-`)."""
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in dataset_name.lower()).strip("-")
    return cleaned or "model"


def _fill(raw: dict[str, Any], section: str, defaults: dict[str, Any]) -> None:
    """Set the section's keys that the file leaves out (a section that is not a mapping is left to fail)."""
    current = raw.get(section)
    if current is None:
        raw[section] = dict(defaults)
    elif isinstance(current, dict):
        raw[section] = {**defaults, **current}


class Params(Strict):
    """The whole params.yaml. Only `dataset` and `ingest` are required: every other section has defaults.

    The task-dependent ones (metric, families, baselines, experiment and model names) are filled in from
    `dataset` before validation (`_defaults`); `retrain check` prints the resolved file.
    """

    seed: int = 42
    tracking: TrackingConfig
    runner: RunnerConfig = RunnerConfig()
    dataset: DatasetConfig
    ingest: IngestConfig
    version: VersionConfig = VersionConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    split: SplitConfig = SplitConfig()
    baselines: BaselinesConfig
    candidates: CandidatesConfig
    evaluate: EvaluateConfig
    promote: PromoteConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Fill the sections a file leaves out with defaults that depend on dataset.task and dataset.name."""
        if not isinstance(data, dict) or not isinstance(data.get("dataset"), dict):
            return data
        dataset = data["dataset"]
        task = dataset.get("task")
        name = dataset.get("name")
        raw = dict(data)
        if isinstance(name, str):
            _fill(raw, "tracking", {"experiment": f"retrain-{model_name_for(name)}"})
            _fill(raw, "promote", {"model_name": model_name_for(name)})
        if task in TASK_DEFAULTS:
            chosen = TASK_DEFAULTS[task]
            _fill(raw, "baselines", {"strategies": chosen["baselines"]})
            _fill(raw, "candidates", {"families": chosen["families"]})
            _fill(raw, "evaluate", {"metric": chosen["metric"]})
        return raw

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Params:
        task = self.dataset.task
        if self.evaluate.metric not in TASK_METRICS[task]:
            raise ValueError(
                f"evaluate.metric {self.evaluate.metric!r} does not fit task {task!r}; use one of {TASK_METRICS[task]}"
            )
        unfit = [f for f in self.candidates.families if task not in FAMILIES[f].tasks]
        if unfit:
            fits = "; ".join(f"{f} fits {'/'.join(FAMILIES[f].tasks)}" for f in unfit)
            raise ValueError(f"candidates.families {unfit} do not apply to dataset.task {task!r} ({fits})")
        for family in self.candidates.families:  # fixed hyperparameters against the task (LightGBM's objective)
            try:
                check_family(family, task, self.candidates.family(family).fixed)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        wrong = ("most_frequent",) if task == "regression" else ("mean", "median")
        bad = [s for s in self.baselines.strategies if s in wrong]
        if bad:
            raise ValueError(f"baselines.strategies {bad} do not apply to task {task!r}")
        if self.ingest.query is None and "://" in self.ingest.source:
            raise ValueError("ingest.source is a database URL: set ingest.query")
        if self.ingest.query is not None and "://" not in self.ingest.source:
            raise ValueError("ingest.query needs ingest.source to be a SQLAlchemy URL")
        test = self.ingest.test_source
        if (test is not None and "://" in test) != (self.ingest.test_query is not None):
            raise ValueError("ingest.test_query goes with a database URL in ingest.test_source, and only then")
        if self.runner.dask_lightgbm_min_rows is not None and self.runner.task_runner != "dask":
            raise ValueError(
                "runner.dask_lightgbm_min_rows trains LightGBM on the Dask cluster: it needs runner.task_runner: dask "
                f"(it is {self.runner.task_runner!r})"
            )
        bounds = self.evaluate.gates.metric_bounds
        unknown = [m for m in (*bounds.min, *bounds.max) if m not in TASK_METRICS[task]]
        if unknown:
            raise ValueError(f"evaluate.gates.metric_bounds: metrics {unknown} do not fit task {task!r}")
        if not _data_checks_columns(info):
            problems = self._gate_column_problems()
            if problems:
                raise ValueError("; ".join(problems))
        return self

    def _gate_column_problems(self) -> list[str]:
        """Gate columns must be features (when the schema is declared) and numeric where a step or band is taken."""
        columns = self.dataset.columns
        if columns is None:
            return []
        gates = self.evaluate.gates
        problems = []
        monotone = [c for c in self.candidates.monotone if c not in columns or columns[c].type == "category"]
        if monotone:
            problems.append(f"candidates.monotone: {monotone} are not numeric columns of dataset.columns")
        heuristic = self.baselines.heuristic
        if heuristic is not None and heuristic.column not in columns:
            problems.append(f"baselines.heuristic.column: {heuristic.column!r} is not declared in dataset.columns")
        named = {
            "slices.columns": gates.slices.columns,
            "slices.bands": tuple(gates.slices.bands),
            "invariance.attributes": gates.invariance.attributes,
            "directional.increasing": gates.directional.increasing,
            "directional.decreasing": gates.directional.decreasing,
            "fairness.attributes": gates.fairness.attributes,
        }
        for key, names in named.items():
            unknown = [c for c in names if c not in columns]
            if unknown:
                problems.append(f"evaluate.gates.{key}: {unknown} are not declared in dataset.columns")
        for key in ("slices.bands", "directional.increasing", "directional.decreasing"):
            categorical = [c for c in named[key] if c in columns and columns[c].type == "category"]
            if categorical:
                problems.append(f"evaluate.gates.{key}: {categorical} are categorical; numeric columns only")
        return problems


def error_path(loc: tuple[Any, ...]) -> str:
    """Dotted key path of a pydantic error location, with the `validate` alias restored."""
    return ".".join("validate" if p == "validate_" else str(p) for p in loc)


class OverrideError(ConfigError):
    """One `--set` option that cannot be applied; its message names the option, never the params file."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"--set {text}: {reason}")
        self.text = text
        self.reason = reason


def parse_override(text: str) -> tuple[str, Any]:
    """Split `section.key=value` (value parsed as YAML, like `dvc exp run -S`)."""
    if "=" not in text:
        raise OverrideError(text, "not of the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise OverrideError(text, f"{key!r} is not a dotted key (section.key=value)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OverrideError(text, f"the value {raw!r} is not valid YAML: {reason}{where}") from exc
    return key, value


def set_override(data: dict[str, Any], text: str) -> str:
    """Apply one `--set` option to raw params in place; returns its key (OverrideError naming the option)."""
    key, value = parse_override(text)
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise OverrideError(text, f"{where} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value
    return key


def apply_overrides(
    raw: dict[str, Any], overrides: list[str], errors: list[OverrideError] | None = None
) -> dict[str, Any]:
    """Return a copy of the raw params with dotted overrides set; unknown sections still fail later.

    Every bad option is reported, not just the first: appended to `errors` when given (the good ones are
    still applied), else raised together.
    """
    data = json.loads(json.dumps(raw))
    failed: list[OverrideError] = []
    for text in overrides:
        try:
            set_override(data, text)
        except OverrideError as exc:
            failed.append(exc)
    if errors is not None:
        errors.extend(failed)
    elif len(failed) == 1:
        raise failed[0]
    elif failed:
        raise ConfigError("\n  ".join(str(e) for e in failed))
    return data


def override_origin(key: str, message: str, overrides: list[str]) -> str | None:
    """The `--set` option a params problem comes from: one setting that key (or a key above or under it), or,
    for a problem across keys (`key` is `params`), one whose key the message names; None when none does."""
    for text in overrides:
        try:
            over = parse_override(text)[0]
        except OverrideError:
            continue
        if key == over or key.startswith(over + ".") or over.startswith(key + "."):
            return f"--set {text}"
        if key == "params" and re.search(rf"(?<![\w.]){re.escape(over)}(?![\w])", message):
            return f"--set {text}"
    return None


def problem_key(loc: tuple[Any, ...], message: str) -> str:
    """A pydantic error's key path; a check across keys (no location) takes the key its message starts with."""
    key = error_path(loc)
    if key:
        return key
    match = re.match(r"([A-Za-z_][\w-]*(?:\.[\w-]+)+)\b", message)
    return match.group(1) if match else "params"


def read_params_file(path: Path) -> dict[str, Any]:
    """Read the YAML mapping of a params file, naming the file on any error."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"params file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping at the top level")
    return data


def load_params(path: Path, overrides: list[str] | None = None) -> Params:
    """Load, override and validate params; every problem is reported with its key path (and its `--set`)."""
    overrides = overrides or []
    raw = apply_overrides(read_params_file(path), overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            key = problem_key(error["loc"], message)
            origin = override_origin(key, message, overrides)
            text = message if message.startswith(key) else f"{key}: {message}"
            problems.append(f"{origin}: {text}" if origin else text)
        subject = f"params file {path}" + "".join(f" --set {o}" for o in overrides)
        raise ConfigError(f"{subject}: {'; '.join(problems)}") from exc


def params_dict(params: Params) -> dict[str, Any]:
    """The params as plain JSON-able data with the file's own key names."""
    return params.model_dump(mode="json", by_alias=True)


def lookup(params: Params, key: str) -> Any:
    """Value of a dotted params key, e.g. `candidates.n_trials`."""
    node: Any = params_dict(params)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"params key {key!r} does not exist")
        node = node[part]
    return node


def stable_hash(value: Any) -> str:
    """sha256 of a JSON-able value with sorted keys: equal values give equal hashes."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
