"""Given a task and a split design, CV folds are stratified, shuffled, grouped or time-ordered, and the
search optimises in the metric's direction."""

from __future__ import annotations

import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
import pytest

from retrain.config import FamilyConfig, ParamRange
from retrain.errors import DataError
from retrain.models.tuning import (
    PRUNE_REPORT_EVERY,
    ROUND_STEP_STRIDE,
    Deadline,
    cv_evaluate,
    make_folds,
    optuna_storage,
    plan_threads,
    requested_threads,
    tune,
    with_threads,
)


def covers_every_row_once(folds: list[tuple[np.ndarray, np.ndarray]], n: int) -> bool:
    valid = np.concatenate([v for _, v in folds])
    return sorted(valid.tolist()) == list(range(n))


def test_classification_folds_are_stratified_and_seeded() -> None:
    y = np.repeat([0, 1, 2], [60, 30, 9])
    folds = make_folds(y, 3, seed=4, task="multiclass")
    assert covers_every_row_once(folds, len(y))
    for _, valid in folds:
        assert np.bincount(y[valid], minlength=3).tolist() == [20, 10, 3], "each fold keeps the class shares"
    again = make_folds(y, 3, seed=4, task="multiclass")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True)), "same seed, same folds"


def test_rare_class_error_names_class_count_and_setting() -> None:
    y = np.repeat([0, 1, 2], [50, 50, 2])
    with pytest.raises(DataError, match=r"class 'c' has 2 training rows, fewer than candidates.cv_folds = 3"):
        make_folds(y, 3, seed=0, task="multiclass", labels=["a", "b", "c"])


def test_regression_folds_are_shuffled_kfold() -> None:
    y = np.arange(30, dtype=float)
    folds = make_folds(y, 3, seed=0, task="regression")
    assert covers_every_row_once(folds, 30) and len(folds) == 3
    contiguous = [np.array_equal(v, np.arange(v.min(), v.max() + 1)) for _, v in folds]
    assert not all(contiguous), "rows are shuffled into folds, not cut into contiguous blocks"


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_grouped_folds_never_split_a_group(task: str) -> None:
    rng = np.random.default_rng(0)
    groups = pd.Series(rng.integers(0, 12, size=240).astype(str))
    y = rng.integers(0, 2, size=240) if task == "binary" else rng.normal(size=240)
    folds = make_folds(y, 3, seed=1, task=task, groups=groups)
    assert covers_every_row_once(folds, 240)
    for train, valid in folds:
        shared = set(groups.iloc[train]) & set(groups.iloc[valid])
        assert not shared, f"groups {shared} are on both sides of a fold"


def test_fewer_groups_than_folds_is_a_data_error() -> None:
    groups = np.array(["a", "b"] * 20)
    with pytest.raises(DataError, match=r"2 distinct groups.*candidates.cv_folds = 3"):
        make_folds(np.zeros(40), 3, seed=0, task="regression", groups=groups)


def test_ordered_folds_train_on_the_past_only() -> None:
    y = np.tile([0, 1], 30)
    folds = make_folds(y, 3, seed=0, task="binary", ordered=True)
    assert len(folds) == 3
    for train, valid in folds:
        assert train.max() < valid.min(), "every training row comes before every validation row"


def test_search_minimises_a_lower_is_better_metric() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=300), "c": pd.Series(rng.choice(["x", "y"], size=300), dtype="str")})
    y = 2 * X["a"].to_numpy() + (X["c"] == "x") + rng.normal(scale=0.3, size=300)
    cfg = FamilyConfig(space={"alpha": ParamRange(low=0.01, high=1000.0, log=True)})
    heard: list[tuple[str, int, int]] = []
    result = tune(
        "ridge",
        cfg,
        X,
        y,
        numeric=["a"],
        categorical=["c"],
        metric="rmse",
        n_trials=4,
        n_folds=3,
        seed=0,
        task="regression",
        on_trial=lambda family, done, budget: heard.append((family, done, budget)),
    )
    values = [t["value"] for t in result.trials]
    assert result.direction == "minimize" and result.cv_score == min(values), f"best is the lowest rmse: {values}"
    assert heard == [("ridge", n, 4) for n in (1, 2, 3, 4)], f"on_trial hears every finished trial: {heard}"


def lgbm_data(n: int = 600) -> tuple[pd.DataFrame, np.ndarray]:
    """A learnable binary target from one numeric and one categorical column."""
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"a": rng.normal(size=n), "c": pd.Series(rng.choice(["x", "y", "z"], size=n), dtype="str")})
    y = ((X["a"] + (X["c"] == "x") + rng.normal(scale=0.5, size=n)) > 0.5).astype(int).to_numpy()
    return X, y


