"""Study flow: the paper's two claims on a release big enough to mean something.

synthesise a release (``StudySettings.studies``, 70/10/20 splits) -> ingest (64 px) -> train
the generator and the noise-aware classifier (tiny preset) -> heatmap quality on the held-out
lesion images: softmax, sigmoid and unguided (scale 0) heatmaps, paired -> K = 7 heatmaps
(``+c`` for every class) of every image on Ray actors -> the ablation grids over seeds (ours
with the DAug rows in every heatmap mode; the official grids as their code runs them) -> every
variant's AUC macro / weighted, x→x and r→x mAP@5 and wmAP@5 with 95 % bootstrap intervals
over the test images, and its paired difference to its grid's baseline with a p-value.

The heatmap answers come first: they need the models and the held-out images only (16 min
against the K = 7 stage's 26 and the ablation's 55 in the README's run), and
``OUT/RESULTS.md`` holds them as soon as they exist, so a study stopped in its long stages has
already answered the heatmap questions. ``ComputeSettings``
applies to every model pass: training (generator, classifier, every ablation run) and the
heatmaps (``bf16`` on CPUs with bf16 units and on GPUs halves the heatmap stages here).

Every stage is a flow a user runs alone and is resumable, so a rerun of an interrupted study
continues where it stopped: the release and the store are kept, training resumes from its
last checkpoint, heatmaps from their done flags, ablation runs from their folders (a finished
run is not redone); only the report is recomputed. Writes ``OUT/study.csv`` (every variant and
metric), ``OUT/RESULTS.md``, ``OUT/study.png`` and ``OUT/study.json`` (with the wall time).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from daug_core.compute import ComputeSettings
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.presets import DiffusionTrainSettings
from daug_core.evaluation.study_statistics import RunOutputs, compare_variants
from daug_core.strict_json import strict
from flows.ablate import ablate_flow
from flows.ablation_grids import Variant, grid_variants
from flows.demo import ingest_store, stage, synthesise
from flows.evaluate import TEST_OUTPUTS
from flows.precompute import check_precision, precompute_flow
from flows.quality.flow import heatmap_quality_flow
from flows.quality.settings import SweepSettings
from flows.reports import study as report
from flows.reports.artifacts import artifact_key
from flows.reports.files import write_json, write_text
from flows.runtime.pool import PoolSettings
from flows.study_settings import STUDY_PREVALENCES, STUDY_SPLITS, StudySettings
from flows.train_generator import train_generator_flow
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.synthetic import SynthConfig


def downstream_rows(
    ablation: Path, variants: tuple[Variant, ...], seeds: int, resamples: int, seed: int
) -> pd.DataFrame:
    """Every variant of one finished ablation grid against the grid's baseline (its first
    row), from the runs' per-image test outputs; rows in the grid's order."""
    runs = {
        v.name: [
            RunOutputs.load(ablation / v.name / f"seed-{s}" / TEST_OUTPUTS) for s in range(seeds)
        ]
        for v in variants
    }
    return pd.DataFrame(compare_variants(runs, variants[0].name, resamples=resamples, seed=seed))


def results_markdown(
    study: StudySettings, heatmaps: str, downstream: dict[str, str] | None, facts: dict[str, Any]
) -> str:
    """The study's RESULTS.md; ``downstream`` None while the ablation stages are running."""
    done = downstream is not None
    images = f"{facts['images']} images ({facts['test_images']} test), " if done else ""
    lines = [
        f"# DAug study ({study.studies} synthetic studies, seeds {list(range(study.seeds))})",
        "",
        f"{images}K = 7 heatmaps per image (tiny preset), models in {facts['precision']}; "
        f"wall time {'' if done else 'so far '}{facts['seconds'] / 3600:.2f} h.",
        "",
        "## Heatmaps: guidance vs reconstruction error, softmax vs sigmoid",
        "",
        heatmaps,
        "",
        "## Downstream: each variant against its baseline",
        "",
    ]
    if downstream is None:
        lines.append("Not yet: the K = 7 heatmaps and the ablation are running.")
        return "\n".join(lines) + "\n"
    for markdown in downstream.values():
        lines += [markdown, ""]
    lines.append("![differences to the baseline](study.png)")
    return "\n".join(lines) + "\n"


