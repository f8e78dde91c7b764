"""What the Prefect UI shows of a run: a final state named after the decision, and the `retrain-outcome` artifact.

State names (docs/operations.md "What the Prefect UI shows"): Completed `Promoted`, `Kept`, `Rejected` (also a
candidate that lost the re-comparison with a champion that moved since evaluation), `DryRun`; Failed `Refused`
(champion moved and the evaluated candidate could not be re-compared: its test split or model changed). The
state's data is always the run summary (flows/summary.py).
The artifact is Markdown rendered from a Jinja2 template: candidates, every gate, the decision and MLflow links.
"""

from __future__ import annotations

import functools
import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.mlflow_links import artifact_url, model_version_url, run_url, ui_base

if TYPE_CHECKING:
    import jinja2
    from prefect.states import State

    from engine.pipeline import PipelineRun

logger = logging.getLogger(__name__)

ARTIFACT_KEY = "retrain-outcome"
"""The Markdown artifact's key (Prefect: lowercase letters, digits, dashes): one version per flow run."""
MODEL_CARD = "model_card.html"
"""The model card's artifact path in the promote (and evaluate) stage run (tasks/promote.py log_record)."""

PROMOTED, KEPT, REJECTED, REFUSED, DRY_RUN = "Promoted", "Kept", "Rejected", "Refused", "DryRun"
UNCHANGED = "Unchanged"
"""A scheduled run that found nothing changed (engine/noop.py): no stage ran, no MLflow run was opened."""
STATE_NAMES: dict[str, str] = {
    "unchanged": UNCHANGED,
    "promoted": PROMOTED,
    "already_champion": KEPT,
    "rejected": REJECTED,
    "rejected_on_recompare": REJECTED,
    "refused": REFUSED,
    "would_promote": DRY_RUN,
    "would_keep": DRY_RUN,
    "would_reject": DRY_RUN,
    "would_refuse": DRY_RUN,
    "would_reject_on_recompare": DRY_RUN,
}
"""promote's action -> the final state's name. Refused is a Failed state (exit 1, red in the UI), the rest Completed."""


@dataclass(frozen=True)
class Link:
    """One place to look next, as the artifact and the log lines show it."""

    label: str
    url: str


def state_name(summary: Mapping[str, Any]) -> str:
    """The final state's name: from promote's action, else from the decision (a rejection is never `Completed`)."""
    action = summary.get("promotion")
    if summary.get("dry_run"):
        return DRY_RUN
    if action in STATE_NAMES:
        return STATE_NAMES[str(action)]
    return REJECTED if summary.get("decision") == "reject" else "Completed"


def state_message(summary: Mapping[str, Any]) -> str:
    """One line for the state: decision and failed gates, what happened to the versions, the candidate's score."""
    model, action = summary.get("model_name"), summary.get("promotion")
    champion, version = summary.get("champion_version"), summary.get("model_version")
    failed = list(summary.get("failed_gates") or [])
    gates = f"failed {', '.join(failed)}" if failed else "every gate passed"
    if summary.get("dry_run"):
        what = f"dry run, nothing changed: {summary.get('promotion_message') or action}"
    elif action == "promoted":
        before = next((e.get("from_version") for e in summary.get("audit") or [] if e.get("alias") == "champion"), None)
        what = f"{model} version {version} is champion now (was {before})"
    elif action == "already_champion":
        what = f"{model} version {version} is already champion: nothing moved"
    elif action == "unchanged":
        what = f"nothing changed since the last run, no stage ran: {model} version {champion} stays champion"
    elif action == "rejected_on_recompare":
        what = (
            f"champion moved since evaluation to version {champion} and the candidate lost the re-comparison "
            f"with it; nothing registered, champion stays version {champion}: {summary.get('promotion_message')}"
        )
    elif action == "refused":
        what = (
            f"refused: champion moved since evaluation (now version {champion}) and the candidate could not be "
            f"re-compared: {summary.get('promotion_message')}"
        )
    else:
        what = f"{model} champion stays version {champion}"
    line = f"decision {summary.get('decision')} ({gates}); {what}"
    metric, family = summary.get("metric"), summary.get("family")
    test = (summary.get("metrics") or {}).get("evaluate", {}).get(f"test_{metric}")
    if family and test is not None:
        line += f"; {family} test {metric} {fmt(test)}"
    return " ".join(line.split())  # one line, whatever a message carried


def final_state(summary: dict[str, Any]) -> State:
    """The state the flow returns: named after the decision, the summary as its data (`state.result()`)."""
    from prefect.states import Completed, Failed

    name = state_name(summary)
    make = Failed if name == REFUSED else Completed
    return make(name=name, message=state_message(summary), data=summary)


