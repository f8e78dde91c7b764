"""What a flow run left in the Prefect API (read back through the Prefect client): its state history and artifact."""

from __future__ import annotations

from uuid import UUID

from flows.outcome import ARTIFACT_KEY


def state_history(flow_run_id: str) -> list[tuple[str, str, str]]:
    """The flow run's states, oldest first, as (type, name, message)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(UUID(flow_run_id))
    return [(s.type.value, s.name or "", s.message or "") for s in sorted(states, key=lambda s: s.timestamp)]


def outcome_markdown(flow_run_id: str) -> str:
    """The Markdown of the flow run's `retrain-outcome` artifact (exactly one per run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    query = ArtifactFilter(
        key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
    )
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=query)
    assert len(artifacts) == 1, f"flow run {flow_run_id} has {len(artifacts)} {ARTIFACT_KEY} artifacts"
    [artifact] = artifacts
    assert artifact.type == "markdown", artifact.type
    return str(artifact.data)
