"""deployment.yaml on a real Prefect server: deploy everything, run deployments on a process
worker, check schedules and the artifacts a data engineer sees, and look at a flow run in the
Prefect UI with headless Chromium (screenshot kept in docs/).

The server runs in its own PREFECT_HOME on a free port, as `make serve` starts it; the test
process talks to it through a client with that API URL (the session's test harness is left
alone).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.synthetic import SynthConfig, write_synthetic_release
from tests.factories import write_random_checkpoints
from tests.loopback import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOYMENTS = yaml.safe_load((ROOT / "deployment.yaml").read_text())["deployments"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    env: dict[str, str]

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "prefect"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def client(self) -> Any:
        return get_client(sync_client=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """`prefect server start` + the daug-process pool + `prefect deploy --all`."""
    root = tmp_path_factory.mktemp("prefect_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{url}/api",
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("RAY_ADDRESS", None)  # workers start their own local Ray
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle = Server(url, env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prefect server did not start in 120 s"
            time.sleep(0.5)
        pool = handle.prefect("work-pool", "create", "daug-process", "--type", "process")
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = handle.prefect(
            "--no-prompt", "deploy", "--prefect-file", "deployment.yaml", "--all"
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        with temporary_settings(updates={PREFECT_API_URL: handle.api}):
            yield handle
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _run_deployment(server: Server, name: str, parameters: dict[str, Any]) -> Any:
    """Create a run of deployment ``name`` and execute it with a one-shot process worker."""
    with server.client() as client:
        deployment = client.read_deployment_by_name(name)
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    worker = server.prefect("worker", "start", "--pool", "daug-process", "--run-once", timeout=600)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    with server.client() as client:
        return client.read_flow_run(run.id)


def test_every_deployment_is_registered_as_written(server):
    with server.client() as client:
        registered = {d.name: d for d in client.read_deployments()}
    assert set(registered) == {d["name"] for d in DEPLOYMENTS}
    for spec in DEPLOYMENTS:
        deployment = registered[spec["name"]]
        assert deployment.entrypoint == spec["entrypoint"]
        assert deployment.work_pool_name == "daug-process"
        assert set(spec["tags"]) <= set(deployment.tags)
        for key, value in spec["parameters"].items():
            assert deployment.parameters[key] == value, (spec["name"], key)


def test_schedules_produce_scheduled_runs(server):
    scheduled = [d["name"] for d in DEPLOYMENTS if d.get("schedules")]
    assert scheduled, "deployment.yaml schedules nothing (reprocess-release should be nightly)"
    deadline = time.monotonic() + 60
    with server.client() as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=scheduled)),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))
                ),
            )
            if {r.deployment_id for r in runs} and len(runs) >= len(scheduled):
                break
            assert time.monotonic() < deadline, f"no scheduled runs for {scheduled}"
            time.sleep(1)
    assert all(r.expected_start_time is not None for r in runs)


@pytest.fixture(scope="module")
def precompute_run(server, tmp_path_factory) -> dict[str, Any]:
    """The ingest and precompute deployments run by a worker on a small synthetic release."""
    root = tmp_path_factory.mktemp("deployed")
    release = write_synthetic_release(root / "synth", SynthConfig(studies=12, size=64), seed=4)
    store = root / "store"
    ingested = _run_deployment(
        server,
        "ingest/ingest-release",
        {
            "release": str(release.release_dir),
            "store": str(store),
            "ingest": {"size": 64, "shard_items": 4, "sharded": False},
        },
    )
    ckpt = write_random_checkpoints(root / "ckpt")
    heatmaps = _run_deployment(
        server,
        "precompute/precompute",
        {
            "store": str(store),
            "checkpoints": str(ckpt),
            "heatmaps": {
                "preset": "tiny",
                "targets": ["+No Finding", "+Pleural"],
                "translation": {"level": 50, "steps": 3, "inversion_refinements": 0},
            },
            "pool": {"actors": 1, "cpus_per_actor": 1.0, "gpus_per_actor": 0.0, "batch_size": 4},
        },
    )
    return {
        "ingest": ingested,
        "precompute": heatmaps,
        "store": store,
        "release": release.release_dir,
        "checkpoints": ckpt,
    }


def test_deployment_runs_complete_on_a_worker_and_write_their_outputs(precompute_run):
    assert precompute_run["ingest"].state.is_completed(), precompute_run["ingest"].state
    assert precompute_run["precompute"].state.is_completed(), precompute_run["precompute"].state
    images = ImageStore.open(precompute_run["store"], read_only=True)
    done = images.done_mask()
    assert done.sum() >= 4
    heat = HeatmapStore(images)
    assert heat.targets == ("+No Finding", "+Pleural")
    np.testing.assert_array_equal(heat.done_mask(), done)
    assert precompute_run["precompute"].name.startswith("precompute-store-v1-")


def test_the_run_shows_progress_summary_failures_and_plot_links(server, precompute_run):
    run = precompute_run["precompute"]
    with server.client() as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    kinds = {(a.type, (a.key or "").rsplit("-", 1)[-1]) for a in artifacts}
    assert ("progress", "progress") in kinds
    assert ("table", "summary") in kinds and ("table", "failures") in kinds
    markdown = [a for a in artifacts if a.type == "markdown"]
    assert markdown and "examples.png" in str(markdown[0].data)
    assert "data:image/jpeg;base64," in str(markdown[0].data)  # the image itself, not a link
    assert "file://" not in str(markdown[0].data)
    progress = next(a for a in artifacts if a.type == "progress")
    assert float(progress.data) == 100.0
    for artifact in artifacts:  # the run's Artifacts tab shows only cards: say what each is
        assert artifact.description, artifact.key
        assert len(str(artifact.data)) < 1_500_000, artifact.key


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)")
def test_flow_run_page_in_a_browser(server, precompute_run, tmp_path):
    """Screenshots go to a temporary folder (a test run leaves the checkout clean);
    DAUG_SCREENSHOT_DIR=docs refreshes the README's."""
    playwright = pytest.importorskip("playwright.sync_api")
    run = precompute_run["precompute"]
    shots = Path(os.environ.get("DAUG_SCREENSHOT_DIR") or tmp_path)
    shot = shots / "precompute-run-artifacts.png"
    shot.parent.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/runs/flow-run/{run.id}", wait_until="networkidle")
            page.get_by_text(run.name).first.wait_for(timeout=30_000)
            page.get_by_text("Artifacts", exact=True).first.click()
            for suffix in ("progress", "summary", "failures", "examples"):
                card = page.get_by_text(f"precompute-store-v1-{suffix}", exact=True)
                card.first.wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
            images = _markdown_images(server, page, run.id, shots)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    assert images, "the run's markdown artifacts show no image"
    broken = {src: width for src, width in images.items() if width <= 0}
    assert not broken, f"images that did not load in the UI: {broken}"