def mlflow_links(
    summary: Mapping[str, Any], stage_runs: Mapping[str, str | None], ui_url: str | None, root: Path | None
) -> tuple[list[Link], str | None]:
    """Links to the parent run, the model version(s) and the model card; and a note when the UI is not known to run."""
    uri = str(summary.get("tracking_uri") or "")
    experiment, parent = summary.get("mlflow_experiment_id"), summary.get("mlflow_run_id")
    base, known = summary.get("mlflow_ui_url"), bool(summary.get("mlflow_ui_known"))
    if not base:  # a summary from before flows/summary.py named the UI
        base, known = ui_base(uri, ui_url, root)
    links: list[Link] = []
    if experiment and parent:
        links.append(Link("MLflow parent run", run_url(base, str(experiment), str(parent))))
    model = summary.get("model_name")
    version, champion = summary.get("model_version"), summary.get("champion_version")
    challenger = summary.get("challenger_version")
    if model and version is not None:
        links.append(Link("model version", model_version_url(base, str(model), version)))
    if model and champion is not None and champion != version:
        links.append(Link("champion (unchanged)", model_version_url(base, str(model), champion)))
    if model and summary.get("promotion") == "refused" and challenger not in (None, version, champion):
        links.append(Link("challenger", model_version_url(base, str(model), challenger)))
    card_run = stage_runs.get("promote") or stage_runs.get("evaluate")
    if experiment and card_run:
        links.append(Link("model card", artifact_url(base, str(experiment), card_run, MODEL_CARD)))
    note = None if known else f"no MLflow UI is known to serve {uri} at {base}: start one with `make servers`"
    return links, note


def render_report(
    summary: Mapping[str, Any], links: Sequence[Link], note: str | None = None, error: BaseException | None = None
) -> str:
    """The artifact's Markdown: headline, candidates, gates, decision and links (or, on failure, what is known)."""
    metric = str(summary.get("metric") or "score")
    ranking = {r.get("family"): r for r in (summary.get("selection") or {}).get("ranking", [])}
    candidates = [
        {
            "family": family,
            "cv": entry.get("cv_score"),
            "valid": entry.get("valid_score"),
            "trials": trials(entry),
            "baseline": versus_baseline(entry),
            "selection": selection_status(ranking.get(family)),
        }
        for family, entry in (summary.get("families") or {}).items()
    ]
    gates = [{**gate, "status": gate_status(gate)} for gate in summary.get("gates") or []]
    stages = summary.get("stages") or []
    return _template().render(
        title=state_name(summary) if error is None else "Failed",
        message=state_message(summary) if error is None else "The run stopped on an error; below is what it got to.",
        summary=summary,
        metric=metric,
        candidates=candidates,
        gates=gates,
        links=links,
        stages=", ".join(f"{s.get('name')} {s.get('status')} {fmt(s.get('seconds'))}s" for s in stages) or "none",
        note=note,
        error=None if error is None else f"{type(error).__name__}: {error}",
    )


def publish(run: PipelineRun, summary: dict[str, Any], error: BaseException | None = None) -> None:
    """Log the links (INFO lines reach the Prefect UI) and create the `retrain-outcome` artifact; never raises.

    Without a flow run (a pipeline run outside Prefect) only the log lines are written.
    """
    try:
        stage_runs = {s.name: s.result.get("mlflow_run_id") for s in run.stages}
        links, note = mlflow_links(summary, stage_runs, run.params.tracking.ui_url, run.root)
        for link in links:
            logger.info("%s: %s", link.label, link.url)
        if note:
            logger.info("%s", note)
        markdown = render_report(summary, links, note, error)
        if summary.get("prefect_flow_run_id"):
            from prefect.artifacts import create_markdown_artifact

            what = "failed run" if error is not None else state_name(summary)
            create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=f"retrain outcome: {what}")
    except Exception:  # the report must neither fail a finished run nor mask the error of a failed one
        logger.warning("the run's outcome artifact could not be written", exc_info=True)


def publish_unchanged(summary: dict[str, Any], checked: str) -> State:
    """A recorded no-op: the `retrain-outcome` artifact (the last run's gates, what was checked) and state Unchanged.

    No MLflow access: the links come from the summary the last run recorded. Never raises over the state.
    """
    try:
        from prefect.artifacts import create_markdown_artifact

        links, note = mlflow_links(summary, {}, None, None)
        markdown = render_report(summary, links, note) + f"\n\nNo stage ran. Checked: {checked}.\n"
        create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=f"retrain outcome: {UNCHANGED}")
    except Exception:
        logger.warning("the no-op's outcome artifact could not be written", exc_info=True)
    return final_state(summary)


def publish_failure(run: PipelineRun, error: Exception) -> None:
    """The artifact of a failed run: what is known (stages so far, gates if evaluate ran, links); never raises."""
    from flows.summary import run_summary  # engine.pipeline and MLflow: not for a no-op (publish_unchanged)

    try:
        summary = run_summary(run)
    except Exception:
        logger.warning("no summary of the failed run for its outcome artifact", exc_info=True)
        return
    publish(run, summary, error)


# --- formatting helpers for the template ---


