"""The models that made a heatmap version, loaded again to make the same heatmaps for images
outside the store (``daug explain``).

A version's provenance names its models by their weights' sha256, not by where they are: the
caller says where (a student checkpoint, or a train-generator output folder with generator/
and classifier/), and the weights found there must be the ones the provenance names. The
worker is the precompute's :class:`~flows.runtime.actors.HeatmapWorker`, in this process, with
the version's preset and translation numbers: the same code makes the same heatmaps.
"""

from __future__ import annotations

import dataclasses
import os

from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR
from daug_core.diffusion.presets import preset
from daug_core.settings import CheckpointError, ConfigError
from flows.precompute import checkpoint_digest, student_provenance
from flows.runtime.actors import HeatmapWorker, WorkerSpec
from storage.store.heatmaps import HeatmapProvenance
from storage.store.location import Location


def describe_source(provenance: HeatmapProvenance) -> str:
    """Who made a version, in words (errors and explain.json)."""
    if provenance.student_sha256:
        return (
            f"the heatmap student {provenance.student_sha256[:12]} "
            f"(of teacher version {provenance.teacher_version})"
        )
    return (
        f"the teacher (generator {provenance.generator_sha256[:12]}, "
        f"classifier {provenance.classifier_sha256[:12]}, preset {provenance.preset})"
    )


def version_worker(
    provenance: HeatmapProvenance,
    models: str | os.PathLike[str] | None,
    *,
    version: str,
    device: str = "cpu",
    torch_threads: int = 0,
) -> HeatmapWorker:
    """A worker that makes heatmaps as the models at ``models`` made ``version``; a
    ConfigError when ``models`` is missing, a CheckpointError when its weights are not the
    provenance's (before anything is loaded)."""
    if models is None:
        raise ConfigError(
            f"heatmap version {version!r} was made by {describe_source(provenance)}: pass "
            + (
                "that student checkpoint (--heatmap-models OUT/student)"
                if provenance.student_sha256
                else "the folder of its generator/ and classifier/ (--heatmap-models CKPT)"
            )
        )
    where = Location.of(models)
    config = dataclasses.replace(preset(provenance.preset), translation=provenance.translation)
    spec = WorkerSpec(
        generator_dir="",
        classifier_dir="",
        config=config,
        targets=provenance.targets,
        torch_threads=torch_threads or os.cpu_count() or 1,
        device=device,
    )
    if provenance.student_sha256:
        found = student_provenance(where.url)
        if found.student_sha256 != provenance.student_sha256:
            raise CheckpointError(
                where.url,
                f"holds student {found.student_sha256}; heatmap version {version!r} was made "
                f"by {describe_source(provenance)}",
            )
        return HeatmapWorker(
            dataclasses.replace(
                spec, student_dir=where.url, student_sha256=provenance.student_sha256
            )
        )
    wanted = {
        GENERATOR_DIR: provenance.generator_sha256,
        CLASSIFIER_DIR: provenance.classifier_sha256,
    }
    for name, digest in wanted.items():
        found_digest = checkpoint_digest(where.child(name))
        if found_digest != digest:
            raise CheckpointError(
                where.child(name).url,
                f"weights {found_digest[:12]}; heatmap version {version!r} was made by "
                f"{describe_source(provenance)}",
            )
    return HeatmapWorker(
        dataclasses.replace(
            spec,
            generator_dir=where.child(GENERATOR_DIR).url,
            classifier_dir=where.child(CLASSIFIER_DIR).url,
            generator_sha256=provenance.generator_sha256,
            classifier_sha256=provenance.classifier_sha256,
        )
    )
