"""SIGTERM and SIGINT in a `retrain run` / `retrain stage` process: unwind like Ctrl-C, so every open run is closed.

SIGINT is Python's KeyboardInterrupt already; SIGTERM (what `kill`, systemd, Docker and CI send first) would end
the process on the spot, leaving its MLflow runs RUNNING and `--json` unprinted. Here it raises `Terminated`
(a KeyboardInterrupt) in the main thread instead: each MLflow run is then ended KILLED by the block that opened
it (adapters/mlflow_runs.py), the parent run and the workspace lock by the flow (flows/training.py), Dask
workers by their runner's exit, and the Prefect flow run ends Crashed (Prefect's own handling of an interrupt).

Inside a flow run Prefect installs its own SIGTERM handler (prefect/utilities/engine `capture_sigterm`), which
raises `TerminationSignal`; once the flow has unwound it re-sends SIGTERM to the handler it replaced (this one),
which then sees the stop already under way and lets it finish. A second signal while stopping is logged and
ignored (SIGKILL still ends the process at once). See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)

_STOPPING: list[int] = []
"""The signal this process is stopping on (at most one): later ones are not raised again."""


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception: everything that treats Ctrl-C as "stop now, clean up" treats it the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def stopping(exc: BaseException | None) -> bool:
    """Is `exc` a process being stopped (signal, cancel, exit), as opposed to an error of the code?"""
    return exc is not None and not isinstance(exc, Exception)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Raise the signal as an exception where the main thread is, once; ignore it while already unwinding."""
    name = signal.Signals(signum).name
    if not _STOPPING and stopping(sys.exception()):  # Prefect re-sending the SIGTERM it turned into an exception
        _STOPPING.append(signum)
        logger.debug("%s passed on after the flow run unwound: already stopping", name)
        return
    if _STOPPING:
        logger.warning("%s received while already stopping: still closing runs (SIGKILL ends it at once)", name)
        return
    _STOPPING.append(signum)
    logger.warning("%s received: stopping; open MLflow runs end KILLED, the workspace lock is released", name)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside: SIGTERM raises `Terminated`, SIGINT KeyboardInterrupt (once); previous handlers restored after.

    A signal the parent set to be ignored (a background job's SIGINT) stays ignored; off the main thread (where
    Python cannot set handlers) nothing is installed.
    """
    previous: dict[int, signal.Handlers | object] = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _on_signal)
    except ValueError:  # not the main thread
        logger.debug("signal handlers not installed: not the main thread")
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        _STOPPING.clear()


def signal_of(exc: BaseException) -> int | None:
    """The signal behind a stopping exception: SIGTERM (`Terminated`, Prefect's `TerminationSignal`), SIGINT
    (KeyboardInterrupt); None for anything else."""
    if isinstance(exc, Terminated):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if "prefect.exceptions" not in sys.modules:  # Prefect never started (e.g. preflight failed): not its signal
        return None
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        return exc.signal
    return None