def _markdown_images(server: Server, page: Any, run_id: Any, shots: Path) -> dict[str, int]:
    """naturalWidth of every image of every markdown artifact of the run, as the UI renders
    each artifact's page (0 means the browser could not load it); the examples artifact's
    page is photographed into ``shots``."""
    with server.client() as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    widths: dict[str, int] = {}
    for artifact in (a for a in artifacts if a.type == "markdown"):
        expected = str(artifact.data).count("![")
        page.goto(f"{server.url}/artifacts/artifact/{artifact.id}", wait_until="networkidle")
        page.wait_for_function(
            f"document.querySelectorAll('img[alt]').length >= {expected}", timeout=30_000
        )
        page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=30_000)
        for src, width in page.evaluate(
            "Array.from(document.images).map(i => [i.currentSrc.slice(0, 60), i.naturalWidth])"
        ):
            widths[f"{artifact.key}: {src}"] = int(width)
        if (artifact.key or "").endswith("examples"):
            page.screenshot(path=str(shots / "precompute-examples-artifact.png"))
    return widths


@pytest.fixture(scope="module")
def explain_run(server, precompute_run, tmp_path_factory) -> dict[str, Any]:
    """The index and explain-inbox deployments on the precompute run's store: a contrastive
    model reading its heatmap version (untrained: the answers' plumbing is what is tested),
    indexed, then an inbox of two release files and one that is not an image explained with
    the teacher checkpoints that made the version."""
    from daug_core.checkpoints.contrastive import save_clip_checkpoint
    from daug_core.contrastive.model import build_model
    from daug_core.contrastive.presets import ClipTrainSettings

    root = tmp_path_factory.mktemp("explained")
    store = precompute_run["store"]
    version = HeatmapStore(ImageStore.open(store, read_only=True))
    config = ClipTrainSettings(heatmap_mode="channel").config()
    model = save_clip_checkpoint(
        root / "run" / "best",
        build_model(config, version.targets, seed=0),
        config,
        {"heatmap_version": version.version, "heatmap_provenance": version.provenance.as_dict()},
    )
    indexed = _run_deployment(server, "index/index", {"model": str(model), "store": str(store)})
    inbox = root / "inbox"
    inbox.mkdir()
    items = ImageStore.open(store, read_only=True).items()
    release = precompute_run["release"]
    for dicom_id in items["dicom_id"].iloc[:2]:
        shutil.copy(next(release.rglob(f"{dicom_id}.dcm")), inbox)
    (inbox / "notes.txt").write_text("not an image")
    parameters = {
        "inputs": [str(inbox)],
        "model": str(model),
        "index": str(store),
        "out": str(root / "out"),
        "heatmap_models": str(precompute_run["checkpoints"]),
        "explain": {"neighbours": 3, "overlay_size": 128, "dicom": True},
    }
    explained = _run_deployment(server, "explain/explain-inbox", parameters)
    return {"index": indexed, "explain": explained, "out": root / "out"}


def test_the_explain_deployment_explains_an_inbox_and_shows_its_answers(server, explain_run):
    assert explain_run["index"].state.is_completed(), explain_run["index"].state
    run = explain_run["explain"]
    assert run.state.is_completed(), run.state
    out = explain_run["out"]
    answers = sorted(out.glob("*/explain.json"))
    assert len(answers) == 2 and (out / "index.html").exists()
    assert "unknown_format" in (out / "failures.csv").read_text()
    with server.client() as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    kinds = {(a.type, (a.key or "").rsplit("-", 1)[-1]) for a in artifacts}
    assert {("table", "answers"), ("table", "failures"), ("progress", "progress")} <= kinds
    markdown = next(a for a in artifacts if a.type == "markdown")
    assert "data:image/jpeg;base64," in str(markdown.data)
