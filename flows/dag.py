"""The DAG: every stage record in run order. The flow, `retrain stage`, `retrain stages` and dvc.yaml use this tuple.

ingest ─► version ─► validate ─► split ─┬─► baselines ───────┐
                                        └─► candidates(tune) ─┴─► evaluate(gates) ─► promote
"""

from __future__ import annotations

from engine.stage import Stage
from tasks import baselines, candidates, evaluate, ingest, promote, split, validate, version

DAG: tuple[Stage, ...] = (
    ingest.STAGE,  # ingest.source (+ test_source) -> snapshot.parquet, schema.json
    version.STAGE,  # snapshot -> version.json (+ the snapshot in the DVC cache and remote)
    validate.STAGE,  # snapshot, schema (+ the champion's training snapshot) -> validate/report.json
    split.STAGE,  # snapshot, schema, report -> train / valid / test.parquet
    baselines.STAGE,  # train, valid -> baselines.json
    candidates.STAGE,  # train, valid -> candidates/<family>/ (+ summary.json, valid_scores.parquet)
    evaluate.STAGE,  # valid, test, baselines, candidates (+ the champion) -> evaluate/ (gate record, model, card)
    promote.STAGE,  # evaluate/ -> promotion.json (+ registry version, aliases, audit)
)
