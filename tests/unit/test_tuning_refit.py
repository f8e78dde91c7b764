"""The refit's learning rate and rounds are chosen on valid (fewest trees within a tolerance), and a search can
start from known configs (declared `warm_start`, the champion's params): trial 0 is the first of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from retrain.config import FamilyConfig, ParamRange, load_params
from retrain.errors import ConfigError
from retrain.metrics import score
from retrain.models.tuning import choose_refit, in_space, tune
from tests.conftest import REPO
from tests.unit.test_tuning import LGBM, lgbm_data

FIT = {"numeric": ["a"], "categorical": ["c"], "task": "binary", "n_classes": 2, "threads": 1}


def tuned(seed: int = 0, **update: object):
    """A two-trial LightGBM search on 300 tiny rows (early-stopped rounds, so the refit can move)."""
    X, y = lgbm_data(300)
    cfg = LGBM.model_copy(update={"n_trials": 2, **update})
    return tune("lightgbm", cfg, X, y, numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=2,
                n_folds=2, seed=seed)  # fmt: skip


def test_refit_keeps_the_fewest_trees_within_the_tolerance_of_the_best_valid_score() -> None:
    X, y = lgbm_data(600)
    X_train, y_train, X_valid, y_valid = X.iloc[:400], y[:400], X.iloc[400:], y[400:]
    result = tuned()
    exact = choose_refit("lightgbm", result, X_train, y_train, X_valid, y_valid, metric="roc_auc",
                         divisors=(2.0, 0.5, 1.0), tolerance=0.0, **FIT)  # fmt: skip
    tried = exact.tried
    assert [t["learning_rate_divisor"] for t in tried] == [0.5, 1.0, 2.0], f"fewest trees first: {tried}"
    trees = [t["n_estimators"] for t in tried]
    assert trees == sorted(trees) and trees[0] < trees[-1], f"d x the rounds: {trees}"
    values = [t["valid_roc_auc"] for t in tried]
    assert exact.valid_score == max(values), f"tolerance 0 keeps the best valid score: {values}"
    first_best = tried[values.index(max(values))]["learning_rate_divisor"]
    assert exact.divisor == first_best and result.refit_divisor == first_best, "ties go to fewer trees"
    assert exact.valid_score == score("roc_auc", y_valid, exact.valid_scores), "the kept model's own valid score"
    assert exact.model.named_steps["model"].n_estimators == tried[values.index(max(values))]["n_estimators"]
    loose = choose_refit("lightgbm", result, X_train, y_train, X_valid, y_valid, metric="roc_auc",
                         divisors=(0.5, 1.0, 2.0), tolerance=1.0, **FIT)  # fmt: skip
    assert loose.divisor == 0.5, "within a 100 % tolerance the fewest trees always win"
    final = result.refit_params(1000)
    assert final["learning_rate"] == result.best_params["learning_rate"] * 2, "the final refit uses the kept divisor"


def test_refit_choice_is_deterministic() -> None:
    X, y = lgbm_data(600)
    split = (X.iloc[:400], y[:400], X.iloc[400:], y[400:])
    kept = [
        choose_refit("lightgbm", tuned(), *split, metric="roc_auc", divisors=(1.0, 2.0), tolerance=0.0005, **FIT)
        for _ in range(2)
    ]
    assert kept[0].tried == kept[1].tried, "same data and params, same refits and valid scores"
    assert np.array_equal(kept[0].valid_scores, kept[1].valid_scores)
    booster = [k.model.named_steps["model"].booster_.model_to_string() for k in kept]
    assert booster[0] == booster[1], "same model bytes"


def test_warm_start_configs_are_the_first_trials() -> None:
    X, y = lgbm_data(300)
    declared = {"learning_rate": 0.1, "num_leaves": 7}
    champion = {"learning_rate": 0.2, "num_leaves": 20, "min_child_samples": 30, "n_estimators": 99, "objective": "x"}
    cfg = LGBM.model_copy(update={"n_trials": 3, "warm_start": (declared,)})
    result = tune("lightgbm", cfg, X, y, numeric=["a"], categorical=["c"], metric="roc_auc", n_trials=3,
                  n_folds=2, seed=0, warm_start=[champion, declared])  # fmt: skip
    params = [t["params"] for t in result.trials]
    assert len(params) == 3, "warm-start trials count towards the budget"
    assert {k: params[0][k] for k in declared} == declared, f"trial 0 is the declared warm start: {params[0]}"
    cut = in_space(champion, cfg.space)
    assert params[1] == cut, f"trial 1 is the champion's params, cut to the space: {params[1]}"
    assert params[2] != params[0], "then the search samples (a duplicate warm start is enqueued once)"


def test_warm_start_outside_the_space_is_an_error_naming_the_key_path(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["candidates"]["lightgbm"]["warm_start"] = [{"learning_rate": 0.05}, {"learning_rate": 0.5}]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"candidates\.lightgbm.*warm_start\[1\]\.learning_rate: 0\.5 is outside"):
        load_params(path)
    params["candidates"]["lightgbm"]["warm_start"] = [{"leaves": 7}]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"warm_start\[0\]\.leaves: not a dimension of the search space"):
        load_params(path)
    space = {"n": ParamRange(low=1, high=5, int=True), "k": ParamRange(choices=("a", "b"))}
    with pytest.raises(ValueError, match=r"warm_start\[0\]\.n: 2\.5 is not an integer"):
        FamilyConfig(space=space, warm_start=({"n": 2.5},))
    with pytest.raises(ValueError, match=r"warm_start\[0\]\.k: 'c' is not one of the choices"):
        FamilyConfig(space=space, warm_start=({"k": "c"},))
