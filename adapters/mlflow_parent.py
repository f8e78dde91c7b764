"""What the parent MLflow run of a pipeline run carries: key params, headline metrics, the decision, the training data.

Pure mapping from the params, the gate record and the promotion outcome to MLflow entities, plus the calls that
write them; the engine decides when (engine/runner.py). What lands where is listed in docs/tracking.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from retrain.config import Params

logger = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag the MLflow 3 UI reads to pick its layout (server/js: `experimentKind`)."""
TRAINING_KIND = "custom_model_development"
"""The kind whose experiment page opens on the runs table (not the GenAI traces view)."""
DATASET_CONTEXT = "training"


def key_params(params: Params) -> dict[str, str]:
    """The settings a person compares runs by, under short keys (MLflow params are strings)."""
    cfg = params.candidates
    return {
        "task": params.dataset.task,
        "metric": params.evaluate.metric,
        "target": params.dataset.target,
        "families": ",".join(cfg.families),
        "n_trials": str(cfg.n_trials),
        "cv_folds": str(cfg.cv_folds),
        "seed": str(params.seed),
        "sample_rows": str(params.ingest.sample_rows),
        "source": redact(params.ingest.source),
    }


def redact(source: str) -> str:
    """A source without the password a SQLAlchemy URL may carry (params are shown to everyone with the UI)."""
    parsed = urlparse(source)
    if "://" not in source or parsed.password is None:
        return source
    return source.replace(f":{parsed.password}@", ":***@", 1)


def headline_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """From the gate record: the chosen candidate on test and valid, the champion, the best baseline, failed gates."""
    metric = str(record.get("metric"))
    scores = record.get("scores") or {}
    out: dict[str, float] = {}
    if scores.get("candidate") is not None:
        out[f"test_{metric}"] = float(scores["candidate"])
    valid = (record.get("candidate") or {}).get("valid_score")
    if valid is not None:
        out[f"valid_{metric}"] = float(valid)
    if scores.get("champion") is not None:
        out[f"test_{metric}_champion"] = float(scores["champion"])
    baselines = [float(v) for v in (scores.get("baselines") or {}).values() if v is not None]
    if baselines:
        best = max if record.get("direction", "maximize") == "maximize" else min
        out[f"test_{metric}_best_baseline"] = best(baselines)
    out["gates_failed"] = float(len(record.get("failed_gates") or []))
    return out


def outcome_tags(record: Mapping[str, Any] | None, promotion: Mapping[str, Any] | None) -> dict[str, str]:
    """The decision, the chosen family, what promote did and the model version, as parent-run tags."""
    tags: dict[str, str] = {}
    if record:
        tags["retrain.decision"] = str(record.get("decision"))
        tags["retrain.family"] = str((record.get("candidate") or {}).get("family"))
        tags["retrain.failed_gates"] = ",".join(record.get("failed_gates") or []) or "-"
    if promotion:
        tags["retrain.promotion"] = str(promotion.get("action"))
        for key in ("version", "champion_version", "challenger_version"):
            if promotion.get(key) is not None:
                tags[f"retrain.model_{key}" if key == "version" else f"retrain.{key}"] = str(promotion[key])
    return tags


def object_url(remote_url: str, md5: str) -> str:
    """Where DVC 3 keeps object `md5` on a remote: `<remote>/files/md5/<2 chars>/<rest>`."""
    return f"{remote_url.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}"


def dataset_source(url: str) -> tuple[str, str]:
    """(source_type, source JSON) as mlflow.data's sources write them: `local`/`s3`/`gs`/... with a uri, `http` a url.

    Built here rather than by `resolve_dataset_source`, which warns on every local path (two resolvers match).
    """
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        return "http", json.dumps({"url": url})
    return (scheme if scheme and scheme != "file" else "local"), json.dumps({"uri": url})


def snapshot_schema(path: Path | None) -> tuple[str | None, str | None]:
    """(MLflow colspec schema JSON, profile JSON) from a Parquet footer only: columns, types and the row count."""
    if path is None or not path.is_file():
        return None, None
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.types import ColSpec, DataType, Schema

    meta = pq.read_metadata(path)
    arrow = meta.schema.to_arrow_schema()

    def kind(t: pa.DataType) -> DataType:
        """The MLflow type of an Arrow column (anything unusual as a string)."""
        if pa.types.is_boolean(t):
            return DataType.boolean
        if pa.types.is_integer(t):
            return DataType.long
        if pa.types.is_floating(t):
            return DataType.double
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return DataType.datetime
        return DataType.string

    schema = Schema([ColSpec(kind(f.type), f.name) for f in arrow])
    profile = {"num_rows": meta.num_rows, "num_columns": len(arrow)}
    return json.dumps({"mlflow_colspec": schema.to_dict()}), json.dumps(profile)


def training_input(name: str, md5: str, remote_url: str | None, snapshot: Path | None = None) -> DatasetInput:
    """The snapshot as an MLflow dataset input (what `mlflow.log_input(..., context="training")` builds), its
    digest the DVC md5 and its source the object on the DVC remote (the local snapshot path without a remote)."""
    url = object_url(remote_url, md5) if remote_url else str(snapshot)
    source_type, source = dataset_source(url)
    schema, profile = snapshot_schema(snapshot)
    dataset = Dataset(name=name, digest=md5, source_type=source_type, source=source, schema=schema, profile=profile)
    return DatasetInput(dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=DATASET_CONTEXT)])


def log_parent(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    dataset: DatasetInput | None = None,
    timestamp_ms: int = 0,
) -> None:
    """One batch of metrics, tags and params not yet on the run (MLflow refuses to change a param), and the input."""
    if params:
        existing = client.get_run(run_id).data.params
        params = {k: v for k, v in params.items() if k not in existing}
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), timestamp_ms, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    if dataset is not None:
        client.log_inputs(run_id, datasets=[dataset])  # MLflow dedups a (name, digest) already on the run
