"""Progress of a long step (tuning trials, candidates built, gates evaluated), shown where a person looks.

One `Reporter` fans out to three places:

- our logger: the lines a step passes (they also reach the Prefect UI through PREFECT_LOGGING_EXTRA_LOGGERS);
- a rich progress bar on stderr, only when stderr is a terminal (never on stdout: `--json` stays clean; in a
  pipe or a log file the log lines are the whole story);
- a Prefect progress artifact (`artifact_key`, e.g. `retrain-tuning-lightgbm`) when the step runs inside a
  Prefect flow or task run: updated at most once per advance and per `ARTIFACT_MIN_SECONDS`; an API error
  only turns the artifact off, it never fails the run.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

ARTIFACT_MIN_SECONDS = 1.0
"""Least seconds between two updates of a progress artifact (the last one, at finish, always goes)."""

_BAR: dict[str, Any] = {}
"""The one rich Progress shared by every reporter of this process ('progress', 'console', 'active')."""
_BAR_LOCK = threading.Lock()


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from free text: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def _stderr_console() -> Any:
    """A rich Console on stderr when stderr is an interactive terminal, else None (no bar at all)."""
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal and not console.is_dumb_terminal else None


def _in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (where an artifact has a run to belong to)."""
    if "prefect" not in sys.modules:  # never import Prefect just to find out it is not running
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class Reporter:
    """One step's progress (`start`, `advance`, `finish`) to the log, a rich bar on a TTY and a Prefect artifact.

    `console`: a rich Console for the bar (tests pass one writing to a StringIO); default: stderr if a terminal.
    `artifact_key`: the Prefect progress artifact's key; None for no artifact.
    """

    def __init__(
        self, *, console: Any = None, artifact_key: str | None = None, log: logging.Logger | None = None
    ) -> None:
        self.console = console
        self.key = artifact_key
        self.log = log or logger
        self.stage, self.label, self.total, self.done = "", "", 0, 0
        self.started = 0.0
        self._task: Any = None
        self._artifact: Any = None
        self._artifact_at = 0.0
        self._lock = threading.Lock()

    def start(self, stage: str, total: int, label: str) -> None:
        """Begin a step of `total` units: a log line, a bar (on a terminal), an artifact at 0 % (in a Prefect run)."""
        self.stage, self.label, self.total, self.done = stage, label, max(int(total), 0), 0
        self.started = time.perf_counter()
        self.log.info("%s: %s: 0/%d", stage, label, self.total)
        self._bar_start()
        if self.key is not None and _in_prefect_run():
            self._artifact_create()

    def advance(self, step: int = 1, *, done: int | None = None, message: str | None = None) -> None:
        """Count `step` more units (or set `done`); `message` is logged as it is (None: the caller logged already)."""
        with self._lock:
            self.done = done if done is not None else self.done + step
            current = self.done
        if message:
            self.log.info("%s", message)
        self._bar_update(current)
        self._artifact_update(force=False)

    def finish(self, message: str | None = None, *, log: bool = True) -> None:
        """End the step: the bar leaves the screen, the artifact shows where it ended, a closing line with the time.

        `log=False` when the caller's own lines already closed the step (the tuning summary line).
        """
        seconds = time.perf_counter() - self.started
        if log:
            self.log.info(
                "%s: %s: %d/%d in %.1f s%s", self.stage, self.label, self.done, self.total, seconds,
                f" ({message})" if message else "",
            )  # fmt: skip
        self._bar_finish()
        self._artifact_update(force=True)

    # -- the rich bar ---------------------------------------------------------------------------------------

    def _bar_start(self) -> None:
        """Add this step's task to the shared rich Progress (started on the first task)."""
        with _BAR_LOCK:
            if not _BAR:
                console = self.console if self.console is not None else _stderr_console()
                if console is None:
                    return
                _BAR.update(progress=_new_progress(console), active=0)
                _BAR["progress"].start()
            self._task = _BAR["progress"].add_task(f"{self.stage}: {self.label}", total=self.total or None)
            _BAR["active"] += 1

    def _bar_update(self, current: int) -> None:
        """Move this step's bar."""
        if self._task is None:
            return
        with _BAR_LOCK:
            if _BAR:
                _BAR["progress"].update(self._task, completed=current, refresh=True)

    def _bar_finish(self) -> None:
        """Drop this step's bar; the shared Progress stops (and clears its lines) once no step is active."""
        if self._task is None:
            return
        with _BAR_LOCK:
            if _BAR:
                _BAR["progress"].remove_task(self._task)
                _BAR["active"] -= 1
                if _BAR["active"] <= 0:
                    _BAR["progress"].stop()
                    _BAR.clear()
        self._task = None

    # -- the Prefect artifact -------------------------------------------------------------------------------

    def _percent(self) -> float:
        """Progress in percent, for the artifact."""
        return 100.0 if not self.total else min(100.0, 100.0 * self.done / self.total)

    def _description(self) -> str:
        """The artifact's one-line description."""
        return f"{self.stage}: {self.label}: {self.done}/{self.total}"

    def _artifact_create(self) -> None:
        """The progress artifact at 0 %; an API error turns the artifact off with one warning."""
        try:
            from prefect.artifacts import create_progress_artifact

            self._artifact = create_progress_artifact(0.0, key=self.key, description=self._description())
            self._artifact_at = time.perf_counter()
        except Exception as exc:  # progress must never fail the run
            self._artifact_off(exc)

    def _artifact_update(self, *, force: bool) -> None:
        """Update the artifact, at most every ARTIFACT_MIN_SECONDS unless forced."""
        if self._artifact is None:
            return
        now = time.perf_counter()
        if not force and now - self._artifact_at < ARTIFACT_MIN_SECONDS:
            return
        self._artifact_at = now
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._artifact, self._percent(), description=self._description())
        except Exception as exc:  # progress must never fail the run
            self._artifact_off(exc)

    def _artifact_off(self, exc: Exception) -> None:
        """Stop using the artifact after an API error, saying so once."""
        self._artifact = None
        self.log.warning("progress: artifact %s not updated (%s); the run goes on", self.key, exc)


def _new_progress(console: Any) -> Any:
    """The rich Progress layout: description, bar, done/total, elapsed and remaining time (transient)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        refresh_per_second=2,
        redirect_stdout=False,  # stdout carries --json; a bar never touches it
    )
