"""The `retrain` command: run the flow, run one stage for dvc, print the stage table, audit history, rollback."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from flows import env, signals
from retrain.errors import RetrainInputError

logger = logging.getLogger("retrain.cli")

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_REJECTED = 0, 1, 2, 3

EPILOG = """\
examples:
  retrain run                                   full flow on params.yaml (Adult by default)
  retrain run --set candidates.n_trials=3       override a params key for this run only
  retrain run --set ingest.sample_rows=2000 --json
  retrain init data/t.csv --target y            profile a table, write params.t.yaml (commented, gated)
  retrain check                                 params + data checked in seconds, every problem at once
  retrain run --dry-run                         every stage and gate; report what promote would do, change nothing
  retrain history                               every alias move of the model (audit log), oldest first
  retrain rollback                              champion back to the previous champion (audited)
  retrain rollback --to 3                       champion to version 3, an earlier champion
  retrain stage split                           one stage on files (what dvc repro calls)
  retrain stages --dvc-yaml > dvc.yaml          regenerate dvc.yaml from the stage table
  retrain data restore adult-income@champion restored/
                                                the champion's training snapshot, from the DVC remote
  retrain serve                                 serve the scheduled + manual deployments (needs PREFECT_API_URL)
  retrain serve-model adult-income@champion --port 5001
                                                the version, hash-checked, on MLflow's scoring protocol (127.0.0.1)

exit codes: 0 completed (promoted or nothing to do; --dry-run: would promote), 3 candidate rejected by a
            gate (--dry-run: would reject; also when champion moved since evaluation and the candidate loses the
            re-comparison with it), 2 invalid input data or config (history/rollback: unknown model, nothing to
            roll back to), 1 anything else, including a promotion refused because the evaluated candidate
            cannot be re-compared (its test split or model changed since evaluate)
"""


def registry_args(parser: argparse.ArgumentParser) -> None:
    """--model and --params: which registered model, and the params file naming it and the tracking URI."""
    parser.add_argument("--model", default=None, help="registered model (default: promote.model_name in params)")
    parser.add_argument("--params", default="params.yaml", help="params file naming the model and tracking URI")


def override_args(parser: argparse.ArgumentParser) -> None:
    """--set SECTION.KEY=VALUE (repeatable), shared by `run` and `check`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a params key (repeatable), like `dvc exp run -S`",
    )


COMPONENTS = ("prefect", "mlflow", "dvc", "great-expectations", "lightgbm", "scikit-learn", "optuna", "pandas")
"""The distributions `retrain --version` names besides its own (what a bug report needs)."""

VERBOSE_HELP = "also show third-party INFO lines, full warnings and Prefect's task-run lines (-vv: DEBUG)"


