"""evaluate: select a candidate, build the model as it would ship, run the whole gate policy on test, write one record.

Selection (retrain/evaluation/selection.py, `evaluate.selection`): every candidate is built as it would ship,
ranked by its valid score (tied ones: the smaller model first) and screened in that order by the label-free
gates of `evaluate.selection.screen`, exactly as the policy runs them; the first to pass them all is chosen
(no candidate passes: the top-ranked one). Test labels never rank candidates.

The model directory `models/evaluate/model` is the chosen candidate plus, when configured, its calibrator
and confidence threshold (both fitted on the valid scores of the family's train-only refit, never on
test). That directory is what every gate scores and what `promote` registers.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from adapters import mlflow_registry as registry
from adapters.jsonfile import read_json, write_json
from adapters.serving_check import GATE as SERVING_GATE
from adapters.serving_check import ServingCheck, serving_gate
from engine.context import StageContext, clear_outputs, finish, stage_run, tree_md5
from engine.progress import Reporter
from engine.stage import Plot, Stage
from retrain.catalog import (
    BASELINES,
    CANDIDATES,
    DATASET_KEYS,
    EVALUATE,
    EVALUATE_METRICS,
    EVALUATE_PLOTS,
    EVALUATED_MODEL,
    GATE_RECORD,
    LEARNING_CURVES,
    MODEL_CARD,
    SPLITS,
    VALID_SCORES,
)
from retrain.config import DatasetConfig, GatesConfig
from retrain.evaluation.gates import (
    GateResult,
    decide,
)
from retrain.evaluation.latency import GATE as LATENCY_GATE
from retrain.evaluation.latency import directory_size_mb, latency_gate, single_row_latency_ms
from retrain.evaluation.selection import (
    Ranked,
    Screening,
    directory_bytes,
    rank_candidates,
    screen,
    select,
    selection_lines,
    selection_record,
)
from retrain.metrics import class_labels, encode_target, get_metric, score
from retrain.models.baselines import from_dict

if TYPE_CHECKING:
    from retrain.models.estimators import Predictor

logger = logging.getLogger(__name__)

EXAMPLE_ROWS = 5
"""Valid rows used as the input example (signature) and by the serving gate."""

HEARTBEAT_SECONDS = 5.0
"""Least seconds between two "still scoring" lines inside one long gate (perturbation, invariance, directional)."""


class Heartbeat:
    """A scoring function that says it is still at work: a line at most every HEARTBEAT_SECONDS while gates score."""

    def __init__(self, score_fn: Callable[[pd.DataFrame], np.ndarray], what: str) -> None:
        self.score_fn, self.what = score_fn, what
        self.calls, self.rows, self.said = 0, 0, time.perf_counter()

    def __call__(self, X: pd.DataFrame) -> np.ndarray:
        """Score X; log how far the scoring has come when the last line is HEARTBEAT_SECONDS old."""
        self.calls, self.rows = self.calls + 1, self.rows + len(X)
        if time.perf_counter() - self.said >= HEARTBEAT_SECONDS:
            self.said = time.perf_counter()
            logger.info("%s: still scoring (%d calls, %d rows so far)", self.what, self.calls, self.rows)
        return self.score_fn(X)


def champion_input(ctx: StageContext) -> dict[str, str]:
    """The champion as an input of `evaluate`'s cache key.

    A champion that is one of these very candidates (the previous run promoted it) counts as no
    other champion, so an unchanged rerun stays a cache hit.
    """
    promote = ctx.params.promote
    current = registry.champion(ctx.tracking.tracking_uri, promote.model_name, promote.alias)
    if current is None:
        return {"champion": "none"}
    candidates = ctx.path(CANDIDATES)
    own = {tree_md5(d) for d in candidates.iterdir() if d.is_dir()} if candidates.is_dir() else set()
    shipped = ctx.path(EVALUATED_MODEL)  # what the last evaluate built (candidate + calibration files)
    if shipped.is_dir():
        own.add(tree_md5(shipped))
    return {"champion": "none" if current.get("model_hash") in own else str(current.get("model_hash"))}


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name (letters, digits, `_ - . / :` and spaces only)."""
    return re.sub(r"[^\w./: -]", "_", "_".join(parts))


def family_valid_scores(path: Path, family: str, task: str) -> np.ndarray:
    """The family's valid scores from its train-only refit, in the shapes of `predict_scores`."""
    frame = pd.read_parquet(path)
    if task == "multiclass":
        columns = [c for c in frame.columns if c.startswith(f"{family}:")]
        return frame[sorted(columns, key=lambda c: int(c.split(":")[1]))].to_numpy()
    return frame[family].to_numpy()


