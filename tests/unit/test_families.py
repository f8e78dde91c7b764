"""The family registry: one consistent record per family, and family/task checks run before any model library
is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from retrain.config import CandidatesConfig, FamilyConfig
from retrain.errors import ConfigError
from retrain.models.families import FAMILIES, SKOPS_BASE_TRUSTED, TASKS, check_family, get_family, lightgbm_params


def test_family_that_cannot_serve_the_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'ridge' does not apply to dataset.task 'binary'"):
        check_family("ridge", "binary")
    with pytest.raises(ConfigError, match=r"unknown model family 'xgboost'; known families: hgb, lightgbm, logreg"):
        check_family("xgboost", "binary")
    check_family("logreg", "multiclass")
    check_family("random_forest", "regression")


def test_objective_follows_the_task_and_a_contradiction_names_the_key() -> None:
    assert lightgbm_params("binary", {"num_leaves": 7}) == {"num_leaves": 7, "objective": "binary"}
    assert lightgbm_params("regression", {"app": "huber"})["objective"] == "huber", "an alias is read and kept"
    assert "objective" not in lightgbm_params("multiclass", {}), "multiclass leaves it to LGBMClassifier"
    with pytest.raises(ConfigError, match=r"candidates.lightgbm.fixed.loss = 'huber' does not fit dataset.task"):
        check_family("lightgbm", "binary", {"loss": "huber"})
    with pytest.raises(ConfigError, match="sets the objective twice"):
        lightgbm_params("regression", {"objective": "l1", "loss": "huber"})


def test_the_checks_import_no_model_library() -> None:
    code = (
        "import sys, retrain.models.families, retrain.config; "
        "print(sorted({'lightgbm', 'sklearn', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the registry / config pulled in {out.strip()}: a cached rerun would pay for it"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_record_is_consistent(name: str) -> None:
    family = get_family(name)
    assert family.name == name, f"FAMILIES[{name!r}] holds the record of {family.name!r}"
    assert family.tasks and set(family.tasks) <= set(TASKS), f"{name}: tasks {family.tasks} outside {TASKS}"
    assert len(set(family.tasks)) == len(family.tasks), f"{name}: a task is listed twice"
    assert family.summary, f"{name}: no one-line summary for docs and logs"
    FamilyConfig(space=dict(family.space))  # the default space is a valid `candidates.<name>.space`
    assert name not in CandidatesConfig.model_fields, f"{name} would shadow the setting candidates.{name}"
    if family.meta:
        assert family.build is None and not family.space, f"{name}: a meta family is assembled, not built or searched"
        assert family.format == "stacking" and family.fit_rounds is None, name
        return
    assert family.build is not None, f"{name}: a base family needs a builder"
    assert family.space, f"{name}: a base family needs a default search space"
    if family.format == "skops":
        assert family.trusted_types >= SKOPS_BASE_TRUSTED, f"{name}: skops families trust at least numpy.dtype"
    else:
        assert not family.trusted_types, f"{name}: only skops files have a trusted-types list"
    threads = family.threads
    if threads.param is not None:
        assert threads.param in threads.drop, f"{name}: a thread hyperparameter in `fixed` must not fight the planner"
    assert not (threads.serve_params and family.format != "skops"), f"{name}: serve_params are set on skops models"
    if family.format == "skops" and threads.param is not None:
        assert threads.serve_params.get(threads.param) == 1, f"{name}: served with {threads.param} 1 (the rule)"
    assert family.boosting_rounds == (family.fit_rounds is not None), name
    if family.monotone_tasks is not None:
        assert family.monotone_param and set(family.monotone_tasks) <= set(family.tasks), f"{name}: monotone tasks"


def test_only_lightgbm_has_boosting_rounds_and_only_stacking_is_meta() -> None:
    rounds = sorted(n for n, f in FAMILIES.items() if f.boosting_rounds)
    meta = sorted(n for n, f in FAMILIES.items() if f.meta)
    assert rounds == ["lightgbm"], f"early stopping / round pruning are LightGBM callbacks: {rounds}"
    assert meta == ["stacking"], meta
    monotone = sorted(n for n, f in FAMILIES.items() if f.monotone_param)
    assert monotone == ["hgb", "lightgbm", "random_forest"], f"the linear families cannot be monotone: {monotone}"


def test_only_row_wise_families_serve_batches_on_every_core() -> None:
    parallel = sorted(n for n, f in FAMILIES.items() if f.threads.parallel_batches)
    assert parallel == ["hgb", "lightgbm"], (
        "only estimators that score each row on its own give bit-identical batches on any number of threads "
        f"(a forest's parallel predict and a threaded BLAS product do not): {parallel}"
    )