LGBM = FamilyConfig(
    fixed={"n_estimators": 400, "verbose": -1, "deterministic": True, "n_jobs": 1},
    space={
        "learning_rate": ParamRange(low=0.05, high=0.3, log=True),
        "num_leaves": ParamRange(low=2, high=32, int=True),
        "min_child_samples": ParamRange(low=5, high=200, int=True, log=True),
    },
    early_stopping_rounds=10,
)


def test_lightgbm_trials_stop_early_and_are_pruned() -> None:
    X, y = lgbm_data()
    kwargs = dict(numeric=["a"], categorical=["c"], metric="roc_auc", n_folds=3, seed=0)
    result = tune("lightgbm", LGBM, X, y, n_trials=14, **kwargs)
    states = [t["state"] for t in result.trials]
    assert result.n_pruned > 0 and "PRUNED" in states, f"the median pruner stopped hopeless trials: {states}"
    rounds = [t["n_estimators"] for t in result.trials if "n_estimators" in t]
    assert rounds and max(rounds) < 400, f"boosting stopped before n_estimators inside folds: {rounds}"
    assert result.best_params["n_estimators"] < 400, "the refit uses the folds' mean best round count"
    assert result.oof is not None and result.oof.shape == (len(y),) and result.oof_rows.all(), "OOF for stacking"


def test_round_pruning_reports_sign_adjusted_loss_and_waits_for_warmup() -> None:
    X, y = lgbm_data()
    folds = make_folds(y, 3, 0, task="binary")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=-1e-6))
    trial = study.ask()
    params = {"n_estimators": 400, "verbose": -1, "learning_rate": 0.05, "n_jobs": 1}
    with pytest.raises(optuna.TrialPruned, match="fold 0 round 30"):
        cv_evaluate("lightgbm", params, X, y, folds, ["a"], ["c"], "roc_auc", early_stopping_rounds=10, trial=trial,
                    pruning_warmup_rounds=30)  # fmt: skip
    reported = study.trials[0].intermediate_values
    assert sorted(reported) == [10, 20, 30], (
        f"a report every {PRUNE_REPORT_EVERY} rounds, pruned at warm-up: {reported}"
    )
    assert all(v < 0 for v in reported.values()), f"log loss is negated in a maximize study: {reported}"


def test_a_trial_running_at_the_timeout_is_stopped_there() -> None:
    X, y = lgbm_data(200)
    folds = make_folds(y, 3, 0, task="binary")
    params = {"n_estimators": 50, "verbose": -1, "n_jobs": 1}
    past = time.perf_counter()
    with pytest.raises(optuna.TrialPruned, match="before fold 0"):
        cv_evaluate("lightgbm", params, X, y, folds, ["a"], ["c"], "roc_auc", early_stopping_rounds=10, deadline=past)
    env = lgb.callback.CallbackEnv(None, {}, 4, 0, 50, [])
    with pytest.raises(optuna.TrialPruned, match="boosting round 5"):
        Deadline(past)(env)
    Deadline(time.perf_counter() + 3600)(env)  # before the deadline: boosting goes on


def test_lightgbm_trials_are_pruned_on_boosting_rounds() -> None:
    X, y = lgbm_data()
    storage = optuna.storages.InMemoryStorage()
    cfg = LGBM.model_copy(update={"pruning_warmup_rounds": 20})
    result = tune("lightgbm", cfg, X, y, numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=14,
                  n_folds=3, seed=0, storage=storage, study_name="rounds")  # fmt: skip
    study = optuna.load_study(study_name="rounds", storage=storage)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and result.n_pruned == len(pruned), "some trials were pruned"
    for t in pruned:
        last = max(t.intermediate_values)
        rounds = last % ROUND_STEP_STRIDE
        assert rounds >= 20 and rounds % PRUNE_REPORT_EVERY == 0, f"pruned on a boosting round after warm-up: {last}"
    steps = {s for t in study.trials for s in t.intermediate_values}
    assert any(s >= ROUND_STEP_STRIDE for s in steps), "later folds report at their own steps"
    assert not any(s < PRUNE_REPORT_EVERY for s in steps), "no fold-level reports mixed with round reports"


def test_family_budget_overrides_the_global_trial_count() -> None:
    X, y = lgbm_data(300)
    cfg = LGBM.model_copy(update={"n_trials": 2})
    result = tune("lightgbm", cfg, X, y, numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=9,
                  n_folds=2, seed=0)  # fmt: skip
    assert len(result.trials) == 2, "the family's n_trials wins over candidates.n_trials"
    tiny = LGBM.model_copy(update={"timeout_seconds": 0.01})
    cut = tune("lightgbm", tiny, X, y, numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=50,
               n_folds=2, seed=0)  # fmt: skip
    assert 1 <= len(cut.trials) < 50, f"timeout_seconds stops the search: {len(cut.trials)} trials"