def fmt(value: Any) -> str:
    """A number compactly (4 significant digits), '-' for none; anything else as text."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cell(value: Any) -> str:
    """A Markdown table cell: HTML escaped, pipes escaped, on one line (a reason never breaks the table)."""
    text = html.escape(fmt(value), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.split()) or " "


def url(value: str) -> str:
    """A URL safe inside a Markdown link: no spaces, parentheses or angle brackets left raw."""
    table = {" ": "%20", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E"}
    return "".join(table.get(ch, ch) for ch in value)


def gate_status(gate: Mapping[str, Any]) -> str:
    """pass, fail or skipped (a record without `status` has `skipped` and `passed`)."""
    if gate.get("status"):
        return str(gate["status"])
    return "skipped" if gate.get("skipped") else "pass" if gate.get("passed") else "fail"


def trials(entry: Mapping[str, Any]) -> str:
    """`20 (3 pruned)`, or '-' for a family without tuning."""
    if not entry.get("n_trials"):
        return "-"
    return f"{entry['n_trials']} ({entry.get('n_pruned') or 0} pruned)"


def versus_baseline(entry: Mapping[str, Any]) -> str:
    """`beats heuristic (0.78)` or `FAILS TO BEAT ...` (on the valid split)."""
    best = entry.get("best_baseline")
    if best is None:
        return "no baseline"
    verdict = "beats" if entry.get("beats_baselines") else "FAILS TO BEAT"
    return f"{verdict} {best} ({fmt(entry.get('best_baseline_score'))})"


def selection_status(entry: Mapping[str, Any] | None) -> str:
    """`#1 chosen`, `#2 passed over: latency failed (...)`, or '-' when selection did not rank it."""
    if entry is None:
        return "-"
    tied = " tied" if entry.get("tied") else ""
    return f"#{entry.get('rank')}{tied} {entry.get('short') or entry.get('status') or ''}".strip()


STATUS_MARKS = {"pass": "✅ pass", "fail": "❌ **FAIL**", "skipped": "⏭️ skipped"}

TEMPLATE = """\
## {{ title }}: {{ summary.model_name | cell }}

{{ message | cell }}
{% if error %}

**The run failed:** {{ error | cell }}
{% endif %}
{% if summary.dry_run %}

**Dry run:** nothing was registered and no alias moved.
{% endif %}

### Candidates

{% if candidates %}
| family | cv {{ metric | cell }} | valid {{ metric | cell }} | trials | vs best baseline | selection |
|---|---:|---:|---|---|---|
{% for c in candidates %}
| {{ c.family | cell }} | {{ c.cv | cell }} | {{ c.valid | cell }} | {{ c.trials | cell }} \
| {{ c.baseline | cell }} | {{ c.selection | cell }} |
{% endfor %}
{% else %}
No candidates trained in this run.
{% endif %}

### Gates

{% if gates %}
| gate | status | value | threshold | reason |
|---|---|---:|---:|---|
{% for g in gates %}
| {{ g.name | cell }} | {{ marks[g.status] | default(g.status) }} | {{ g.value | cell }} | {{ g.threshold | cell }} \
| {{ g.reason | cell }} |
{% endfor %}
{% else %}
No gate ran in this run.
{% endif %}

### Decision

- decision: **{{ summary.decision | cell }}**\
{% if summary.failed_gates %} (failed: {{ summary.failed_gates | join(', ') | cell }}){% endif %}

- promotion: **{{ summary.promotion | cell }}**\
{% if summary.promotion_message %}: {{ summary.promotion_message | cell }}{% endif %}

- {{ summary.model_name | cell }}: champion = version {{ summary.champion_version | cell }}, \
challenger = version {{ summary.challenger_version | cell }}, this run's version = {{ summary.model_version | cell }}
{% if summary.family %}
- selected family: {{ summary.family | cell }}
{% endif %}
{% for entry in summary.audit or [] %}
- audit: {{ entry.alias | cell }} {{ entry.from_version | cell }} → {{ entry.to_version | cell }}
{% endfor %}
- data: `{{ summary.data_hash | cell }}`
- stages: {{ stages | cell }}

### Links

{% for link in links %}
- {{ link.label | cell }}: [{{ link.url | cell | replace('[', '%5B') | replace(']', '%5D') }}]({{ link.url | url }})
{% else %}
- no MLflow run was opened
{% endfor %}
{% if note %}

_{{ note | cell }}_
{% endif %}
"""
"""The report's Markdown (Jinja2; a key a partial summary lacks renders empty; text is interpolated through `cell`)."""


@functools.cache
def _template() -> jinja2.Template:
    """The compiled report template (Jinja2 imported at first use)."""
    import jinja2

    env = jinja2.Environment(
        autoescape=False,  # Markdown, not HTML: the `cell` filter escapes HTML and pipes where text is interpolated
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(cell=cell, url=url)
    env.globals["marks"] = STATUS_MARKS
    return env.from_string(TEMPLATE)