def build_model(
    ctx: StageContext, family: str, y_valid: np.ndarray, gates: GatesConfig, target: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Copy the candidate to `target` (default models/evaluate/model), add its calibrator and confidence threshold."""
    from retrain.evaluation.calibration import choose_threshold
    from retrain.models.calibrator import fit_calibrator
    from retrain.models.estimators import save_calibration, save_confidence

    dataset = ctx.dataset
    target = target if target is not None else ctx.path(EVALUATED_MODEL)
    shutil.copytree(ctx.path(f"{CANDIDATES}/{family}"), target)
    info: dict[str, Any] = {"calibration": None, "confidence_threshold": None}
    needs_valid = gates.calibration.method is not None or (gates.confidence.enabled and dataset.task != "regression")
    if not needs_valid:
        return target, info
    valid = family_valid_scores(ctx.path(VALID_SCORES), family, dataset.task)
    if gates.calibration.method is not None:
        calibrator = fit_calibrator(gates.calibration.method, valid, y_valid, dataset.task)
        save_calibration(target, calibrator)
        valid = calibrator.apply(valid)
        info["calibration"] = gates.calibration.method
        logger.info("evaluate: %s calibrated on valid (%s)", family, gates.calibration.method)
    if gates.confidence.enabled and dataset.task != "regression":
        threshold = choose_threshold(y_valid, valid, task=dataset.task, cfg=gates.confidence)
        save_confidence(target, threshold, class_labels(dataset))
        info["confidence_threshold"] = threshold
    return target, info


def champion_record(tracking_uri: str, champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """The champion's own gate record (for its latency and size bounds), checked against its registry hash first.

    The record lives in the artifact store, which users can write: a record whose bytes differ from the sha256 the
    registry holds is refused (ArtifactIntegrityError, exit 2), never read, so it cannot loosen a bound.
    """
    from adapters import model_store

    if champion is None:
        return None
    version = MlflowClient(tracking_uri).get_model_version(champion["model_name"], champion["version"])
    uri = version.tags.get("retrain.gate_record")
    if not uri:
        logger.warning("evaluate: champion version %s has no gate record; relative bounds skipped", champion["version"])
        return None
    sha = version.tags.get(model_store.RECORD_SHA_TAG)
    record = model_store.verified_json(
        tracking_uri, uri, sha, model_name=champion["model_name"], version=str(champion["version"])
    )
    return record if isinstance(record, dict) else None


@dataclass
class Shippable:
    """One candidate built as it would ship (its own directory), with what the label-free gates measure on it.

    `measure_latency` and `check_serving` read `model_dir` when called, so after the chosen one is moved to
    models/evaluate/model anything the policy still has to measure is measured there.
    """

    ctx: StageContext
    family: str
    model_dir: Path
    built: dict[str, Any]
    X_test: pd.DataFrame
    example: pd.DataFrame
    champion_latency: dict[str, Any] | None
    latency: dict[str, float] = field(default_factory=dict)
    _predictor: Any = None
    _serving: ServingCheck | None = None
    prestart: bool = False
    """Start the serving check with the first scoring gate (never beside the latency gate's timing)."""

    @property
    def predictor(self) -> Predictor:
        """The model as evaluation scores it (loaded once, on first use; it lives in memory after that)."""
        from retrain.models.estimators import load_predictor

        if self._predictor is None:
            self._predictor = load_predictor(self.model_dir)
        return self._predictor

    def measure_latency(self) -> GateResult:
        """Time single rows through the registered pyfunc's own predict path, then bound them."""
        from retrain.serving.flavor import load_serving_model

        cfg = self.ctx.params.evaluate.gates.latency
        served = load_serving_model(self.model_dir)  # what the registered pyfunc's loader module returns
        self.latency.clear()
        self.latency.update(single_row_latency_ms(served.predict, self.X_test, cfg.rows))
        self.latency["size_mb"] = directory_size_mb(self.model_dir)
        return latency_gate(self.latency, self.latency["size_mb"], cfg=cfg, champion=self.champion_latency)

    def start_serving(self) -> None:
        """Start the fresh-process check now: its start-up (~4 s of imports) overlaps the gates run before it."""
        cfg = self.ctx.params.evaluate.gates.serving
        self.prestart = False
        if cfg.enabled and self._serving is None:
            self._serving = ServingCheck(self.ctx.root, self.model_dir, self.example, cfg=cfg).start()

    def cancel_serving(self) -> None:
        """Stop a started check nobody collected (screening stopped at an earlier gate, or an error)."""
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None

    def check_serving(self) -> GateResult:
        """The packaged model must load and predict the example exactly in a fresh Python process."""
        from retrain.models.estimators import serve_output

        cfg = self.ctx.params.evaluate.gates.serving
        expected = serve_output(self.predictor, self.example)
        self.prestart = False  # decided now: a later gate must not start another check
        if self._serving is None:
            return serving_gate(self.ctx.root, self.model_dir, self.example, expected, cfg=cfg)
        check, self._serving = self._serving, None
        return check.result(expected)

    def label_free(self, y_std: float | None) -> dict[str, tuple[bool, Any]]:
        """The policy's label-free gates on this candidate (the very callables `gate_policy` runs)."""
        from retrain.evaluation.policy import label_free_gates

        scores = Heartbeat(self.predictor.predict_scores, f"evaluate: screening {self.family}")
        gates = label_free_gates(
            self.ctx.params, self.ctx.dataset, scores, self.X_test, y_std, self.measure_latency, self.check_serving,
        )  # fmt: skip
        return {name: (enabled, self.logged(name, run)) for name, (enabled, run) in gates.items()}

    def logged(self, name: str, gate: Callable[[], GateResult]) -> Callable[[], GateResult]:
        """The gate, with a progress line when it is decided (screening a candidate takes seconds per gate)."""

        def run() -> GateResult:
            if self.prestart and name not in (LATENCY_GATE, SERVING_GATE):
                self.start_serving()
            started = time.perf_counter()
            result = gate()
            seconds = time.perf_counter() - started
            logger.info("evaluate: screening %s: %s %s in %.1f s", self.family, name, result.status.upper(), seconds)
            return result

        return run


def run_gates(
    ctx: StageContext,
    shippable: Shippable,
    y_test: np.ndarray,
    scores: np.ndarray,
    context: dict[str, Any],
    screening: Screening | None = None,
) -> tuple[list[GateResult], dict[str, Any]]:
    """The gate policy (retrain/evaluation/policy.py), latency through the served pyfunc, the fresh-process check.

    Gates the chosen candidate's screening already ran are reused, not measured again.
    """
    from retrain.evaluation.policy import gate_policy

    progress = Reporter(log=logger)
    # metric_is_finite, then one gate per evaluate.gates section (a disabled one is recorded as skipped)
    progress.start("evaluate", 1 + len(type(ctx.params.evaluate.gates).model_fields), f"gates on {shippable.family}")

    def on_gate(gate: GateResult, seconds: float) -> None:
        line = f"gate {gate.name}: {gate.status.upper()} ({gate.reason})"
        progress.advance(message=line + (f" in {seconds:.1f} s" if seconds >= 0.05 else ""))

    try:
        gates, extra = gate_policy(
            ctx.params,
            ctx.dataset,
            Heartbeat(shippable.predictor.predict_scores, f"evaluate: gates on {shippable.family}"),
            shippable.X_test,
            y_test,
            scores,
            context,
            shippable.measure_latency,
            shippable.check_serving,
            screened=screening.results if screening is not None else None,
            screened_seconds=screening.seconds if screening is not None else None,
            on_gate=on_gate,
        )
    finally:
        shippable.cancel_serving()
        progress.finish(log=False)  # each gate's own line said it all
    return gates, {**extra, "latency": dict(shippable.latency)}


def choose(
    ctx: StageContext,
    summary: dict[str, Any],
    work: Path,
    y_valid: np.ndarray,
    X_test: pd.DataFrame,
    example: pd.DataFrame,
    y_std: float | None,
    champion_latency: dict[str, Any] | None,
) -> tuple[Shippable, Screening | None, dict[str, Any]]:
    """Gate-aware selection: build every candidate under `work`, rank, screen lazily, move the chosen one into place.

    Returns the chosen candidate (now at models/evaluate/model), its screening and the record's `selection`.
    """
    cfg = ctx.params.evaluate
    families = list(summary["families"])
    shippable: dict[str, Shippable] = {}
    started = time.perf_counter()
    progress = Reporter(log=logger)
    progress.start("evaluate", len(families), "building candidates as they would ship")
    for family in families:
        began = time.perf_counter()
        model_dir, built = build_model(ctx, family, np.asarray(y_valid), cfg.gates, work / family)
        shippable[family] = Shippable(ctx, family, model_dir, built, X_test, example, champion_latency)
        seconds = time.perf_counter() - began
        progress.advance(message=f"evaluate: built {family} in {seconds:.1f} s" if seconds >= 1 else None)
    build_seconds = round(time.perf_counter() - started, 3)
    progress.finish()
    ranking = rank_candidates(
        {f: summary["families"][f].get("valid_score") for f in families},
        {f: directory_bytes(s.model_dir) for f, s in shippable.items()},
        cfg.metric,
        cfg.selection.tie_tolerance,
    )

    def screen_one(entry: Ranked) -> Screening:
        logger.info("evaluate: screening %s (%s)", entry.family, ", ".join(cfg.selection.screen) or "no gates")
        candidate = shippable[entry.family]
        candidate.prestart = SERVING_GATE in cfg.selection.screen
        try:
            return screen(entry.family, cfg.selection.screen, candidate.label_free(y_std))
        finally:
            candidate.cancel_serving()  # a no-op once the serving gate collected it

    selection = select(ranking, screen_one)
    chosen = shippable[selection.chosen]
    target = ctx.path(EVALUATED_MODEL)
    chosen.model_dir.rename(target)
    chosen.model_dir = target
    section = selection_record(
        selection, metric=cfg.metric, tie_tolerance=cfg.selection.tie_tolerance, screen_names=cfg.selection.screen
    )
    section["build_seconds"] = build_seconds
    for line in selection_lines(section):
        logger.info("evaluate: %s", line)
    return chosen, selection.screenings.get(selection.chosen), section


def champion_scores_on(champion: dict[str, Any] | None, X: pd.DataFrame, dataset: DatasetConfig) -> np.ndarray | None:
    """The registered champion's scores on the same rows, through its pyfunc (exactly as it is served)."""
    if champion is None:
        return None
    return registry.load_champion_scores(champion, X, dataset.task, class_labels(dataset))


def run(ctx: StageContext) -> dict[str, Any]:
    """Select a candidate, apply every gate to it on the test split and write the gate record and model card."""
    from retrain.evaluation.modelcard import curves, render_model_card
    from retrain.evaluation.policy import target_std

    dataset, cfg, metric = ctx.dataset, ctx.params.evaluate, ctx.params.evaluate.metric
    direction = get_metric(metric).direction
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        test = pd.read_parquet(ctx.path(SPLITS["test"]))
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]))
        y_test = encode_target(test[dataset.target], dataset)
        y_valid = encode_target(valid[dataset.target], dataset)
        X_test = test[dataset.features]
        example = valid[dataset.features].head(EXAMPLE_ROWS)

        champion = registry.champion(ctx.tracking.tracking_uri, ctx.params.promote.model_name, ctx.params.promote.alias)
        previous = champion_record(ctx.tracking.tracking_uri, champion)
        summary = read_json(ctx.path(f"{CANDIDATES}/summary.json"))
        workspace = ctx.path(EVALUATE)
        workspace.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".selection-", dir=workspace) as work:
            chosen, screening, selection = choose(
                ctx, summary, Path(work), y_valid, X_test, example, target_std(dataset.task, y_test),
                (previous or {}).get("latency") or None,
            )  # fmt: skip
        family, model_dir, built = chosen.family, chosen.model_dir, chosen.built
        scores = chosen.predictor.predict_scores(X_test)
        candidate_score = score(metric, y_test, scores)

        baselines = [from_dict(b) for b in read_json(ctx.path(BASELINES))["baselines"]]
        baseline_scores = {b.strategy: score(metric, y_test, b.predict_scores(X_test)) for b in baselines}

        loading = time.perf_counter()
        champion_raw = champion_scores_on(champion, X_test, dataset)
        if champion is not None:
            seconds = time.perf_counter() - loading
            logger.info("evaluate: champion v%s scored on test (its pyfunc) in %.1f s", champion["version"], seconds)
        champion_score = score(metric, y_test, champion_raw) if champion_raw is not None else None
        context = {
            "candidate_score": candidate_score,
            "baseline_scores": baseline_scores,
            "champion_scores": champion_raw,
            "champion_record": previous,
            "confidence_threshold": built["confidence_threshold"],
        }
        gates, extra = run_gates(ctx, chosen, y_test, scores, context, screening)
        decision, failed = decide(gates)
        record = {
            "candidate": {
                "family": family,
                "model_dir": EVALUATED_MODEL,
                "model_hash": tree_md5(model_dir),
                "valid_score": summary["families"][family].get("valid_score"),
            },
            "model_name": ctx.params.promote.model_name,
            "task": dataset.task,
            "metric": metric,
            "direction": direction,
            "selection": selection,
            "scores": {"candidate": candidate_score, "baselines": baseline_scores, "champion": champion_score},
            "champion": champion,
            "gates": [g.to_dict() for g in gates],
            "decision": decision,
            "failed_gates": failed,
            "calibration": built["calibration"],
            "confidence_threshold": built["confidence_threshold"],
            "curves": curves(y_test, scores, dataset.task, class_labels(dataset), cfg.gates.calibration.bins),
            "data_hash": ctx.tracking.tags.get("retrain.data_hash"),
            "git_commit": ctx.tracking.tags.get("retrain.git_commit"),
            "params_hash": ctx.tracking.tags.get("retrain.params_hash"),
            **extra,
        }
        write_json(ctx.path(GATE_RECORD), record)
        write_reports(ctx, record)
        ctx.path(MODEL_CARD).write_text(render_model_card(record))
        mlflow.log_dict(record, "gate_record.json")
        mlflow.log_artifact(str(ctx.path(MODEL_CARD)))
        mlflow.log_metrics(gate_metrics(record, metric))
        metrics = {f"test_{metric}": candidate_score, **{f"test_{metric}_{k}": v for k, v in baseline_scores.items()}}
        if champion_score is not None:
            metrics[f"test_{metric}_champion"] = champion_score
        return finish(ctx, active, metrics, decision=decision, failed_gates=failed, family=family)


