"""The DAG, defined once: each stage's inputs, outputs, params keys and code.

dvc.yaml is generated from this table (`retrain stages --dvc-yaml`) and a test fails when they differ;
the Prefect cache keys use the same deps, params and code lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TEMPLATE = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, named the same everywhere (params section, dvc stage, task, run)."""

    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]
    code: tuple[str, ...]
    cache: bool = True

    @property
    def command(self) -> str:
        """The shell command dvc runs for this stage."""
        return f"retrain stage {self.name}"


def _code(name: str, *modules: str) -> tuple[str, ...]:
    """Source files whose content is part of a stage's identity: its task and the logic it calls."""
    return (f"tasks/{name}.py", *(f"retrain/{m}.py" for m in modules))


SNAPSHOT = "data/raw/snapshot.parquet"
SCHEMA = "data/raw/schema.json"
VERSION = "data/raw/version.json"
VALIDATION = "models/validate/report.json"
SPLITS = {part: f"data/processed/{part}.parquet" for part in ("train", "valid", "test")}
BASELINES = "models/baselines/baselines.json"
CANDIDATES = "models/candidates"
EVALUATE = "models/evaluate"
GATE_RECORD = "models/evaluate/gate_record.json"
VALID_SCORES = "models/candidates/valid_scores.parquet"
"""Each family's valid scores from its train-only refit (calibration and the confidence threshold use them)."""
EVALUATED_MODEL = "models/evaluate/model"
"""The model as gated and registered: the selected candidate plus its calibration and confidence files."""
MODEL_CARD = "models/evaluate/model_card.html"
PROMOTION = "models/promote/promotion.json"

_DATASET = (
    "dataset.task",
    "dataset.target",
    "dataset.labels",
    "dataset.positive_label",
    "dataset.columns",
    "dataset.exclude",
)

STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        deps=("${ingest.source}", "${ingest.test_source}"),
        outs=(SNAPSHOT, SCHEMA),
        params=(
            "ingest",
            *_DATASET,
            "split.group_column",
            "split.time_column",
            "seed",
        ),
        code=_code("ingest", "ingest", "sources", "schema"),
    ),
    Stage(
        "version",
        deps=(SNAPSHOT,),
        outs=(VERSION,),
        params=("version.remote",),
        code=("tasks/version.py", "tasks/dvcstore.py"),
    ),
    Stage(
        "validate",
        deps=(SNAPSHOT, SCHEMA),
        outs=(VALIDATION,),
        params=(
            "validate",
            *_DATASET,
            "split.group_column",
            "split.time_column",
            "split.valid_size",
            "split.test_size",
            "candidates.cv_folds",
            "seed",
        ),
        code=(*_code("validate", "validate", "drift", "leakage"), "tasks/registry.py", "tasks/dvcstore.py"),
    ),
    Stage(
        "split",
        deps=(SNAPSHOT, SCHEMA, VALIDATION),
        outs=tuple(SPLITS.values()),
        params=("split", *_DATASET, "seed"),
        code=_code("split", "split"),
    ),
    Stage(
        "baselines",
        deps=(SPLITS["train"], SPLITS["valid"]),
        outs=(BASELINES,),
        params=("baselines", *_DATASET, "evaluate.metric", "seed"),
        code=_code("baselines", "baselines", "metrics"),
    ),
    Stage(
        "candidates",
        deps=(SPLITS["train"], SPLITS["valid"]),
        outs=(CANDIDATES,),
        params=(
            "candidates",
            *_DATASET,
            "split.group_column",
            "split.time_column",
            "evaluate.metric",
            "seed",
        ),
        code=(*_code("candidates", "models", "families", "tuning", "metrics", "diagnostics"), "tasks/tracking.py"),
    ),
    Stage(
        "evaluate",
        deps=(SPLITS["valid"], SPLITS["test"], BASELINES, CANDIDATES),
        outs=(EVALUATE,),
        params=(
            "evaluate",
            "promote.model_name",
            "promote.alias",
            *_DATASET,
            "dataset.slices",
            "dataset.protected",
            "seed",
        ),
        code=(
            *_code(
                "evaluate",
                "gatepolicy",
                "gates",
                "behaviour",
                "calibration",
                "fairness",
                "latency",
                "modelcard",
                "models",
                "families",
                "baselines",
                "metrics",
                "serving",
                "pyfunc_entry",
            ),
            "tasks/registry.py",
            "tasks/servecheck.py",
            "tasks/packaging.py",
        ),
    ),
    Stage(
        "promote",
        deps=(EVALUATE,),
        outs=(PROMOTION,),
        params=("promote.model_name", "promote.alias"),
        code=(
            *_code("promote", "serving", "models", "families", "pyfunc_entry"),
            "tasks/registry.py",
            "tasks/packaging.py",
            "tasks/audit.py",
        ),
        cache=False,
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    """The stage called `name`, or a clear error listing the valid names."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def render_path(template: str, values: dict[str, Any]) -> str | None:
    """Fill `${section.key}` from params values; None when the key is unset (an optional input)."""

    def value_of(match: re.Match[str]) -> str:
        node: Any = values
        for part in match.group(1).split("."):
            node = node[part]
        if node is None:
            raise LookupError(match.group(1))
        return str(node)

    try:
        return _TEMPLATE.sub(value_of, template)
    except LookupError:
        return None


def source_deps(template: str, values: dict[str, Any] | None) -> tuple[list[str], bool]:
    """dvc.yaml deps for a source template, and whether the stage must always run.

    A plain file stays `${ingest.source}` (DVC fills it from params.yaml, so `dvc exp run -S` works);
    a glob becomes its folder (DVC deps cannot be globs); a SQLite URL its database file; any other
    database URL cannot be hashed by DVC, so the stage is marked always_changed.
    """
    if values is None:
        return [template], False
    from retrain.sources import glob_folder, parse_source

    rendered = render_path(template, values)
    if rendered is None:
        return [], False
    source = parse_source(rendered)
    if source.kind == "file":
        return [template], False
    if source.kind == "glob":
        return [glob_folder(source.spec)], False
    if source.is_sqlite:
        rest = source.spec.split("://", 1)[1]
        return ([rest[1:]], False) if rest.startswith("/") and rest not in ("/", "/:memory:") else ([], True)
    return [], True


def dvc_pipeline(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dvc.yaml document for the stage table (what `retrain stages --dvc-yaml` writes).

    `values` are the params the sources are rendered from (see `source_deps`); without them every
    source stays a `${...}` template.
    """
    stages: dict[str, Any] = {}
    for stage in STAGES:
        deps: list[str] = []
        always = False
        for dep in stage.deps:
            if dep.startswith("${"):
                more, must_run = source_deps(dep, values)
                deps += more
                always = always or must_run
            else:
                deps.append(dep)
        entry: dict[str, Any] = {
            "cmd": stage.command,
            "deps": [*deps, *stage.code],
            "params": list(stage.params),
            "outs": list(stage.outs),
        }
        if always:
            entry["always_changed"] = True
        stages[stage.name] = entry
    return {"stages": stages}
