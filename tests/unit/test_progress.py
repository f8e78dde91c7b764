"""A long step's progress reaches the log, a rich bar on a terminal (never elsewhere) and a Prefect artifact."""

from __future__ import annotations

import io
import logging
import uuid

import pytest
from rich.console import Console

from engine import progress as progress_module
from engine.progress import Reporter, artifact_key
from flows.cli import QuietFilter


def terminal() -> tuple[Console, io.StringIO]:
    """A rich Console that believes it is a terminal, writing into a StringIO."""
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100, color_system=None), out


def test_bar_and_log_lines_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    console, out = terminal()
    reporter = Reporter(console=console)
    with caplog.at_level(logging.INFO, logger="engine.progress"):
        reporter.start("candidates", 5, "tuning lightgbm")
        for _ in range(3):
            reporter.advance()
        reporter.advance(message="lightgbm: a line the caller wants logged")
        reporter.finish("best CV roc_auc 0.93")
    text = out.getvalue()
    assert "candidates: tuning lightgbm" in text, f"the bar names the step:\n{text!r}"
    assert "3/5" in text or "4/5" in text, f"the bar counts done/total:\n{text!r}"
    assert progress_module._BAR == {}, "the shared bar stops once no step is active"
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "candidates: tuning lightgbm: 0/5", lines
    assert "lightgbm: a line the caller wants logged" in lines, "advance(message=...) is logged as it is"
    assert lines[-1].startswith("candidates: tuning lightgbm: 4/5 in ") and "(best CV roc_auc 0.93)" in lines[-1], lines
    assert len(lines) == 3, f"advance without a message adds no log line: {lines}"


def test_no_bar_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter()  # pytest's captured stderr is not a terminal
    reporter.start("evaluate", 2, "gates")
    assert reporter._task is None and progress_module._BAR == {}, "no rich Progress off a terminal"
    reporter.advance(done=2)
    reporter.finish(log=False)
    captured = capsys.readouterr()
    assert captured.out == "", f"nothing on stdout (--json stays clean): {captured.out!r}"


def test_artifact_key_is_what_prefect_accepts() -> None:
    assert artifact_key("retrain-tuning", "LightGBM_dart") == "retrain-tuning-lightgbm-dart"


def test_quiet_filter_keeps_ours_and_the_flow_run_lines() -> None:
    quiet = QuietFilter()

    def shown(name: str, level: int = logging.INFO) -> bool:
        return quiet.filter(logging.LogRecord(name, level, __file__, 1, "m", None, None))

    assert shown("tasks.evaluate") and shown("retrain.models.tuning") and shown("engine.progress")
    assert shown("prefect.flow_runs"), "the flow run's start and final state stay"
    assert not shown("prefect.task_runs"), "'Finished in state Completed()' after each stage line is noise"
    assert not shown("great_expectations.data_context.types.base") and not shown("mlflow.system_metrics")
    assert shown("py.warnings", logging.WARNING) and shown("prefect.task_runs", logging.ERROR), "problems always show"


def test_progress_artifact_inside_a_flow_run(prefect_backend: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.context import get_run_context

    monkeypatch.setattr(progress_module, "ARTIFACT_MIN_SECONDS", 0.0)
    key = artifact_key("retrain-tuning", "test", uuid.uuid4().hex[:8])

    @flow
    def tuning() -> str:
        reporter = Reporter(artifact_key=key)
        reporter.start("candidates", 4, "tuning test")
        reporter.advance(2)
        assert reporter._artifact is not None, "the artifact exists while the step runs"
        reporter.advance(2)
        reporter.finish()
        return str(get_run_context().flow_run.id)

    flow_run_id = tuning()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert len(found) == 1, f"one progress artifact, updated in place: {found}"
    artifact = found[0]
    assert artifact.type == "progress" and float(artifact.data) == 100.0, (artifact.type, artifact.data)
    assert str(artifact.flow_run_id) == flow_run_id, "the artifact belongs to the flow run"
    assert artifact.description == "candidates: tuning test: 4/4", artifact.description


def test_an_artifact_error_never_fails_the_step(prefect_backend: None, caplog: pytest.LogCaptureFixture) -> None:
    from prefect import flow

    @flow
    def tuning() -> int:
        reporter = Reporter(artifact_key="Not A Valid Key!")  # Prefect rejects it: the step must go on
        reporter.start("candidates", 1, "tuning test")
        reporter.advance()
        reporter.finish()
        return reporter.done

    with caplog.at_level(logging.WARNING, logger="engine.progress"):
        assert tuning() == 1
    assert any("not updated" in r.getMessage() for r in caplog.records), "the failed artifact is named once"


def test_no_artifact_outside_a_prefect_run() -> None:
    reporter = Reporter(artifact_key="retrain-tuning-x")
    reporter.start("candidates", 1, "tuning x")
    assert reporter._artifact is None, "outside a flow or task run there is no run to attach an artifact to"
    reporter.finish(log=False)
