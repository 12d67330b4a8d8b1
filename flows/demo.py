"""Demo flow: the whole pipeline end to end on a synthetic release (tiny presets).

synthesise -> ingest (64 px) -> train the generator and classifier (or start from the shipped
checkpoints when the store is the one they were trained on) -> ``+No Finding`` heatmaps for
every image on Ray actors -> heatmap quality on the held-out images (softmax vs sigmoid and a
sweep) -> the ablation grid of the contrastive model -> an evaluation with plots.

Every step is the flow a user would run (as a subflow), so the demo is deterministic where
they are. Stage headings go to the ``daug.stage`` logger (the CLI draws them as rules).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.presets import DiffusionTrainSettings
from flows.ablate import ablate_flow
from flows.demo_checkpoints import seed_checkpoints
from flows.demo_settings import DemoSettings
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.precompute import precompute_flow
from flows.quality.flow import heatmap_quality_flow
from flows.quality.settings import SweepSettings
from flows.reports import demo as report
from flows.reports.artifacts import ProgressReporter, artifact_key, markdown_artifact
from flows.runtime.notices import RUN_LOG_ONLY, quiet_loggers
from flows.runtime.pool import PoolSettings
from flows.train_generator import train_generator_flow
from storage.release.ingest_config import IngestConfig
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.image import ImageStore
from storage.store.ingest_shards import summarise_store
from storage.synthetic import SynthConfig, write_synthetic_release

stage_log = logging.getLogger("daug.stage")
# What the demo's subflows narrate per epoch, dataset, model and sweep point (their own commands
# show it): the demo's terminal has the stages, progress bars and results instead (`daug -v
# demo` shows everything).
DETAIL_LOGGERS = (
    "flows.runtime.contrastive",
    "storage.datasets.contrastive",
    "daug_core.contrastive.model",
    "flows.quality.sweep",
)


def stage(text: str) -> None:
    """A stage heading: to the flow run's log and to ``daug.stage`` (the CLI's rules)."""
    get_run_logger().info(text, extra=RUN_LOG_ONLY)
    stage_log.info(text)


class StageClock:
    """The wall time of each named step of a run, in the order they ran."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.times.append((name, round(time.perf_counter() - started, 1)))


def synthesise(root: Path, config: SynthConfig, seed: int, key: str) -> tuple[Path, Path]:
    """``ROOT/synthetic/release`` and its ``ground_truth``, written unless complete (the
    writer renames the ground truth into place last, so without it a release is not done and
    is written again)."""
    release, truth = root / "synthetic" / "release", root / "synthetic" / "ground_truth"
    if truth.is_dir():
        stage(f"1. synthetic release already at {release}")
        return release, truth
    stage(f"1. synthesise a MIMIC-CXR release of {config.studies} studies")
    progress = ProgressReporter(key, config.studies, "studies written")
    write_synthetic_release(
        root / "synthetic",
        config,
        seed=seed,
        progress=lambda done, _: progress.advance(done - progress.done),
        overwrite=True,  # a release left by an interrupted synthesis
    )
    return release, truth


def ingest_store(release: Path, root: Path) -> Path:
    """``ROOT/store``: the release ingested at 64 px (a rerun ingests only what is missing)."""
    stage("2. ingest it into a 64 px image store")
    store = root / "store"
    ingest_flow(
        release=str(release), store=str(store), ingest=IngestConfig(size=64, shard_items=32)
    )
    return store


