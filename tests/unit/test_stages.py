"""Given the stage table in code, dvc.yaml must be exactly what it generates."""

from __future__ import annotations

from pathlib import Path

import yaml

from retrain.config import load_params, lookup, params_dict
from retrain.stages import STAGE_NAMES, STAGES, dvc_pipeline, render_path

REPO = Path(__file__).resolve().parents[2]


def test_dvc_yaml_matches_stage_table() -> None:
    on_disk = yaml.safe_load((REPO / "dvc.yaml").read_text())
    values = params_dict(load_params(REPO / "params.yaml"))
    assert on_disk == dvc_pipeline(values), "dvc.yaml is stale: run `make dvc-yaml` (retrain stages --dvc-yaml)"


def test_stage_order_is_the_dag() -> None:
    assert STAGE_NAMES == ("ingest", "version", "validate", "split", "baselines", "candidates", "evaluate", "promote")


def test_every_input_is_produced_upstream_or_is_a_source() -> None:
    produced: set[str] = set()
    for stage in STAGES:
        for dep in stage.deps:
            assert dep.startswith("${") or dep in produced, f"{stage.name} reads {dep} before any stage writes it"
        produced.update(stage.outs)


def test_params_keys_and_code_files_exist() -> None:
    params = load_params(REPO / "params.yaml")
    for stage in STAGES:
        for key in stage.params:
            lookup(params, key)  # raises if the key is not in params.yaml
        for rel in stage.code:
            assert (REPO / rel).is_file(), f"{stage.name}: code file {rel} does not exist"
        assert (REPO / "tasks" / f"{stage.name}.py").is_file(), "one task module per stage, same name"


def test_render_path_fills_and_drops_unset() -> None:
    values = {"ingest": {"source": "a.csv", "test_source": None}}
    assert render_path("${ingest.source}", values) == "a.csv"
    assert render_path("${ingest.test_source}", values) is None
    assert render_path("data/x.parquet", values) == "data/x.parquet"