def version_text() -> str:
    """`retrain --version`: this package's version, Python's and the key components' (from package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    python = ".".join(str(part) for part in sys.version_info[:3])
    parts = ", ".join(f"{dist} {of(dist)}" for dist in COMPONENTS)
    return f"retrain {of('retrain')} (Python {python})\n{parts}\n"


class VersionAction(argparse.Action):
    """`--version` on stdout, exit 0; the versions are read only when asked (metadata lookups cost time)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        sys.stdout.write(version_text())
        parser.exit(EXIT_OK)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """-v/--verbose on every subcommand too (`retrain run -v`), without hiding a top-level `retrain -v run`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                child.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
                add_verbose(child)


def build_parser() -> argparse.ArgumentParser:
    """CLI definition, with worked examples in --help."""
    parser = argparse.ArgumentParser(
        prog="retrain",
        description="Production training pipeline for tabular ML.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction, help="print the versions of retrain and its components")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the full training flow (Prefect)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    override_args(run)
    run.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="run every stage and gate, then report what promote would do without registering or moving aliases",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="run the flow even when nothing changed since the last run (skip the no-op check, engine/noop.py)",
    )
    from flows import init

    init.add_parser(sub)
    check = sub.add_parser(
        "check",
        help="check params and data before a run: every problem at once, with its key path (exit 2)",
        description=(
            "Parses the params (defaults filled in), reads each source's header and first rows, infers the schema "
            "when dataset.columns is null, and checks every column the params name against the data. `retrain run` "
            "and `retrain stage` run the same checks first. Exit 0 all good, 2 problems (all listed)."
        ),
    )
    check.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    override_args(check)
    check.add_argument("--show", action="store_true", help="print the resolved params (defaults filled in) as YAML")
    stage = sub.add_parser("stage", help="run one stage on files (called by dvc.yaml)")
    stage.add_argument("name", help="stage name")
    stage.add_argument("--params", default="params.yaml")
    stages = sub.add_parser("stages", help="print the stage table")
    stages.add_argument("--dvc-yaml", action="store_true", help="print dvc.yaml generated from the table")
    stages.add_argument("--params", default="params.yaml", help="params file whose sources dvc.yaml depends on")
    stages.add_argument("--code", action="store_true", help="also list each stage's derived code files")
    data = sub.add_parser("data", help="data lineage commands")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    restore = data_sub.add_parser(
        "restore",
        help="fetch the snapshot a registered model version was trained on (hash-checked)",
        description=(
            "Reads the version's lineage tags from the MLflow registry, fetches its data snapshot from the "
            "local DVC cache or the DVC remote, checks the md5, and writes DIR/snapshot.parquet and "
            "DIR/lineage.json. Exit 0 restored, 2 unknown model/alias/remote, 1 hash mismatch or other error."
        ),
    )
    restore.add_argument("model", metavar="MODEL@ALIAS|MODEL/VERSION", help="e.g. adult-income@champion, models:/x/3")
    restore.add_argument("dir", metavar="DIR", help="folder to write snapshot.parquet and lineage.json into")
    restore.add_argument("--remote", default=None, help="DVC remote to pull from (default: the one on the version)")
    restore.add_argument("--params", default="params.yaml", help="params file naming the MLflow tracking URI")
    history = sub.add_parser("history", help="the audit log of alias moves (challenger, champion, rollback)")
    registry_args(history)
    history.add_argument("--json", action="store_true", help="print the entries as JSON on stdout")
    history.add_argument(
        "--verify",
        action="store_true",
        help="also download every version in the log and check its artifact against the registry's manifest hash "
        "(exit 2 if any is refused)",
    )
    rollback = sub.add_parser(
        "rollback",
        help="point champion back at the previous champion (audited with trigger rollback)",
        description=(
            "The previous champion is the from-version of the newest audit entry that moved champion to the "
            "current version. Exit 0 moved (or already there), 2 unknown model, version, or nothing to roll back to."
        ),
    )
    registry_args(rollback)
    rollback.add_argument("--to", default=None, metavar="VERSION", help="an explicit earlier champion version")
    rollback.add_argument("--json", action="store_true", help="print the audit entry as JSON on stdout")
    serve = sub.add_parser(
        "serve",
        help="serve the scheduled and manual deployments from this process (Prefect flow.serve)",
        description=(
            "Registers the deployments of prefect.yaml, retrain-scheduled (cron, trigger=schedule) and retrain-manual "
            "(trigger=ui), with the Prefect API in PREFECT_API_URL and runs their flow runs here until Ctrl-C; no work "
            "pool or worker needed. "
            "Start the servers first: `make servers`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`."
        ),
    )
    serve.add_argument("--cron", default=None, help="cron of the scheduled deployment (default: prefect.yaml's)")
    serve.add_argument("--timezone", default=None, help="timezone of the cron (default: prefect.yaml's)")
    serve.add_argument("--no-schedule", action="store_true", help="register the scheduled deployment without a cron")
    serve.add_argument("--only", default=None, help="serve one deployment: retrain-scheduled or retrain-manual")
    serve_model_args(sub)
    add_verbose(parser)
    return parser


def serve_model_args(sub: Any) -> None:
    """`retrain serve-model`: its arguments (the command is cmd_serve_model)."""
    serve_model = sub.add_parser(
        "serve-model",
        help="serve a registered model version over HTTP (MLflow's scoring protocol), after checking its bytes",
        description=(
            "Downloads the version, checks every file against the manifest hash recorded in the registry, loads it "
            "with the installed retrain code (never code from the artifact store) and answers MLflow's scoring "
            "protocol: GET /ping, /health, /version; POST /invocations (dataframe_split, dataframe_records, "
            'instances, inputs, text/csv; "params": {"output": "decision"}). Runs until SIGTERM or Ctrl-C (exit 0). '
            "Exit 2: unknown model, alias or version, or an artifact that does not match the registry (nothing served)."
        ),
    )
    serve_model.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL@ALIAS|MODEL/VERSION",
        help="e.g. adult-income@champion, adult-income/3 (default: promote.model_name@promote.alias in params)",
    )
    serve_model.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1; others warn)")
    serve_model.add_argument("--port", type=int, default=5001, help="port (default 5001; 0: any free port)")
    serve_model.add_argument("--params", default="params.yaml", help="params file naming the MLflow tracking URI")
    serve_model.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the params file's)")
    serve_model.add_argument(
        "--json", action="store_true", help="once listening, print {url, host, port, model_name, version} on stdout"
    )
    serve_model.add_argument(
        "--compiled",
        choices=("background", "wait", "off"),
        default=None,
        help="LightGBM compiled to native code (lleaves, built on this host, cached by model hash): background "
        "(default, or $RETRAIN_COMPILED: serve with the booster until it is ready), wait (before listening), off",
    )


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

NOISY_LOGGERS = ("alembic", "httpx", "urllib3", "great_expectations", "mlflow", "matplotlib", "optuna", "distributed")
"""Third-party loggers held at WARNING unless -v: their INFO lines say nothing a person acts on."""

ALWAYS_QUIET = ("dvc", "mlflow.store")
"""Held at WARNING even with -v: dvc logs INFO lines to stdout, which would corrupt --json."""

QUIET_ENV = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow's own handler: system-metrics monitor lines, "Validating input..."
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # the tqdm "Downloading artifacts" bar (champion, pyfunc)
    "TQDM_DISABLE": "1",  # any tqdm bar left at tqdm's defaults (the validate checkpoint shows no GX bar on Adult)
}
"""Environment set (where the user has not) before MLflow or tqdm is imported, unless -v."""

KEPT_PREFECT = ("prefect", "prefect.flow_runs")
"""Prefect INFO lines the terminal keeps: the temporary server's address, the flow run's start and final state.
Task-run lines ("Finished in state Completed()" after each stage's own line) still reach the Prefect UI."""


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever sys.stderr is at each line: a rich progress bar prints the lines above itself.

    (Its name must not start with "_": Prefect keeps a root handler it takes for the user's own.)
    """

    @property  # type: ignore[override]
    def stream(self) -> Any:
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """Ignored: the stream is always the current sys.stderr."""


class QuietFilter(logging.Filter):
    """Lets through warnings and errors, our own INFO lines and Prefect's flow-run lines; drops other INFO lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        """True to print the record."""
        if record.levelno >= logging.WARNING or record.name in (*KEPT_PREFECT, "root"):
            return True
        return record.name.split(".", 1)[0] in env.OUR_LOGGERS


def configure_logging(verbose: int = 0) -> None:
    """Log lines to stderr (stdout stays clean for --json); third-party noise only with -v, DEBUG with -vv.

    Called before Prefect, MLflow or tqdm is imported: the environment they read at import is set here.
    """
    import warnings

    root = logging.getLogger()
    if not root.handlers:  # else someone configured logging already (pytest, an embedding program)
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if not verbose:
            handler.addFilter(QuietFilter())
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    for name in ALWAYS_QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (UserWarning, FutureWarning, DeprecationWarning):  # library hints; `-v` shows them in full
        warnings.filterwarnings("ignore", category=category)


def exit_code_for(exc: BaseException | None) -> int:
    """2 for bad data or config, 1 for anything else."""
    return EXIT_INPUT if isinstance(exc, RetrainInputError) else EXIT_ERROR


def preflight_or_raise(params_file: str, overrides: list[str]) -> Any:
    """Preflight (retrain/data/preflight.py) before anything heavy: a ConfigError listing every problem (exit 2).

    A tracking database this process cannot write is one of them (adapters/mlflow_errors.py): MLflow would
    otherwise fail at the run's first write with a message naming neither the file nor the cause.
    """
    from adapters.mlflow_errors import registry_problem
    from adapters.mlflow_store import default_tracking_uri
    from retrain.data.preflight import Problem, preflight
    from retrain.errors import ConfigError
    from retrain.paths import project_root, resolve

    root = project_root()
    report = preflight(resolve(root, params_file), root, overrides)
    if report.params is not None:
        problem = registry_problem(report.params.tracking.tracking_uri or default_tracking_uri(root))
        if problem is not None:
            report.problems.append(Problem("tracking.tracking_uri", problem))
    if not report.ok:
        raise ConfigError(report.message(params_file))
    return report


def cmd_init(args: argparse.Namespace) -> int:
    """`retrain init`: profile a table and write a complete, commented params file (flows/init.py)."""
    from flows import init

    return init.cmd_init(args)


def cmd_check(args: argparse.Namespace) -> int:
    """`retrain check`: the preflight alone, with what it read."""
    from retrain.data.preflight import resolved_yaml

    report = preflight_or_raise(args.params, args.overrides)
    for key, seen in report.sources.items():
        logger.info("%s: %s, %d columns, first %d rows read", key, seen["where"], seen["columns"], seen["rows_read"])
    schema = "declared" if report.params.dataset.columns is not None else "inferred at ingest (dataset.columns: null)"
    logger.info("%s: OK (task %s, schema %s)", args.params, report.params.dataset.task, schema)
    if args.show:
        sys.stdout.write(resolved_yaml(report.params))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the Prefect flow and map its outcome to an exit code (128 + signal number when a signal stopped it)."""
    try:
        return _run_flow(args)
    except BaseException as exc:
        signum = signals.signal_of(exc)
        if signum is None:
            raise
        return stopped(args, signum)


def _run_flow(args: argparse.Namespace) -> int:
    """`cmd_run` up to the outcome: the flow's final state as an exit code and the summary."""
    from typing import get_args

    if noop_applies(args):  # before Prefect and MLflow are imported: "nothing changed" in well under a second
        from engine import noop
        from retrain.paths import project_root

        verdict = noop.decide(project_root(), args.params)
        if verdict.unchanged:
            return report_noop(args, verdict)
        logger.info("running the flow: %s", verdict.reason)
    from flows.prefect_server import configured_api, hand_over, start_early, while_booting

    try:
        require_servers(os.environ.get("PREFECT_API_URL"), None)  # a server that is down: stop before anything runs
    except ServerUnreachableError as exc:
        return report_unreachable(args, exc)
    early = start_early()  # Prefect's temporary server starts beside preflight
    try:
        report = preflight_or_raise(args.params, args.overrides)  # before Prefect is imported, every problem at once
        require_servers(None, report.params)  # an http(s) MLflow tracking server
        from flows.outcome import REFUSED
        from flows.training import RunRequest, Trigger, retrain_flow

        while_booting(early, flow_warmup(report.params))
        hand_over(early)
        require_servers(None if os.environ.get("PREFECT_API_URL") else configured_api(), None)  # a profile's API
    except ServerUnreachableError as exc:
        if early is not None:
            early.stop()
        return report_unreachable(args, exc)
    except BaseException:
        if early is not None:
            early.stop()
        raise

    trigger = os.environ.get("RETRAIN_TRIGGER", "cli")
    if trigger not in get_args(Trigger):
        logger.error("RETRAIN_TRIGGER=%r is not a trigger; use one of %s", trigger, ", ".join(get_args(Trigger)))
        return EXIT_INPUT
    request = RunRequest(params_file=args.params, overrides=args.overrides, dry_run=args.dry_run)
    state = retrain_flow(request=request, trigger=trigger, return_state=True)
    if not state.is_completed() and state.name != REFUSED:  # Refused is Failed but carries the run summary
        exc = state.result(raise_on_failure=False)
        error = exc if isinstance(exc, BaseException) else None
        message = failure_message(error, report.params)
        logger.error("run failed: %s", message)
        if args.json:
            _emit({"status": "failed", "error": message, "error_type": type(error).__name__})
        return exit_code_for(error)
    summary: dict[str, Any] = state.result(raise_on_failure=False)
    print_summary(summary)
    if args.json:
        _emit({"status": "completed", **summary})
    return exit_code_for_promotion(summary["promotion"], summary["decision"])


class ServerUnreachableError(RuntimeError):
    """A server the run needs (the Prefect API, the MLflow tracking server) does not answer: nothing ran (exit 1)."""


def require_servers(prefect_api: str | None, params: Any) -> None:
    """Check the configured Prefect API and (with params) an http(s) MLflow tracking server answer; else raise.

    Why before the flow: Prefect's client fails at the flow's first call with a bare "Failed to reach API", and
    MLflow's client retries a down server for about 4 minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES) before failing.
    """
    from flows.prefect_server import PrefectUnreachableError, require_api

    problems = []
    try:
        require_api(prefect_api)
    except PrefectUnreachableError as exc:
        problems.append(str(exc))
    if params is not None and params.tracking.tracking_uri:
        from adapters.mlflow_errors import server_problem

        problem = server_problem(params.tracking.tracking_uri)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise ServerUnreachableError("; and ".join(problems))


def report_unreachable(args: argparse.Namespace, exc: ServerUnreachableError) -> int:
    """A run refused before it started because a server is down: the message, the --json document, exit 1."""
    logger.error("run not started: %s", exc)
    if args.json:
        _emit({"status": "failed", "error": str(exc), "error_type": type(exc).__name__})
    return EXIT_ERROR


def failure_message(error: BaseException | None, params: Any) -> str:
    """The error of a failed run in words: an MLflow tracking server that stopped answering is named as such."""
    from adapters.mlflow_errors import unreachable_server_message

    uri = params.tracking.tracking_uri if params is not None else None
    return (unreachable_server_message(error, uri) if error is not None and uri else None) or str(error)


FLOW_IMPORTS = (
    ("prefect.server.api.server", "adapters.mlflow_runs", "engine.pipeline", "flows.dag", "flows.summary"),
    ("dvc.repo", "great_expectations", "lightgbm", "optuna", "sklearn.linear_model", "retrain.evaluation.diagnostics",
     "skops.io"),
)  # fmt: skip
"""What a run imports: Prefect's server object (the hand-over), the flow's modules (flows/training.py; flows.dag
imports every stage module), then the stages' own lazy imports in stage order."""


def flow_warmup(params: Any) -> list[tuple[str, Callable[[], object]]]:
    """The flow's first work, in its order: imports, the MLflow store opened (a new sqlite file migrated: ~2 s), the
    stages' imports. `retrain run` does it while Prefect's temporary server boots (flows/prefect_server.py)."""
    from adapters.mlflow_store import default_tracking_uri, ready
    from retrain.paths import project_root

    uri = params.tracking.tracking_uri or default_tracking_uri(project_root())
    flow, stages = ([(name, partial(importlib.import_module, name)) for name in group] for group in FLOW_IMPORTS)
    return [*flow, ("mlflow store", partial(ready, uri)), *stages]


def noop_applies(args: argparse.Namespace) -> bool:
    """Whether the no-op check may answer: a plain `retrain run` from the command line (no --force, --set, --dry-run).

    A run with overrides or another params file never records lineage (dvc.lock), so it always runs the flow.
    """
    trigger = os.environ.get("RETRAIN_TRIGGER", "cli")
    return not (args.force or args.overrides or args.dry_run) and trigger == "cli"


def report_noop(args: argparse.Namespace, verdict: Any) -> int:
    """Nothing changed: one line saying what was checked, the --json summary (`noop: true`), exit 0."""
    logger.info(
        "nothing changed, no run started (%.2fs): %s; `retrain run --force` runs the flow anyway",
        verdict.seconds,
        verdict.reason,
    )
    if args.json:
        _emit({"status": "completed", **verdict.summary})
    return EXIT_OK


def stopped(args: argparse.Namespace, signum: int) -> int:
    """A run stopped by a signal: say where, print the --json document (status killed / interrupted), 128 + signum.

    What is known comes from the flow (flows/training.py `STOPPED`): stages finished, the stage it was in, the
    MLflow parent run and Prefect flow run ids; nothing when the signal came before the flow opened its run.
    """
    from flows.training import STOPPED

    name = signal.Signals(signum).name
    known = STOPPED[-1] if STOPPED else {}
    logger.error(
        "run stopped by %s in stage %s: its MLflow runs ended KILLED (parent %s), workspace lock released",
        name,
        known.get("stage") or "-",
        known.get("mlflow_run_id") or "not opened",
    )
    if args.json:
        status = "interrupted" if signum == signal.SIGINT else "killed"
        _emit({"status": status, "signal": name, "exit_code": 128 + signum, **known})
    return 128 + signum


def exit_code_for_promotion(action: str | None, decision: str | None) -> int:
    """3 for a (would-be) gate rejection, also on re-comparison with a moved champion; 1 for a refusal; else 0.

    `refused`: the evaluated candidate could not be re-compared as evaluated (its test split or model changed).
    """
    rejected = ("rejected", "would_reject", "rejected_on_recompare", "would_reject_on_recompare")
    if action in rejected or decision == "reject":
        return EXIT_REJECTED
    if action in ("refused", "would_refuse"):
        return EXIT_ERROR
    return EXIT_OK


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """The human summary at the end of a run: stage, candidate and gate tables and the decision (rich, stderr).

    Tables wrap to the terminal (80 columns when stderr is not a terminal, or $COLUMNS); the one-line facts
    after them (decision, audit entries, links) are never wrapped. `console` is for tests (a StringIO file).
    """
    from rich.console import Console
    from rich.text import Text

    console = console or Console(stderr=True)
    console.print()
    console.print(stage_table(summary))
    console.print(family_table(summary))
    selected = selected_line(summary)
    if selected:
        console.print(Text(selected), soft_wrap=True)
    console.print(gate_table(summary))
    decision = str(summary["decision"])
    console.print(
        Text(
            f"decision: {decision} ({summary['promotion']}); {summary['model_name']} "
            f"challenger = version {summary.get('challenger_version')}, "
            f"champion = version {summary['champion_version']}; data {summary['data_hash']}",
            style=DECISION_STYLES.get(decision, "bold"),
        ),
        soft_wrap=True,
    )
    if summary.get("promotion_message"):
        dry = summary.get("dry_run")
        message = Text(("DRY RUN: " if dry else "") + summary["promotion_message"], style="yellow" if dry else "")
        console.print(message, soft_wrap=True)
    for entry in summary.get("audit", []):
        console.print(Text(f"audit: {entry_line(entry)}"), soft_wrap=True)
    for line in link_lines(summary):
        console.print(Text(line), soft_wrap=True)  # URLs stay whole for copy and paste


STATUS_STYLES = {"pass": "green", "fail": "bold red", "skipped": "dim", "ran": "green", "cached": "cyan"}
"""rich styles of gate statuses (pass / fail / skipped) and stage statuses (ran / cached) in the summary."""
DECISION_STYLES = {"promote": "bold green", "reject": "bold red"}
"""rich styles of the decision line."""


def stage_table(summary: dict[str, Any]) -> Any:
    """A rich Table of the run's stages: name, status, seconds."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title="stages", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for s in summary["stages"]:
        status = str(s["status"])
        table.add_row(Text(str(s["name"])), Text(status, style=STATUS_STYLES.get(status, "")), f"{s['seconds']:.2f}")
    return table


def family_table(summary: dict[str, Any]) -> Any:
    """A rich Table of each candidate's CV and valid score, trials, its verdict against the best baseline, and
    what selection made of it (chosen, passed over and why, not screened)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from flows import outcome  # the same cell texts as the Prefect artifact

    metric = summary.get("metric", "score")
    ranking = {r["family"]: r for r in (summary.get("selection") or {}).get("ranking", [])}
    table = Table(title="candidates", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("family")
    table.add_column(f"cv {metric}", justify="right")
    table.add_column(f"valid {metric}", justify="right")
    table.add_column("trials")
    table.add_column("vs best baseline")
    if ranking:
        table.add_column("selection", overflow="fold")
    for family, v in summary.get("families", {}).items():
        beats = v["beats_baselines"]
        trials = outcome.trials(v)
        verdict = Text(f"{'beats' if beats else 'FAILS TO BEAT'} {v['best_baseline']}", style="" if beats else "red")
        row = [Text(str(family)), _num(v.get("cv_score")), _num(v["valid_score"]), trials, verdict]
        entry = ranking.get(family)
        if entry is not None:  # '#2 tied chosen', '#1 passed over: latency failed (...)' (plain text, never markup)
            status = str(entry.get("status", ""))
            style = "bold" if status == "chosen" else "yellow" if status in ("screened_out", "tied_larger") else ""
            row.append(Text(outcome.selection_status(entry), style=style))
        elif ranking:
            row.append(Text("-"))
        table.add_row(*row)
    return table


def selected_line(summary: dict[str, Any]) -> str | None:
    """The selected family's test score against the champion's, and what was passed over (None before evaluate ran)."""
    metric = summary.get("metric", "score")
    test = summary.get("metrics", {}).get("evaluate", {})
    if not (summary.get("family") and f"test_{metric}" in test):
        return None
    champion = test.get(f"test_{metric}_champion")
    versus = f" (champion {_num(champion)})" if champion is not None else " (no champion yet)"
    line = f"selected {summary['family']}: test {metric} {_num(test[f'test_{metric}'])}{versus}"
    selection = summary.get("selection") or {}
    passed = selection.get("passed_over") or []
    if selection.get("ranking"):
        line += f"; rank {selection.get('chosen_rank')} of {len(selection['ranking'])} on valid"
    if passed:
        line += "; passed over " + ", ".join(f"{p['family']} ({p.get('gate') or 'tied, larger'})" for p in passed)
    if selection.get("all_screened_out"):
        line += "; EVERY candidate failed screening (the top-ranked one was gated)"
    return line


def gate_table(summary: dict[str, Any]) -> Any:
    """A rich Table of the gates: name, status (pass / FAIL / skipped), the one-line reason."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from flows import outcome  # the same cell texts as the Prefect artifact

    table = Table(title="gates", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("gate", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for gate in summary["gates"]:
        status = outcome.gate_status(gate)
        table.add_row(
            Text(str(gate["name"])),
            Text(status.upper(), style=STATUS_STYLES.get(status, "")),
            Text(str(gate["reason"])),
        )
    return table


def _num(value: Any) -> str:
    """A score with 4 decimals, or '-' when there is none."""
    return "-" if value is None else f"{float(value):.4f}"


def link_lines(summary: dict[str, Any]) -> list[str]:
    """Where to look next: the MLflow parent run, the model version and the Prefect flow run, as URLs.

    The MLflow UI is the one the summary names (`tracking.ui_url`, the tracking server, $RETRAIN_MLFLOW_UI_URL or
    the UI `make servers` started: adapters/mlflow_links.py); when none is known the link says how to start one.
    """
    from adapters.mlflow_links import model_version_url, run_url, ui_base

    uri, run_id = summary.get("tracking_uri") or "", summary.get("mlflow_run_id")
    experiment = summary.get("mlflow_experiment_id")
    base, known = summary.get("mlflow_ui_url"), summary.get("mlflow_ui_known")
    if not base:
        base, known = ui_base(uri)
    hint = "" if known else f"  (store {uri}; no MLflow UI known to serve it: make servers)"
    lines = [f"mlflow run:   {run_url(base, str(experiment), str(run_id))}{hint}"] if run_id else []  # a no-op: none
    version = summary.get("model_version")
    if version is not None and summary.get("model_name"):
        lines.append(f"mlflow model: {model_version_url(base, summary['model_name'], version)}")
    flow_run = summary.get("prefect_flow_run_id")
    if flow_run:
        ui_url = _prefect_ui_url()
        where = f"{ui_url}/runs/flow-run/{flow_run}" if ui_url else f"{flow_run}  (ephemeral Prefect API: not kept)"
        lines.append(f"prefect run:  {where}")
    return lines


def _prefect_ui_url() -> str | None:
    """The Prefect UI of the configured API; None when runs go to a throwaway ephemeral API."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    return PREFECT_UI_URL.value() if PREFECT_API_URL.value() else None


def _emit(data: dict[str, Any]) -> None:
    """The --json document on stdout (the CLI's output, not a log line)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def cmd_stage(args: argparse.Namespace) -> int:
    """Run one stage on files; dvc.yaml calls this for each stage."""
    from engine.pipeline import standalone_stage
    from engine.stage import find_stage
    from flows.dag import DAG
    from retrain.catalog import GATE_RECORD
    from retrain.config import load_params
    from retrain.paths import project_root, resolve

    root = project_root()
    stage = find_stage(DAG, args.name)
    preflight_or_raise(args.params, [])
    params = load_params(resolve(root, args.params))
    require_servers(None, params)  # an http(s) tracking server that is down: now, not after MLflow's retries
    trigger = "dvc" if os.environ.get("DVC_STAGE") else os.environ.get("RETRAIN_TRIGGER", "cli")
    outcome = standalone_stage(root, params, DAG, stage, trigger)
    logger.info("stage %s finished in %.2fs", outcome.name, outcome.seconds)
    action = outcome.result.get("info", {}).get("action")
    if action == "rejected":
        logger.error("promote: the candidate failed a gate; champion unchanged (see %s)", GATE_RECORD)
    for entry in outcome.result.get("info", {}).get("audit", []):
        logger.info("audit: %s", entry_line(entry))
    experiment = outcome.result.get("info", {}).get("experiment")
    if experiment:  # `dvc exp run`: a (would-be) rejection is a result to save, not a failed stage
        logger.info("promote: DVC experiment %s: %s (registry untouched); exit 0 so DVC saves it", experiment, action)
        return EXIT_OK
    return exit_code_for_promotion(action, None)


def cmd_stages(args: argparse.Namespace) -> int:
    """Print the stage table (`--code`: each stage's derived code files too), or dvc.yaml generated from it."""
    from flows.dag import DAG, dvc_yaml_text
    from retrain.config import load_params
    from retrain.paths import project_root, resolve

    root = project_root()
    if args.dvc_yaml:
        sys.stdout.write(dvc_yaml_text(root, load_params(resolve(root, args.params))))
        return EXIT_OK
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(file=sys.stdout)  # the command's output (stdout); rich drops colour in a pipe
    table = stages_table(DAG, root, whole_paths=True)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if not console.is_terminal:
        console.width = natural  # a pipe or a file: the table as wide as it is, nothing wrapped or cut
    elif natural > console.width:
        table = stages_table(DAG, root, whole_paths=False)  # a narrow terminal: long paths fold
    console.print(table)
    if args.code:
        for stage in DAG:
            console.print(f"{stage.name} code: {', '.join(stage.code(root))}", soft_wrap=True, highlight=False)
    return EXIT_OK


def params_summary(keys: tuple[str, ...]) -> str:
    """Params keys by section, in order: `ingest, dataset (7 keys), split.time_column, seed` (dvc.yaml has them all)."""
    sections: dict[str, list[str]] = {}
    for key in keys:
        sections.setdefault(key.split(".", 1)[0], []).append(key)
    return ", ".join(found[0] if len(found) == 1 else f"{name} ({len(found)} keys)" for name, found in sections.items())


def stages_table(dag: Any, root: Any, *, whole_paths: bool = True) -> Any:
    """A rich Table of the stage records: cached or not, deps, outs, params keys, hooks, derived code files."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title="stages (flows/dag.py order)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("stage", no_wrap=True, style="bold")
    table.add_column("cached", no_wrap=True)
    longest = max((len(path) for stage in dag for path in (*stage.deps, *stage.outs)), default=10)
    paths = longest if whole_paths else None  # one whole path per line
    table.add_column("deps", overflow="fold", min_width=paths)
    table.add_column("outs", overflow="fold", min_width=paths)
    table.add_column("params")
    table.add_column("hooks")
    table.add_column("code", justify="right", no_wrap=True)
    for stage in dag:
        hooks = [name for name in ("key_inputs", "tags") if getattr(stage, name) is not None]
        cached = Text("yes", style="cyan") if stage.cache else Text("never", style="yellow")
        table.add_row(
            stage.name, cached, *(Text("\n".join(v) or "-") for v in (stage.deps, stage.outs)),
            Text(params_summary(stage.params)), Text(", ".join(hooks) or "-"), f"{len(stage.code(root))} files",
        )  # fmt: skip
    return table


def cmd_data(args: argparse.Namespace) -> int:
    """`retrain data restore`: the training data of a registered model version, verified by its md5."""
    from pathlib import Path

    from adapters.dvc_store import HashMismatchError
    from adapters.lineage import parse_model_ref, restore, summary_lines
    from adapters.mlflow_store import default_tracking_uri
    from retrain.config import load_params
    from retrain.paths import project_root, resolve

    root = project_root()
    ref = parse_model_ref(args.model)
    params = load_params(resolve(root, args.params))
    tracking_uri = params.tracking.tracking_uri or default_tracking_uri(root)
    dest = Path(args.dir).resolve()
    try:
        lineage = restore(root, tracking_uri, ref, dest, args.remote)
    except HashMismatchError as exc:
        logger.error("%s: %s", ref, exc)
        return EXIT_ERROR
    sys.stdout.write("\n".join(summary_lines(lineage, dest)) + "\n")
    return EXIT_OK


def entry_line(entry: dict[str, Any]) -> str:
    """One audit entry as a history table row."""
    failed = ",".join(entry.get("failed_gates") or []) or "-"
    moved = f"{entry.get('from_version') or '-'} -> {entry.get('to_version')}"
    return (
        f"{entry.get('time', '')[:19]:<20}{entry['alias']:<12}{moved:<10}{entry.get('trigger') or '-':<10}"
        f"{entry.get('decision') or '-':<9}{failed:<16}{entry.get('gate_record') or '-'}"
    )


def _registry_args(args: argparse.Namespace) -> tuple[Any, str, str, str]:
    """Project root, tracking URI, model name and alias for history/rollback."""
    from adapters.mlflow_store import default_tracking_uri
    from retrain.config import load_params
    from retrain.paths import project_root, resolve

    root = project_root()
    params = load_params(resolve(root, args.params))
    uri = params.tracking.tracking_uri or default_tracking_uri(root)
    return root, uri, args.model or params.promote.model_name, params.promote.alias


def cmd_history(args: argparse.Namespace) -> int:
    """`retrain history`: every audited alias move of a registered model, oldest first (stdout)."""
    from mlflow.tracking import MlflowClient

    from adapters import mlflow_audit as audit
    from adapters import mlflow_registry as registry

    _, uri, model, _ = _registry_args(args)
    registry.require_model(MlflowClient(uri), model)
    entries = audit.entries(uri, model)
    checked = verify_history(uri, model, entries) if args.verify else None
    code = EXIT_INPUT if checked and any(v != "ok" for v in checked.values()) else EXIT_OK
    if args.json:
        _emit({"model_name": model, "entries": entries} | ({"integrity": checked} if checked is not None else {}))
        return code
    header = f"{'time (UTC)':<20}{'alias':<12}{'from->to':<10}{'trigger':<10}{'decision':<9}{'failed':<16}gate record"
    rows = [entry_line(e) for e in entries] or ["(no alias moves recorded)"]
    if checked is not None:
        rows += ["", "artifact integrity (manifest vs registry):"]
        rows += [f"  version {v:<6}{result}" for v, result in checked.items()]
    sys.stdout.write("\n".join([f"{model}: {len(entries)} audit entries", header, *rows]) + "\n")
    return code


def verify_history(uri: str, model: str, entries: list[dict[str, Any]]) -> dict[str, str]:
    """`history --verify`: every version the log names, checked like a model load (adapters/model_store.py)."""
    from adapters.model_store import integrity

    named = {str(v) for e in entries for v in (e.get("from_version"), e.get("to_version")) if v}
    return integrity(uri, model, sorted(named, key=int))


def cmd_rollback(args: argparse.Namespace) -> int:
    """`retrain rollback`: champion back to the previous (or --to) champion, under the registry lock, audited."""
    from adapters import mlflow_registry as registry
    from retrain.config import load_params
    from retrain.paths import resolve

    root, uri, model, alias = _registry_args(args)
    promote = load_params(resolve(root, args.params)).promote  # its registry lock: the one promote takes
    result = registry.rollback(root, uri, model, alias, args.to, promote.lock, promote.lock_timeout)
    if args.json:
        _emit(result)
    elif result["entry"] is None:
        sys.stdout.write(f"{model}@{alias} is already version {result['to_version']}; nothing changed\n")
    else:
        sys.stdout.write(f"{model}@{alias}: {result['from_version']} -> {result['to_version']}\n")
        sys.stdout.write(f"audit: {entry_line(result['entry'])}\n")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """`retrain serve`: prefect.yaml's deployments (flows/deploy.py), served from this process until interrupted."""
    from flows import deploy
    from flows.prefect_server import configured_api

    require_servers(configured_api(), None)  # a server that is down: say so, not Prefect's traceback
    deploy.serve(cron=args.cron, timezone=args.timezone, only=args.only, schedule=not args.no_schedule)
    return EXIT_OK


def cmd_serve_model(args: argparse.Namespace) -> int:
    """`retrain serve-model`: a registered version, verified against the registry, on MLflow's scoring protocol.

    The model is loaded only through `adapters.model_store` (bytes checked first, retrain's own loader); the server
    is `retrain.serving.http` (stdlib, no MLflow per request).
    """
    import ipaddress
    from importlib.metadata import version as pkg_version

    from adapters import model_store
    from adapters.lineage import ModelRef, parse_model_ref
    from retrain.serving import http
    from retrain.serving.compiled import compile_mode

    compiled = compile_mode(args.compiled)  # an unknown $RETRAIN_COMPILED fails before the download (exit 2)
    ref = parse_model_ref(args.model) if args.model else None
    uri = args.tracking_uri
    if ref is None or uri is None:
        from adapters.mlflow_store import default_tracking_uri
        from retrain.config import load_params
        from retrain.paths import project_root, resolve

        root = project_root()
        params = load_params(resolve(root, args.params))
        ref = ref or ModelRef(params.promote.model_name, alias=params.promote.alias)
        uri = uri or params.tracking.tracking_uri or default_tracking_uri(root)
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        logger.warning("serve-model: binding %s, not loopback: the server has no authentication and no TLS", args.host)
    which = ref.alias or str(ref.version)
    try:
        with http.interrupt_on_signals(), model_store.verified_version(uri, ref.name, which) as v:
            model = model_store.load_verified_predictor(v, compiled=compiled)
            app = http.ScoringApp(model, numeric=http.numeric_columns(v.model_dir), version=pkg_version("mlflow"))

            def ready(server: http.ScoringServer) -> None:
                logger.info(
                    "serving %s version %s (%s) at %s: POST /invocations, GET /ping /health /version; Ctrl-C stops",
                    v.model_name, v.version, ref, server.url,
                )  # fmt: skip
                if args.json:
                    host, port = server.server_address[:2]
                    info = {"url": server.url, "host": host, "port": port, "model_name": v.model_name}
                    sys.stdout.write(json.dumps({**info, "version": v.version}) + "\n")
                    sys.stdout.flush()

            http.serve(app, args.host, args.port, ready)
    except http.Stopped as exc:
        logger.info("serve-model: %s before the server listened; nothing was served", exc)
    except http.BindError as exc:
        logger.error("serve-model: %s", exc)
        return EXIT_ERROR
    return EXIT_OK


STOPPABLE = ("run", "stage")
"""Commands whose SIGTERM/SIGINT unwinds and closes runs (flows/signals.py); `serve` keeps Prefect's runner handling."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `retrain` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    env.apply()
    # MLflow prints "View run ... at <url>" to stdout for http tracking URIs: it would break `--json`
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Prefect 3.9's client telemetry: a first-run notice on the terminal and calls to a host this setup never
    # reaches (the server's analytics are off in flows/env.py for the same reason)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    handlers = {
        "run": cmd_run,
        "check": cmd_check,
        "init": cmd_init,
        "stage": cmd_stage,
        "stages": cmd_stages,
        "data": cmd_data,
        "history": cmd_history,
        "rollback": cmd_rollback,
        "serve": cmd_serve,
        "serve-model": cmd_serve_model,
    }
    try:
        if args.command not in STOPPABLE:
            return handlers[args.command](args)
        with signals.stop_on_signals():  # SIGTERM unwinds like Ctrl-C: runs end KILLED, the lock is released
            return handlers[args.command](args)
    except KeyboardInterrupt as exc:  # `retrain stage` (`retrain run` prints its own summary in `stopped`)
        if args.command not in STOPPABLE:
            raise
        signum = signals.signal_of(exc) or signal.SIGINT
        logger.error("stopped by %s: open MLflow runs ended KILLED", signal.Signals(signum).name)
        return 128 + signum
    except RetrainInputError as exc:
        logger.error("%s", exc)
        return EXIT_INPUT
    except ServerUnreachableError as exc:  # `serve`, `stage` (`run` reports its own: report_unreachable)
        logger.error("%s", exc)
        return EXIT_ERROR
    except KeyError as exc:
        logger.error("%s", exc.args[0] if exc.args else exc)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