@flow(name="demo")
def demo_flow(out: str, demo: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Run the whole pipeline on a synthetic release into OUT (rerun: finished steps skip).

    Args:
        out: folder for everything the demo writes.
        demo: release size, seeds, training steps, pretrained start, heatmap steps, ablation
            seeds.
    """
    started = time.perf_counter()
    clock = StageClock()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    with clock.timed("1. synthetic release"):
        release, truth = synthesise(
            root,
            SynthConfig(studies=demo.studies, size=128),
            demo.seed,
            artifact_key("demo", root.name, "synth"),
        )
    with clock.timed("2. ingest (64 px image store)"):
        store = ingest_store(release, root)
    summary = summarise_store(ImageStore.open(store, read_only=True))
    get_run_logger().debug("store:\n%s", summary.to_string(index=False))

    stage("3. train the DDPM generator and the noise-aware classifier (tiny preset)")
    checkpoints = root / "checkpoints"
    with clock.timed("3. generator and classifier"):
        if demo.pretrained:
            seeded = seed_checkpoints(ImageStore.open(store, read_only=True), checkpoints)
            get_run_logger().info("%s", seeded.reason)
        trained = train_generator_flow(
            store=str(store),
            out=str(checkpoints),
            training=DiffusionTrainSettings(
                preset="tiny",
                seed=demo.seed,
                generator_steps=demo.generator_steps,
                classifier_steps=demo.classifier_steps,
            ),
        )
    get_run_logger().info("%s", report.training_lines(trained))

    stage("4. precompute +No Finding heatmaps for every image on Ray actors")
    # heatmap_steps None keeps the preset's steps.
    steps = {} if demo.heatmap_steps is None else {"steps": demo.heatmap_steps}
    settings = HeatmapSettings.build(preset="tiny", translation=steps)
    pool = PoolSettings(actors=2, cpus_per_actor=1.0)
    with clock.timed("4. +No Finding heatmaps (Ray actors)"):
        heat = precompute_flow(
            store=str(store),
            checkpoints=str(checkpoints),
            heatmaps=HeatmapSettings.build(
                preset="tiny", targets=("+No Finding",), translation=steps
            ),
            pool=pool,
        )
    get_run_logger().info(
        "heatmaps: %d computed, %d already done, %d failed, %.2f image·class/s",
        heat["done"],
        heat["already_done"],
        heat["failures"],
        heat["image_class_per_second"],
    )

    stage("5. heatmap quality against the ground-truth lesion masks (held-out images)")
    with clock.timed("5. heatmap quality"), quiet_loggers(DETAIL_LOGGERS):
        quality = heatmap_quality_flow(
            store=str(store),
            truth=str(truth),
            checkpoints=str(checkpoints),
            heatmap_version=DEFAULT_VERSION,
            splits=["test", "validate"],
            heatmaps=settings,
            pool=pool,
            # Around the tiny preset (s = 10, L = 300, 10 steps): the scale out to the paper's
            # and half the level, 6 points on 6 images each (heatmap-quality sweeps further).
            sweep=SweepSettings(items=6, scales=(1.0, 10.0, 100.0), levels=(150, 300), steps=(10,)),
        )
    headline = report.quality_headline(quality)
    # The closing summary prints these tables; the log keeps them for -v and the flow run's page.
    get_run_logger().debug("%s\n%s", headline, report.modes_table(quality))

    stage("6. train and evaluate the ablation grid (tiny CLIP, hybrid loss)")
    ablation = root / "ablation"
    seeds = list(range(demo.ablation_seeds))
    with clock.timed("6. ablation grid (tiny CLIP)"), quiet_loggers(DETAIL_LOGGERS):
        grid = ablate_flow(store=str(store), out=str(ablation), seeds=seeds)
    best = ablation / "daug+hybrid" / "seed-0"
    with clock.timed("6. evaluation of daug+hybrid seed 0"), quiet_loggers(DETAIL_LOGGERS):
        metrics = evaluate_flow(checkpoint=str(best / "best"), store=str(store), truth=str(truth))

    page = root / "report.html"
    result = {
        "paths": {
            "release": str(release),
            "ground truth": str(truth),
            "image store": f"{store}  (items.csv, quarantine.csv, images/)",
            "checkpoints": f"{checkpoints}  (generator/, classifier/, loss_curves.png)",
            "heatmaps": (
                f"{store}/heatmaps/{DEFAULT_VERSION}  (heatmaps, heatmaps_done, failures.csv)"
            ),
            "examples": str(heat["examples"]),
            "heatmap quality": f"{quality['run_dir']}  (summary.json, sweep.png, cases-*.png)",
            "ablation": f"{ablation}  (RESULTS.md, ablation.png, <variant>/seed-<s>/)",
            "evaluation": f"{best}  (metrics.json, roc_curves.png, examples.png)",
        },
        "quality_headline": headline,
        "modes_table": report.modes_table(quality),
        "ablation_markdown": grid["markdown"],
        "stages": [{"stage": name, "seconds": seconds} for name, seconds in clock.times],
        "seconds": round(time.perf_counter() - started, 1),
        "report": str(page.resolve()),
    }
    report.write_report(
        report.DemoReport(
            out=root,
            seconds=result["seconds"],
            stages=tuple(clock.times),
            training=trained,
            examples=Path(heat["examples"]) if heat["examples"] else None,
            quality=quality,
            evaluation=metrics,
            evaluation_dir=best,
            ablation=grid,
            ablation_dir=ablation,
            seeds=tuple(seeds),
        ),
        page,
    )
    markdown_artifact(
        artifact_key("demo", root.name, "results"),
        report.results_markdown(result),
        "The demo's results: heatmap quality on held-out images and the ablation table.",
    )
    return result
