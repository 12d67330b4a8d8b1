"""Train-student flow: a heatmap student learns a teacher heatmap version of a store.

Writes into ``OUT``::

    student/            the checkpoint (resumed when it exists): model.json records the teacher
                        version and its provenance
    student_losses.csv  loss per step
    student.json        the run's summary: items, steps, the validation agreement with the teacher

The student trains on the usable items of ``splits`` whose teacher heatmaps are done and is
compared with the teacher on the validate split (mean absolute difference, and how often the
student's peak falls where the teacher's map is at least half its maximum).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np
import torch
from prefect import flow

from daug_core.checkpoints.layout import checkpoint_sha256, trainer_step
from daug_core.checkpoints.student import load_student_state, save_student_checkpoint
from daug_core.compute import Compute, ComputeSettings
from daug_core.settings import ConfigError
from daug_core.student.config import StudentSettings
from daug_core.student.training import StudentState, init_student_state, train_student
from daug_core.training import StepReport
from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer
from flows.reports.files import RunFolder, write_json
from flows.train_generator import LossLog
from storage.datasets.teacher import TeacherPairs, stratified_fraction, teacher_items
from storage.errors import EmptySelectionError
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore

log = logging.getLogger(__name__)
STUDENT_DIR = "student"


def _state(
    path: Any, settings: StudentSettings, targets: tuple[str, ...], teacher: str, amp: Compute
) -> StudentState:
    """The run to continue at ``path``, or a new one; a checkpoint of other settings, targets
    or teacher is refused (a new folder trains those)."""
    config = settings.config()
    if trainer_step(path) is None:
        return init_student_state(config, targets, settings.seed, amp.device)
    state = load_student_state(path, amp.device)
    recorded = json.loads((path / "model.json").read_text())
    # More steps continue the run (the learning rate is constant); anything else is another
    # student.
    steps = dataclasses.replace(state.config.training, num_steps=config.training.num_steps)
    changed = [
        what
        for what, same in (
            ("student settings", dataclasses.replace(state.config, training=steps) == config),
            ("targets", state.student.targets == targets),
            ("teacher version", recorded["teacher_version"] == teacher),
        )
        if not same
    ]
    if changed:
        raise ConfigError(
            f"{path} holds a student of other {', '.join(changed)}: pass a new output folder"
        )
    state.config = config
    log.info("resuming the student at step %d in %s", state.step, path)
    return state


def agreement(
    state: StudentState, pairs: TeacherPairs, amp: Compute, batch: int = 32
) -> dict[str, float]:
    """The student against the teacher on ``pairs``: mean absolute difference, and the share of
    maps where the student's peak falls where the teacher's heat is >= half its maximum."""
    errors, hits = [], []
    for start in range(0, len(pairs), batch):
        taken = pairs.take(np.arange(start, min(start + batch, len(pairs))))
        with torch.no_grad(), amp.autocast():
            heat = state.student.heatmaps(taken.images.to(amp.device)).cpu()
        teacher = taken.heatmaps.flatten(2)
        errors.append((heat.flatten(2) - teacher).abs().mean(-1))
        peak = heat.flatten(2).argmax(-1, keepdim=True)
        top = teacher.amax(-1, keepdim=True)
        hits.append((teacher.gather(-1, peak) >= 0.5 * top).squeeze(-1) & (top.squeeze(-1) > 0))
    return {
        "mean_abs_difference": float(torch.cat(errors).mean()),
        "peak_agreement": float(torch.cat(hits).float().mean()),
    }


@flow(name="train-student", flow_run_name=run_namer("train-student", "store"))
def train_student_flow(
    store: str,
    out: str,
    teacher_version: str = DEFAULT_VERSION,
    student: StudentSettings = StudentSettings(),
    splits: list[str] | None = None,
    fraction: float = 1.0,
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Train a heatmap student on STORE's teacher heatmap version (resumable).

    Args:
        store: image store with the teacher heatmap version.
        out: output folder (``student/`` is the checkpoint ``daug precompute --student`` takes).
        teacher_version: the heatmap version to learn.
        student: preset, seed, steps and loss weight.
        splits: the splits to train on (default: train); validate is where it is compared.
        fraction: train on this deterministic, label-stratified share of those items (how
            many teacher images the student needs).
        compute: device and precision.
    """
    started = time.perf_counter()
    amp = compute.resolve()
    images = ImageStore.open(store, read_only=True)
    teacher = HeatmapStore(images, teacher_version)
    config = student.config()
    chosen = teacher_items(images, teacher, splits or ["train"])
    pairs = TeacherPairs(
        images, teacher, stratified_fraction(images, chosen, fraction), config.image_size
    )
    folder = RunFolder(out)
    folder.pull()
    path = folder.local / STUDENT_DIR
    state = _state(path, student, teacher.targets, teacher_version, amp)
    before = state.step
    losses = LossLog(folder.local, STUDENT_DIR, before)
    progress = ProgressReporter(
        artifact_key("train-student", folder.location.name),
        max(0, config.training.num_steps - before),
        "student steps",
    )
    record = teacher.attrs["provenance"]

    def save() -> None:
        save_student_checkpoint(state, path, teacher_version, record)
        losses.flush()
        folder.sync()

    def on_step(report: StepReport) -> bool:
        progress.advance(1)
        losses.add(report)
        if report.step % config.training.checkpoint_every == 0:
            save()
        return False

    log.info(
        "student %s on %d %s image(s) of heatmap version %s (%s)",
        config.name,
        len(pairs),
        "+".join(splits or ["train"]),
        teacher_version,
        ", ".join(teacher.targets),
    )
    batches = pairs.batches(config.training.batch_size, student.seed, state.step)
    result = train_student(state, batches, on_step=on_step, compute=amp)
    save()
    try:
        held_out = TeacherPairs(
            images, teacher, teacher_items(images, teacher, ["validate"]), config.image_size
        )
        validation: dict[str, Any] = {"items": len(held_out)} | agreement(state, held_out, amp)
    except EmptySelectionError:
        validation = {"items": 0}
        log.warning("no validate item has teacher heatmaps: the student is not compared")
    summary = {
        "store": str(store),
        "teacher_version": teacher_version,
        "targets": list(teacher.targets),
        "preset": config.name,
        "train_items": len(pairs),
        "fraction": fraction,
        "steps": state.step,
        "steps_run": state.step - before,
        "last_loss": result.losses[-1] if result.losses else None,
        "validation": validation,
        "student_sha256": checkpoint_sha256(path),
        "compute": amp.record(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(summary, folder.local / "student.json")
    folder.sync()
    log.info("student trained to step %d: validation %s", state.step, validation)
    return summary
