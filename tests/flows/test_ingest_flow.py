"""The ingest flow end to end under the session's Prefect test server."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.ingest import ingest_flow
from storage.release.ingest_config import IngestConfig
from storage.store.image import ImageStore
from tests.factories import BAD, bad_release


@pytest.fixture(scope="module")
def flow_store(tmp_path_factory, prefect_server) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("flow")
    release = bad_release(root / "release")
    state = ingest_flow(
        release=str(release),
        store=str(root / "store"),
        ingest=IngestConfig(size=16, shard_items=4),
        return_state=True,
    )
    # Artifact keys repeat across runs on one server: tests look up this run's by its id.
    return root / "store", state.result() | {"flow_run_id": state.state_details.flow_run_id}


def test_flow_ingests_and_quarantines(flow_store):
    store_path, result = flow_store
    store = ImageStore.open(store_path, read_only=True)
    items = store.items()
    assert (items["status"] == "ok").sum() == 6 == result["ingested"]
    # Refused from the tables (conflicting rows, escaping ids) or at decode: one count.
    assert len(store.quarantine()) == len(BAD) + 3 == result["quarantined"]
    assert result["failed_shards"] == 0
    assert store.attrs["ingests"][-1]["ingested"] == 6


def test_flow_publishes_progress_summary_and_quarantine_artifacts(flow_store):
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_store[1]["flow_run_id"]])
            )
        )
    by_key = {a.key: a for a in artifacts}
    assert {"ingest-store-progress", "ingest-store-summary", "ingest-store-quarantine"} <= set(
        by_key
    )
    assert by_key["ingest-store-progress"].type == "progress"
    assert float(by_key["ingest-store-progress"].data) == 100.0
    assert "truncated" in str(by_key["ingest-store-quarantine"].data)
    assert "train" in str(by_key["ingest-store-summary"].data)


def test_rerun_of_the_flow_does_nothing_new(flow_store, prefect_server):
    store_path, _ = flow_store
    release = store_path.parent / "release"
    again = ingest_flow(
        release=str(release), store=str(store_path), ingest=IngestConfig(size=16, shard_items=4)
    )
    assert again["ingested"] == 0 and again["plan"]["to_ingest"] == 0
    assert again["quarantined"] == 0


def test_ingest_in_two_processes_equals_one(tmp_path, synthetic_pair, prefect_server):
    """Shards decoded by spawned worker processes that open the store themselves give the
    same store as the in-process run."""
    config = IngestConfig(size=32, shard_items=4)
    one, two = tmp_path / "one", tmp_path / "two"
    ingest_flow(release=str(synthetic_pair[0]), store=str(one), ingest=config)
    run = ingest_flow(release=str(synthetic_pair[0]), store=str(two), ingest=config, workers=2)
    a, b = ImageStore.open(one), ImageStore.open(two)
    assert run["ingested"] == int(a.done_mask().sum()) > 8
    pd.testing.assert_frame_equal(a.items(), b.items())
    np.testing.assert_array_equal(a.done_mask(), b.done_mask())
    everything = np.arange(len(a))
    np.testing.assert_array_equal(a.read_images(everything), b.read_images(everything))
