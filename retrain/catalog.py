"""Where each stage's artifacts live, relative to the project root: names only, no I/O.

The stage records in tasks/ declare their inputs and outputs with these names, so one table says which
stage writes what and which stages read it (`retrain stages` prints it; dvc.yaml is generated from it).
"""

from __future__ import annotations

LOCK_FILE = "requirements.lock"
"""The locked environment: its md5 is part of every cache key and run tag."""
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
LEARNING_CURVES = "models/candidates/learning_curves.json"
"""Each family's learning curve (train and valid score vs training rows), from its train-only diagnostics."""

REPORTS = "reports"
"""Small git-tracked files DVC shows (`dvc metrics`, `dvc plots`, `dvc exp show`): never inside a DVC out directory."""
EVALUATE_METRICS = "reports/evaluate/metrics.json"
PROMOTE_METRICS = "reports/promote/promotion.json"
EVALUATE_PLOTS = {
    name: f"reports/evaluate/plots/{name}.json"
    for name in ("roc", "pr", "calibration", "learning_curve", "slices", "predicted_vs_actual", "residuals")
}
"""One JSON list of rows per plot (empty when the task has no such plot: no ROC for a regression)."""

DATASET_KEYS = (
    "dataset.task",
    "dataset.target",
    "dataset.labels",
    "dataset.positive_label",
    "dataset.columns",
    "dataset.exclude",
)
"""The dataset keys nearly every stage reads (its cache key and dvc.yaml `params`)."""
