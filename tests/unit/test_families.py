"""Family/task checks run before any model library is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from retrain.errors import ConfigError
from retrain.families import check_family, lightgbm_params


def test_family_that_cannot_serve_the_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'ridge' does not apply to dataset.task 'binary'"):
        check_family("ridge", "binary")
    with pytest.raises(ValueError, match="unknown model family 'xgboost'"):
        check_family("xgboost", "binary")
    check_family("logreg", "multiclass")


def test_objective_follows_the_task_and_a_contradiction_names_the_key() -> None:
    assert lightgbm_params("binary", {"num_leaves": 7}) == {"num_leaves": 7, "objective": "binary"}
    assert lightgbm_params("regression", {"app": "huber"})["objective"] == "huber", "an alias is read and kept"
    assert "objective" not in lightgbm_params("multiclass", {}), "multiclass leaves it to LGBMClassifier"
    with pytest.raises(ConfigError, match=r"candidates.lightgbm.fixed.loss = 'huber' does not fit dataset.task"):
        check_family("lightgbm", "binary", {"loss": "huber"})
    with pytest.raises(ConfigError, match="sets the objective twice"):
        lightgbm_params("regression", {"objective": "l1", "loss": "huber"})


def test_the_checks_import_no_model_library() -> None:
    code = "import sys, retrain.families; print(sorted({'lightgbm', 'sklearn', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"retrain.families pulled in {out.strip()}: a cached rerun would pay for it"
