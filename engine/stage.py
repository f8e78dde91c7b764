"""The stage record: what one stage reads, writes and depends on, declared once by the stage module itself.

Each `tasks/<name>.py` declares `STAGE = Stage(...)`; `flows/dag.py` lists them in run order. From these records
alone the engine runs a stage in the flow or under `dvc repro`, computes its cache key, restores its cached
outputs and writes dvc.yaml. The engine never tests a stage's name: what differs between stages is data here
(`cache`, `sources`) or a hook (`key_inputs`, `tags`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.codedeps import code_files

if TYPE_CHECKING:
    from engine.context import StageContext

_TEMPLATE = re.compile(r"\$\{([^}]+)\}")

KeyInputs = Callable[["StageContext"], dict[str, str]]
"""Inputs from outside the workspace that enter a stage's cache key (the champion, the drift reference)."""
Tags = Callable[[Path, Mapping[str, str] | None], dict[str, str]]
"""Lineage tags a stage contributes to every MLflow run after it, from the project root and its output md5s
(None when only the files on disk are known, as for a `retrain stage` process under `dvc repro`)."""


@dataclass(frozen=True)
class Plot:
    """One DVC plot: a JSON list of rows the stage writes, and how `dvc plots show` draws it (dvc.yaml `plots`).

    The file is always written (an empty list where the plot does not apply, e.g. ROC for a regression), so
    DVC never misses an output.
    """

    path: str
    title: str
    x: str
    y: tuple[str, ...]
    """One field, or several drawn as separate lines (train and valid of a learning curve)."""
    template: str = "linear"
    """A DVC template: linear, simple, scatter, smooth, bar_horizontal, bar_horizontal_sorted, confusion."""
    x_label: str | None = None
    y_label: str | None = None

    def definition(self) -> dict[str, Any]:
        """The top-level dvc.yaml `plots` entry: `{title: {template, x, y: {path: field(s)}, labels}}`."""
        props: dict[str, Any] = {
            "template": self.template,
            "x": self.x,
            "y": {self.path: self.y[0] if len(self.y) == 1 else list(self.y)},
        }
        if self.x_label:
            props["x_label"] = self.x_label
        if self.y_label:
            props["y_label"] = self.y_label
        return {self.title: props}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, named the same everywhere (params section, dvc stage, task, MLflow run)."""

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    """The stage body: reads `deps`, writes `outs`, returns the JSON result the cache stores."""
    deps: tuple[str, ...]
    """Input files (catalog names, or `${section.key}` templates filled from params)."""
    outs: tuple[str, ...]
    params: tuple[str, ...]
    """Params keys (or whole sections) whose values enter the cache key and dvc.yaml `params`."""
    cache: bool = True
    """False for a stage with side effects outside the workspace (promote): it runs every time."""
    key_inputs: KeyInputs | None = None
    tags: Tags | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    """Dep templates that may be a database URL, mapped to the params key holding their query."""
    metrics: tuple[str, ...] = ()
    """Small JSON files of headline numbers (dvc.yaml `metrics`, `cache: false`: git-tracked, in `dvc exp show`)."""
    plots: tuple[Plot, ...] = ()
    """JSON rows for `dvc plots show`: `cache: false` outs in dvc.yaml, drawn by its top-level `plots` section."""

    @property
    def files(self) -> tuple[str, ...]:
        """Everything the stage writes in the workspace: outs, metrics and plot files (hashed, cached, restored)."""
        return (*self.outs, *self.metrics, *(plot.path for plot in self.plots))

    @property
    def module(self) -> str:
        """The stage module (`tasks.<name>`): where its code identity starts."""
        return self.run.__module__

    @property
    def command(self) -> str:
        """The shell command dvc runs for this stage."""
        return f"retrain stage {self.name}"

    def code(self, root: Path) -> tuple[str, ...]:
        """Every project file the stage's module imports, transitively (engine/codedeps.py)."""
        return code_files(root, self.module)


def find_stage(stages: Sequence[Stage], name: str) -> Stage:
    """The stage called `name` (a command-line argument), or a clear error listing the valid names."""
    for stage in stages:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages are {', '.join(s.name for s in stages)}")


def upstream(stages: Sequence[Stage], stage: Stage) -> tuple[Stage, ...]:
    """The stages before `stage` in run order (their lineage tags apply to its runs)."""
    return tuple(stages[: list(stages).index(stage)])


def check_dag(stages: Sequence[Stage]) -> None:
    """Every workspace input is written by an earlier stage, and no file has two writers: the table is a DAG."""
    written: dict[str, str] = {}
    problems = []
    for stage in stages:
        for dep in stage.deps:
            if dep.startswith("${"):
                continue
            if dep not in written:
                problems.append(f"stage {stage.name}: input {dep} is written by no earlier stage")
        for out in stage.files:
            if out in written:
                problems.append(f"stage {stage.name}: output {out} is already written by stage {written[out]}")
            written[out] = stage.name
    if problems:
        raise ValueError("the stage table is not a DAG:\n  " + "\n  ".join(problems))


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
    from retrain.data.sources import glob_folder, parse_source

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


def dvc_pipeline(stages: Sequence[Stage], root: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dvc.yaml document for the stage table (what `retrain stages --dvc-yaml` writes).

    `values` are the params the sources are rendered from (see `source_deps`); without them every
    source stays a `${...}` template. Code deps are derived from each stage module's imports. Metrics and plot
    files are `cache: false` (small, git-tracked: an experiment commit carries them). Plot files are plain outs
    and the top-level `plots` section draws them: declared under a stage's `plots` too, DVC would draw each twice.
    """
    document: dict[str, Any] = {}
    for stage in stages:
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
            "deps": [*deps, *stage.code(root)],
            "params": list(stage.params),
            "outs": [*stage.outs, *({plot.path: {"cache": False}} for plot in stage.plots)],
        }
        if stage.metrics:
            entry["metrics"] = [{path: {"cache": False}} for path in stage.metrics]
        if always:
            entry["always_changed"] = True
        document[stage.name] = entry
    plots = [plot.definition() for stage in stages for plot in stage.plots]
    return {"stages": document, **({"plots": plots} if plots else {})}
