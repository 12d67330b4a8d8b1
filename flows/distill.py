"""Distill flow: amortised heatmaps for a whole store, the teacher paying for only a fraction.

Three subflows, each resumable on its own (a rerun skips what is done):

1. **teacher** (``precompute``): the teacher's heatmaps for a deterministic, label-stratified
   ``fraction`` of the train split (:func:`~storage.datasets.teacher.stratified_selection`)
   into ``teacher_version``; done items are skipped.
2. **train** (``train-student``): a heatmap student learns them into ``OUT/student``; a rerun
   resumes from its checkpoint (at its last step: nothing to train).
3. **student** (``precompute --student``): the student's heatmaps for every usable item into
   ``heatmap_version``; done items are skipped.

Everything the stages would refuse later (sizes, names, a version holding other heatmaps, an
empty train split) is refused before the first one starts. ``OUT/distill.json`` is the summary
the flow returns: items and seconds per stage, the fraction, the versions.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from prefect import flow

from daug_core.compute import ComputeSettings
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.settings import ConfigError
from daug_core.student.config import StudentSettings
from flows.precompute import check_fraction, check_precision, check_sizes, precompute_flow
from flows.reports.artifacts import run_namer
from flows.reports.files import RunFolder, write_json
from flows.runtime.pool import PoolSettings
from flows.train_student import STUDENT_DIR, train_student_flow
from storage.datasets.teacher import stratified_selection
from storage.errors import EmptySelectionError
from storage.store.heatmap_versions import check_version_name
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.location import Location

log = logging.getLogger(__name__)
TEACHER_SPLITS = ["train"]
SUMMARY_FILE = "distill.json"
# What the summary keeps of a precompute subflow's result.
STAGE_KEYS = ("selected", "done", "already_done", "failed", "skipped_failed", "run_dir")


def check_plan(
    images: ImageStore,
    *,
    chosen: np.ndarray,
    fraction: float,
    teacher_version: str,
    heatmap_version: str,
) -> None:
    """The store's versions against the plan, before any work: the teacher version may hold
    no train item outside ``chosen`` (the student would learn from more than the fraction),
    and the student's version, if it exists, must be a student's of ``teacher_version``."""
    versions = HeatmapStore.versions(images)
    if teacher_version in versions:
        train = images.usable(TEACHER_SPLITS)["index"].to_numpy(dtype=np.int64)
        done = HeatmapStore(images, teacher_version).done_for(train)
        outside = int((done & ~np.isin(train, chosen)).sum())
        if outside:
            raise ConfigError(
                f"heatmap version {teacher_version!r} holds heatmaps of {outside} train item(s) "
                f"outside the fraction {fraction}: the student would learn from more than the "
                "fraction; pass another --teacher-version"
            )
    if heatmap_version in versions:
        made = HeatmapStore(images, heatmap_version).provenance
        if made.teacher_version != teacher_version:
            who = (
                f"a student of version {made.teacher_version!r}"
                if made.student_sha256
                else "the teacher"
            )
            raise ConfigError(
                f"heatmap version {heatmap_version!r} holds heatmaps made by {who}; the "
                f"student of {teacher_version!r} writes a version of its own: pass another "
                "--heatmap-version"
            )


def check_earlier_run(out: Location, fraction: float, teacher_version: str) -> None:
    """A rerun into ``out`` continues the same plan: another fraction or teacher version would
    resume a student trained on other items."""
    earlier = out.child(SUMMARY_FILE)
    if not earlier.exists():
        return
    recorded = json.loads(earlier.read_text())
    mine = {"fraction": fraction, "teacher_version": teacher_version}
    changed = [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in mine.items() if recorded.get(k) != v]
    if changed:
        raise ConfigError(
            f"{out.url} holds a distillation of other {', '.join(changed)}: pass a new --out"
        )


def _stage(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in STAGE_KEYS}


@flow(name="distill", flow_run_name=run_namer("distill", "store"))
def distill_flow(
    store: str,
    checkpoints: str,
    out: str,
    fraction: float = 0.1,
    teacher_version: str = "teacher",
    heatmap_version: str = "student",
    heatmaps: HeatmapSettings = HeatmapSettings(),
    student: StudentSettings = StudentSettings(),
    pool: PoolSettings = PoolSettings(),
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Heatmaps for every item of STORE from a student that learned the teacher on a
    fraction of the train split (resumable: a rerun skips what is done).

    Args:
        store: image store (from the ingest flow).
        checkpoints: train-generator output (generator/, classifier/): the teacher.
        out: output folder: ``student/`` (the checkpoint), its losses and ``distill.json``.
        fraction: the deterministic, label-stratified share of the train split the teacher
            computes heatmaps for (per combination of the super-class labels, the first items
            by the sha256 of their dicom_id; a larger fraction keeps a smaller one's items).
        teacher_version: heatmap version of the teacher's heatmaps.
        heatmap_version: heatmap version of the student's heatmaps (every usable item).
        heatmaps: the teacher's heatmaps: preset, targets, translation numbers.
        student: the student's preset, seed, steps and loss weight (its image size is the
            teacher preset's).
        pool: the Ray actor pool of both precompute stages.
        compute: device and precision of the student's training.
    """
    started = time.perf_counter()
    check_fraction(fraction)
    for name in (teacher_version, heatmap_version):
        try:
            check_version_name(name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if teacher_version == heatmap_version:
        raise ConfigError(
            f"the teacher's and the student's heatmaps go to two versions; both are "
            f"{teacher_version!r}"
        )
    size, learns = heatmaps.config().image_size, student.config().image_size
    if size != learns:
        raise ConfigError(
            f"the {student.preset} student learns {learns} px heatmaps; the {heatmaps.preset} "
            f"preset's teacher makes {size} px ones: pass a student preset of that size"
        )
    check_precision(heatmaps, pool)
    check_sizes(heatmaps, checkpoints, store)
    compute.resolve()  # "cuda" without CUDA fails now, not after the teacher's hours
    images = ImageStore.open(store, read_only=True)
    chosen = stratified_selection(images, TEACHER_SPLITS, fraction)
    if not len(chosen):
        raise EmptySelectionError(
            f"{images.location}: no usable item in the train split: nothing to distill"
        )
    check_plan(
        images,
        chosen=chosen,
        fraction=fraction,
        teacher_version=teacher_version,
        heatmap_version=heatmap_version,
    )
    where = Location.of(out)
    check_earlier_run(where, fraction, teacher_version)
    log.info(
        "distill: teacher heatmaps for %d of %d train item(s) (fraction %g) into %s; the "
        "student's for every item into %s",
        len(chosen),
        len(images.usable(TEACHER_SPLITS)),
        fraction,
        teacher_version,
        heatmap_version,
    )
    seconds: dict[str, float] = {}

    tick = time.perf_counter()
    teacher = precompute_flow(
        store=store,
        checkpoints=checkpoints,
        heatmaps=heatmaps,
        pool=pool,
        splits=TEACHER_SPLITS,
        heatmap_version=teacher_version,
        fraction=fraction,
    )
    seconds["teacher"] = time.perf_counter() - tick

    tick = time.perf_counter()
    # The teacher version holds the fraction's train items only (check_plan), so the student
    # learns every one of them that got heatmaps.
    trained = train_student_flow(
        store=store,
        out=out,
        teacher_version=teacher_version,
        student=student,
        splits=TEACHER_SPLITS,
        compute=compute,
    )
    seconds["train"] = time.perf_counter() - tick

    tick = time.perf_counter()
    student_dir = where.child(STUDENT_DIR).url
    made = precompute_flow(
        store=store, student=student_dir, pool=pool, heatmap_version=heatmap_version
    )
    seconds["student"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    items = {
        "train_split": len(images.usable(TEACHER_SPLITS)),
        "teacher": int(teacher["selected"]),
        "student_training": int(trained["train_items"]),
        "student_heatmaps": int(made["selected"]),
    }
    summary: dict[str, Any] = {
        "store": Location.of(store).url,
        "out": where.url,
        "student": student_dir,
        "fraction": fraction,
        "teacher_version": teacher_version,
        "heatmap_version": heatmap_version,
        "items": items,
        "teacher": _stage(teacher),
        "train": {k: trained[k] for k in ("train_items", "steps", "steps_run", "student_sha256")}
        | {"validation": trained["validation"]},
        "heatmaps": _stage(made),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    folder = RunFolder(where)
    write_json(summary, folder / SUMMARY_FILE)
    folder.sync()
    log.info(
        "distilled in %.1f s: teacher heatmaps of %d item(s), a student of %d step(s), its "
        "heatmaps of %d item(s)",
        seconds["total"],
        items["teacher"],
        trained["steps"],
        items["student_heatmaps"],
    )
    return summary
