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
    assert parse_override("ingest.source=/tmp/x.csv") == ("ingest.source", "/tmp/x.csv")


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
