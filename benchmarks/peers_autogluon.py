"""AutoGluon for the tuning benchmark, run INSIDE .venv-peers (AutoGluon 1.6.3 needs pandas < 2.4; .venv has 3).

    .venv-peers/bin/python benchmarks/peers_autogluon.py --train T.parquet --test X.parquet --label y \\
        --problem-type binary --metric roc_auc --time-limit 30 --seed 42 --models all --out scores.parquet

benchmarks/tuning.py writes the rows (train + valid in one file: AutoGluon holds out its own validation rows;
the test rows without the label), runs this script with `.venv-peers/bin/python` (`make bench-peers-env`),
reads back the test scores it writes to --out and scores them with the pipeline's own metric code. This
script imports nothing from the project, so it runs in a venv that has only requirements-peers.lock.

--models all: `presets="medium_quality"` with AutoGluon's default model list; in .venv-peers (no torch)
that is LightGBM x3, CatBoost, XGBoost, RandomForest x2, ExtraTrees x2 (the NN_TORCH / FASTAI entries are
skipped: torch is not installed) and a weighted ensemble. --models gbm: the same preset with only its
three LightGBM configs (and the weighted ensemble). Prints one JSON line on stdout: the test metric (by
scikit-learn, when --test carries the label), fit and predict seconds, the models trained and the best.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks.peers_autogluon")

PRESET = "medium_quality"
MODEL_SETS = ("all", "gbm")
"""all: the preset's default model list; gbm: only its LightGBM ("GBM") entries."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: the data files, the task, the budget and which model list."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="parquet: features + label (train + valid rows)")
    parser.add_argument("--test", type=Path, required=True, help="parquet: test features (the label is optional)")
    parser.add_argument("--label", required=True, help="label column name in --train (and --test, if present)")
    parser.add_argument("--problem-type", required=True, choices=("binary", "regression"))
    parser.add_argument("--metric", required=True, choices=("roc_auc", "r2"), help="AutoGluon's eval_metric")
    parser.add_argument("--time-limit", type=float, required=True, help="fit time_limit, seconds")
    parser.add_argument("--seed", type=int, default=0, help="AutoGluon's holdout split seed (learner random_state)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models", choices=MODEL_SETS, default="all")
    parser.add_argument("--out", type=Path, required=True, help="parquet the test scores are written to")
    parser.add_argument("--workdir", type=Path, help="AutoGluon's model directory (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.time_limit <= 0:
        parser.error(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.num_cpus < 1:
        parser.error(f"--num-cpus must be >= 1, got {args.num_cpus}")
    return args


def hyperparameters(models: str) -> Any:
    """The preset's default model list, or only its LightGBM entries."""
    from autogluon.tabular.configs.hyperparameter_configs import get_hyperparameter_config

    default = get_hyperparameter_config("default")
    return default if models == "all" else {"GBM": default["GBM"]}


def test_metric(metric: str, y: Any, scores: Any) -> float:
    """The test metric by scikit-learn (the benchmark re-scores with the pipeline's code)."""
    from sklearn.metrics import r2_score, roc_auc_score

    return float(roc_auc_score(y, scores) if metric == "roc_auc" else r2_score(y, scores))


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Fit AutoGluon within the time limit, score the test rows, write them; the summary."""
    import autogluon.tabular
    import pandas as pd
    from autogluon.tabular import TabularPredictor

    train = pd.read_parquet(args.train)
    test = pd.read_parquet(args.test)
    if args.label not in train.columns:
        raise SystemExit(f"{args.train}: no label column {args.label!r} (columns: {list(train.columns)})")
    y_test = test.pop(args.label) if args.label in test.columns else None
    predictor = TabularPredictor(
        label=args.label,
        problem_type=args.problem_type,
        eval_metric=args.metric,
        path=str(workdir / "ag"),
        verbosity=1,
        learner_kwargs={"random_state": args.seed},
    )
    started = time.perf_counter()
    predictor.fit(
        train,
        time_limit=args.time_limit,
        presets=PRESET,
        hyperparameters=hyperparameters(args.models),
        num_cpus=args.num_cpus,
        num_gpus=0,
    )
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if args.problem_type == "binary":
        scores = predictor.predict_proba(test, as_multiclass=False)
    else:
        scores = predictor.predict(test)
    predict_seconds = time.perf_counter() - started
    pd.DataFrame({"score": scores.to_numpy(dtype=float)}).to_parquet(args.out)
    board = predictor.leaderboard(silent=True)
    return {
        "autogluon": autogluon.tabular.__version__,
        "pandas": pd.__version__,
        "preset": PRESET,
        "models_set": args.models,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "models": [str(m) for m in predictor.model_names()],
        "best": str(predictor.model_best),
        "val_score": float(board.loc[board["model"] == predictor.model_best, "score_val"].iloc[0]),
        "test": None if y_test is None else test_metric(args.metric, y_test.to_numpy(), scores.to_numpy()),
        "rows": {"train": len(train), "test": len(test)},
        "num_cpus": args.num_cpus,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse, fit in a temp model directory (unless --workdir), print the one-line JSON summary."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.workdir is not None:
        summary = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-autogluon-") as tmp:
            summary = run(args, Path(tmp))
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