def test_threads_never_oversubscribe() -> None:
    assert plan_threads(2, 1, cpus=2) == (1, 2)
    assert plan_threads(2, 2, cpus=2) == (2, 1), "2 parallel trials x 2 threads would need 4 cores"
    assert plan_threads(8, 16, cpus=4) == (4, 1), "no more parallel trials than cores"
    assert plan_threads(None, 2, cpus=8) == (2, 4), "unset threads: the cores are shared between trials"
    for requested in (None, -1, 1, 3, 16):
        for parallel in (1, 2, 3, 5):
            trials, threads = plan_threads(requested, parallel, cpus=4)
            assert trials * threads <= 4, f"{trials} x {threads} > 4 cores ({requested=}, {parallel=})"


def test_journal_storage_keeps_the_study(tmp_path: Path) -> None:
    X, y = lgbm_data(300)
    storage = optuna_storage("journal:studies/optuna.log", tmp_path)
    assert (tmp_path / "studies").is_dir(), "a relative journal path is anchored at the project root"
    result = tune("logreg", FamilyConfig(space={"C": ParamRange(low=0.1, high=10, log=True)}), X, y,
                  numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=2, n_folds=2, seed=0,
                  storage=storage, study_name="logreg-test")  # fmt: skip
    again = optuna_storage("journal:studies/optuna.log", tmp_path)
    reopened = optuna.load_study(study_name="logreg-test", storage=again)
    assert [t.value for t in reopened.trials] == [t["value"] for t in result.trials], "trials persisted in the journal"
    assert optuna_storage(None) is None, "no spec: in memory"
    rdb = optuna_storage(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(rdb, optuna.storages.RDBStorage) and rdb.url.endswith("x.db"), "a URL: an RDB storage on it"


def test_refit_scales_early_stopped_rounds_and_divides_the_learning_rate() -> None:
    X, y = lgbm_data(300)
    cfg = LGBM.model_copy(update={"n_trials": 2})
    result = tune("lightgbm", cfg, X, y, numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=2,
                  n_folds=2, seed=0)  # fmt: skip
    best = result.best_params
    refit = result.refit_params(round(result.fold_rows * 4), 2.0)
    assert refit["n_estimators"] == round(best["n_estimators"] * 2 * 2), "x sqrt(4) for 4x rows, x 2 for the divisor"
    assert refit["learning_rate"] == best["learning_rate"] / 2, "half the learning rate"
    plain = tune("logreg", FamilyConfig(fixed={"max_iter": 300}), X, y, numeric=["a"], categorical=["c"],
                 metric="roc_auc", n_trials=1, n_folds=2, seed=0)  # fmt: skip
    assert plain.refit_params(10_000) == plain.best_params, "families without early stopping refit as tuned"


def test_each_trial_logs_progress_with_an_eta(caplog: pytest.LogCaptureFixture) -> None:
    X, y = lgbm_data(300)
    cfg = LGBM.model_copy(update={"n_trials": 3})
    with caplog.at_level("INFO", logger="retrain.models.tuning"):
        tune("lightgbm", cfg, X, y, numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=3, n_folds=2, seed=0)
    lines = [r.getMessage() for r in caplog.records if "trial " in r.getMessage() and "ETA" in r.getMessage()]
    assert [line.split(" ")[2] for line in lines] == ["1/3", "2/3", "3/3"], lines
    assert lines[-1].endswith("ETA 0s"), f"nothing left after the last trial: {lines[-1]}"


def test_each_family_takes_the_planned_threads_as_its_record_says() -> None:
    fixed = {"n_jobs": 1, "num_threads": 4, "C": 1.0}
    assert with_threads("lightgbm", fixed, 2) == {"C": 1.0, "n_jobs": 2}, "LightGBM: aliases dropped, n_jobs planned"
    assert with_threads("random_forest", fixed, 2) == {"num_threads": 4, "C": 1.0, "n_jobs": 2}, "forest: n_jobs"
    assert with_threads("hgb", fixed, 2) == {"C": 1.0}, "hgb has no thread parameter: threadpoolctl bounds it"
    assert with_threads("logreg", fixed, 2) is fixed, "the linear families are left as configured"
    asked = {f: requested_threads(f, {"n_jobs": 3}) for f in ("lightgbm", "hgb", "random_forest", "logreg", "ridge")}
    assert asked == {"lightgbm": 3, "hgb": 3, "random_forest": 3, "logreg": None, "ridge": None}, (
        f"fixed.n_jobs is a request only where the record reads it: {asked}"
    )
