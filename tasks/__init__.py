"""Exactly one module per stage, named like the stage: its `STAGE` record and its `run(ctx)`.

`run` reads the stage's inputs, calls retrain/, writes its outputs and logs to MLflow. Model libraries are
imported inside the functions: the flow imports every module for its record (flows/dag.py), and a cached
rerun must not pay for LightGBM, scikit-learn, Optuna or Great Expectations.
"""
