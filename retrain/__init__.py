"""retrain: the pure ML logic of the pipeline, grouped by the DAG's concerns.

data/ (ingest, sources, schema, validate, leakage, drift, split), models/ (the family registry, estimators,
tuning, baselines, calibrator), evaluation/ (gates and their policy, behaviour, calibration, fairness,
latency, model card, diagnostics), serving/ (fast scoring); config.py, catalog.py, metrics.py at the base.

It never imports MLflow, Prefect or DVC (checked by tests/unit/test_architecture.py). Files are touched only
where the logic is about files: parsing the declared sources (data/ingest.py), reading params.yaml
(config.py), a model's own save/load (models/estimators.py, serving/predict.py), the Optuna journal file
(models/tuning.py) and the GX Data Docs folder it is handed (data/validate.py). Stage I/O and tracking live
in tasks/, engine/ and adapters/.
"""