@flow(name="study")
def study_flow(
    out: str,
    study: StudySettings = StudySettings(),
    pool: PoolSettings = PoolSettings(),
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Run the study into OUT (local folder; rerun: finished stages and runs are kept).

    Args:
        out: folder for the release, the store, the checkpoints, every run and the results.
        study: release size, training steps, heatmap steps, grids, modes, seeds, bootstrap.
        pool: Ray actor pool of the heatmap stages.
        compute: device of the training stages and precision of every model pass (training
            and heatmaps; a rerun must keep it: the heatmap versions hold one precision).
    """
    started = time.perf_counter()
    # heatmap_steps None keeps the preset's steps.
    steps = {} if study.heatmap_steps is None else {"steps": study.heatmap_steps}
    heatmap_settings = HeatmapSettings.build(
        preset="tiny", translation={**steps, "precision": compute.precision}
    )
    compute.resolve()  # an impossible device or precision fails before anything is written
    check_precision(heatmap_settings, pool)
    logger = get_run_logger()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    config = SynthConfig(
        studies=study.studies,
        size=128,
        split_fractions=STUDY_SPLITS,
        prevalences=STUDY_PREVALENCES,
    )
    release, truth = synthesise(root, config, study.seed, artifact_key("study", root.name, "synth"))
    store = ingest_store(release, root)

    stage("3. train the DDPM generator and the noise-aware classifier (tiny preset)")
    checkpoints = root / "checkpoints"
    train_generator_flow(
        store=str(store),
        out=str(checkpoints),
        training=DiffusionTrainSettings(
            preset="tiny",
            seed=study.seed,
            generator_steps=study.generator_steps,
            classifier_steps=study.classifier_steps,
        ),
        compute=compute,
    )

    heatmaps = "Heatmap quality was not run (--no-quality)."
    paired: list[dict[str, Any]] = []
    if study.quality:
        stage("4. heatmap quality: softmax, sigmoid and unguided on the held-out lesion images")
        quality = heatmap_quality_flow(
            store=str(store),
            truth=str(truth),
            checkpoints=str(checkpoints),
            splits=["validate", "test"],
            heatmaps=heatmap_settings,
            sweep=SweepSettings(enabled=False),
            pool=pool,
            out=str(root / "quality"),
        )
        paired = quality["paired"]
        heatmaps = report.heatmap_markdown(paired)
        so_far = {"precision": compute.precision, "seconds": time.perf_counter() - started}
        write_text(results_markdown(study, heatmaps, None, so_far), root / "RESULTS.md")

    stage("5. K = 7 heatmaps (+c for every class) of every image on Ray actors")
    heat = precompute_flow(
        store=str(store),
        checkpoints=str(checkpoints),
        heatmap_version=DEFAULT_VERSION,
        heatmaps=heatmap_settings,
        pool=pool,
    )
    logger.info("heatmaps: %d computed, %d already done", heat["done"], heat["already_done"])

    stage("6. the ablation grids over seeds (ours: the DAug rows in every heatmap mode)")
    downstream: dict[str, str] = {}
    frames = []
    training = ClipTrainSettings(preset="tiny", epochs=study.epochs)
    for grid in study.grid_names:
        folder = root / "ablation" / grid
        ablate_flow(
            store=str(store),
            out=str(folder),
            seeds=list(range(study.seeds)),
            grid=grid,
            heatmap_modes=list(study.modes_of(grid)),
            training=training,
            heatmap_version=DEFAULT_VERSION,
            compute=compute,
        )
        stage(f"7. bootstrap intervals of the {grid} grid ({study.resamples} resamples)")
        variants = grid_variants(grid, None, training, study.modes_of(grid))
        rows = downstream_rows(folder, variants, study.seeds, study.resamples, study.seed)
        rows.insert(0, "grid", grid)
        rows.insert(2, "label", [f"{grid}: {v}" for v in rows["variant"]])
        downstream[grid] = report.downstream_markdown(rows, grid, variants[0].name)
        frames.append(rows)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(root / "study.csv", index=False)
    seconds = time.perf_counter() - started
    facts = {
        "images": int(heat["done"] + heat["already_done"] + heat["failures"]),
        "test_images": int(table["images"].iloc[0]),
        "seconds": round(seconds, 1),
        "precision": compute.precision,
    }
    chart = report.plot_differences(table, root / "study.png")
    markdown = results_markdown(study, heatmaps, downstream, facts)
    write_text(markdown, root / "RESULTS.md")
    result = {
        **facts,
        "out": str(root),
        "results": str(root / "RESULTS.md"),
        "downstream": strict(table.to_dict("records")),
        "heatmaps": paired,
        "markdown": markdown,
    }
    write_json(result, root / "study.json")
    report.publish(artifact_key("study", root.name), table, markdown, chart)
    logger.info("study finished in %.0f s:\n%s", seconds, markdown)
    return result