def write_reports(ctx: StageContext, record: dict[str, Any]) -> None:
    """The metrics file and plot rows DVC shows (`dvc metrics`, `dvc plots`, `dvc exp show`), from the record."""
    from retrain.evaluation.reports import evaluate_metrics, plot_rows

    curves = ctx.path(LEARNING_CURVES)
    learning = read_json(curves).get(record["candidate"]["family"]) if curves.is_file() else None
    write_json(ctx.path(EVALUATE_METRICS), evaluate_metrics(record))
    for name, rows in plot_rows(record, learning).items():
        write_json(ctx.path(EVALUATE_PLOTS[name]), rows)


PLOTS = (
    Plot(EVALUATE_PLOTS["roc"], "ROC (test)", "fpr", ("tpr",), "simple", "false positive rate", "true positive rate"),
    Plot(EVALUATE_PLOTS["pr"], "Precision-recall (test)", "recall", ("precision",), "simple", "recall", "precision"),
    Plot(
        EVALUATE_PLOTS["calibration"], "Calibration (test)", "predicted", ("observed",), "linear",
        "mean predicted", "observed (fraction positive, or mean actual)",
    ),
    Plot(
        EVALUATE_PLOTS["learning_curve"], "Learning curve (chosen family)", "rows", ("train", "valid"), "linear",
        "training rows", "score (evaluate.metric)",
    ),
    Plot(EVALUATE_PLOTS["slices"], "Metric per slice (test)", "score", ("slice",), "bar_horizontal", "score", "slice"),
    Plot(
        EVALUATE_PLOTS["predicted_vs_actual"], "Predicted vs actual (test, regression)", "predicted", ("actual",),
        "scatter", "predicted", "actual",
    ),
    Plot(
        EVALUATE_PLOTS["residuals"], "Residuals (test, regression)", "residual", ("count",), "simple",
        "residual (actual - predicted)", "rows",
    ),
)  # fmt: skip
"""What `dvc plots show` draws from evaluate's plot files (an empty file: a plot the task has not)."""


