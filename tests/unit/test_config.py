"""Given params files, when loaded, then typos and bad values fail at start with the key's path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retrain.config import apply_overrides, load_params, lookup, parse_override
from retrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.dataset.target == "income"
    assert "sex" in params.dataset.categorical and "age" in params.dataset.numeric


def test_typo_fails_with_key_path(tmp_path: Path) -> None:
    data = repo_params()
    data["candidates"]["n_trails"] = 3
    with pytest.raises(ConfigError, match=r"candidates\.n_trails"):
        load_params(write(tmp_path, data))


def test_wrong_type_fails_with_key_path(tmp_path: Path) -> None:
    data = repo_params()
    data["split"]["valid_size"] = "lots"
    with pytest.raises(ConfigError, match=r"split\.valid_size"):
        load_params(write(tmp_path, data))


def test_validate_section_alias_in_error(tmp_path: Path) -> None:
    data = repo_params()
    data["validate"]["min_rowz"] = 1
    with pytest.raises(ConfigError, match=r"validate\.min_rowz"):
        load_params(write(tmp_path, data))


def test_params_are_frozen() -> None:
    params = load_params(REPO / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.seed = 1  # type: ignore[misc]


def test_override_parses_yaml_values() -> None:
    assert parse_override("candidates.n_trials=3") == ("candidates.n_trials", 3)
    assert parse_override("ingest.sample_rows=null") == ("ingest.sample_rows", None)
    assert parse_override("ingest.source=/data/x.csv") == ("ingest.source", "/data/x.csv")


def test_override_applies_and_unknown_key_fails(tmp_path: Path) -> None:
    path = write(tmp_path, repo_params())
    params = load_params(path, ["candidates.n_trials=4", "seed=7"])
    assert (params.candidates.n_trials, params.seed) == (4, 7)
    with pytest.raises(ConfigError, match=r"candidates\.bogus"):
        load_params(path, ["candidates.bogus=1"])


def test_override_without_equals_fails() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["candidates.n_trials"])


def test_lookup_dotted_key() -> None:
    params = load_params(REPO / "params.yaml")
    assert lookup(params, "validate.min_rows") == params.validate_.min_rows
    with pytest.raises(ConfigError):
        lookup(params, "nope.key")


def test_unknown_family_fails_at_load_naming_the_key_and_the_known_families(tmp_path: Path) -> None:
    data = repo_params()
    data["candidates"]["families"] = ["lightgbm", "xgboost"]
    with pytest.raises(ConfigError, match=r"candidates\.families: .*unknown model family 'xgboost'") as raised:
        load_params(write(tmp_path, data))
    assert "known families: hgb, lightgbm, logreg, random_forest, ridge, stacking" in str(raised.value), raised.value


def test_misspelt_family_section_fails_naming_the_key(tmp_path: Path) -> None:
    data = repo_params()
    data["candidates"]["lightgmb"] = {"n_trials": 3}
    with pytest.raises(ConfigError, match=r"candidates\.lightgmb: unknown key") as raised:
        load_params(write(tmp_path, data))
    assert "random_forest" in str(raised.value), f"the error lists the families it could have meant: {raised.value}"
    with pytest.raises(ConfigError, match=r"candidates\.random_forest\.n_trails"):
        load_params(write(tmp_path, repo_params()), ["candidates.random_forest.n_trails=3"])


def test_family_that_does_not_fit_the_task_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"candidates\.families \['ridge'\] do not apply to dataset\.task 'binary'"):
        load_params(write(tmp_path, repo_params()), ["candidates.families=[lightgbm, ridge]"])


def test_family_sections_are_generic_frozen_and_looked_up_by_key(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    candidates = params.candidates
    assert candidates.families == ("lightgbm", "logreg", "stacking"), "the default Adult run keeps its families"
    name = "lightgbm"
    assert candidates.family(name) is candidates.lightgbm is getattr(candidates, name), "one section, three ways"
    assert lookup(params, "candidates.lightgbm.timeout_seconds") == candidates.lightgbm.timeout_seconds == 58
    forest = candidates.family("random_forest")
    assert set(forest.space) == {"n_estimators", "max_depth", "min_samples_leaf", "max_features"}, (
        "a registered family without a section gets its registry defaults"
    )
    assert lookup(params, "candidates.random_forest.space.max_depth.int") is True
    with pytest.raises(Exception, match="frozen"):
        candidates.lightgbm = candidates.hgb  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"candidates\.xgboost: unknown model family"):
        candidates.family("xgboost")
    path = write(tmp_path, repo_params())
    on = load_params(path, ["candidates.families=[lightgbm, random_forest]", "candidates.random_forest.n_trials=3"])
    assert on.candidates.random_forest.n_trials == 3, "--set reaches a section params.yaml does not write"
    assert on.candidates.random_forest.space == forest.space, "a section without `space` keeps the default space"
    empty = load_params(path, ["candidates.random_forest.space={}"]).candidates.random_forest
    assert empty.space == {}, "an explicit empty space means no search (one fit of `fixed`), not the default"


def test_candidates_built_in_code_get_the_same_defaults() -> None:
    from retrain.config import CandidatesConfig, FamilyConfig

    cfg = CandidatesConfig(families=("hgb",), cv_folds=2, n_trials=1, hgb=FamilyConfig(fixed={"max_iter": 5}))
    assert cfg.hgb.fixed == {"max_iter": 5} and cfg.hgb.space, "a section object without space gets the default"
    explicit = CandidatesConfig(families=("hgb",), cv_folds=2, n_trials=1, hgb=FamilyConfig(space={}))
    assert explicit.hgb.space == {}, "an explicit space (even empty) is kept"


def test_every_bad_override_is_named_by_its_option_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides({"seed": 1}, ["candidates.n_trials", "seed.x=2", "split.valid_size=[0.2", "seed=3"])
    lines = str(caught.value).splitlines()
    assert lines[0] == "--set candidates.n_trials: not of the form section.key=value", lines
    assert lines[1].strip() == "--set seed.x=2: seed is a value (1), not a section", lines
    assert lines[2].strip().startswith("--set split.valid_size=[0.2: the value '[0.2' is not valid YAML"), lines
    assert len(lines) == 3, "the good option is applied, not reported"


def test_a_problem_an_override_causes_names_the_option_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, repo_params())
    with pytest.raises(ConfigError) as caught:
        load_params(path, ["evaluate.metric=xx"])
    assert "--set evaluate.metric=xx: evaluate.metric 'xx' does not fit task" in str(caught.value), caught.value