def gate_metrics(record: dict[str, Any], metric: str) -> dict[str, float]:
    """Per-gate values and per-slice metrics as MLflow metrics (finite ones only)."""
    out: dict[str, float] = {}
    for gate in record["gates"]:
        if gate["value"] is not None and math.isfinite(gate["value"]):
            out[metric_key("gate", gate["name"])] = float(gate["value"])
        out[metric_key("gate_passed", gate["name"])] = 1.0 if gate["status"] == "pass" else 0.0
    for column, entries in record["slices"]["columns"].items():
        for entry in entries:
            out[metric_key("test_n_slice", column, entry["value"])] = float(entry["n"])
            if entry["metric"] is not None:
                out[metric_key(f"test_{metric}_slice", column, entry["value"])] = entry["metric"]
    for key, value in record.get("latency", {}).items():
        out[metric_key("latency", key)] = float(value)
    selection = record.get("selection")
    if selection:
        out["selection_chosen_rank"] = float(selection["chosen_rank"])
        out["selection_passed_over"] = float(len(selection["passed_over"]))
        out["selection_screening_seconds"] = float(selection["screening_seconds"])
    return out


STAGE = Stage(
    "evaluate",
    run,
    deps=(SPLITS["valid"], SPLITS["test"], BASELINES, CANDIDATES),
    outs=(EVALUATE,),
    params=(
        "evaluate",
        "promote.model_name",
        "promote.alias",
        *DATASET_KEYS,
        "dataset.slices",
        "dataset.protected",
        "seed",
    ),
    key_inputs=champion_input,
    metrics=(EVALUATE_METRICS,),
    plots=PLOTS,
)
