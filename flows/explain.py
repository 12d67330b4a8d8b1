"""Explain flow: a trained model's answer for new studies (DICOM, JPG or PNG files, or folders
of them): class probabilities, per-target heatmaps and the most similar past studies of an
index, written back as files a person opens and DICOM objects a viewer shows.

Each input is read with the reader and geometry of the store the model was trained on; its
heatmaps are made by the models that made the model's heatmap version (the student or the
teacher, their weights checked against the version's provenance), and the model scores it as
``daug evaluate`` scores a test image. Writes, into ``OUT``::

    <name>-<sha256[:12]>/explain.json    probabilities, neighbours, provenance, timings
    <name>-<sha256[:12]>/image.png       the input as the model sees it
    <name>-<sha256[:12]>/heatmap-<target>.png   the heatmap over the image, one per target
    <name>-<sha256[:12]>/dicom/          one DICOM Secondary Capture per target (highdicom)
    failures.csv                         inputs not explained, with the reason
    index.html                           every input of OUT on one self-contained page

An input already explained by the same model (same file sha256) is skipped: a scheduled run
over an inbox explains what is new.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import flow
from pydicom.uid import generate_uid

from daug_core.checkpoints.contrastive import ClipCheckpoint, load_clip_checkpoint
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.compute import Compute, ComputeSettings, cpu_fp32
from daug_core.contrastive.training import ImageScores, score_images
from daug_core.labels import CHEXPERT_LABELS
from daug_core.settings import ConfigError
from flows.explain_settings import ExplainSettings
from flows.reports import explain as pages
from flows.reports.artifacts import (
    ProgressReporter,
    artifact_key,
    image_markdown,
    markdown_artifact,
    run_namer,
    table_artifact,
)
from flows.reports.files import RunFolder, write_json
from flows.runtime.contrastive import prompt_tokens
from flows.runtime.heatmap_source import describe_source, version_worker
from storage.derived.dicom import SERIES_NUMBER, write_heatmap_capture
from storage.release.inputs import InputError, InputImage, find_inputs, read_input
from storage.store.embedding_index import EmbeddingIndex, neighbours
from storage.store.heatmap_shards import ImageBatch
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore
from storage.store.image import ImageStore
from storage.store.location import Location

log = logging.getLogger(__name__)
EXPLAIN_JSON = "explain.json"
FAILURES_CSV = "failures.csv"
ARTIFACT_INPUTS = 4  # overlays shown in the Prefect artifact (index.html has them all)


@dataclass(frozen=True)
class Answer:
    """The model's answer for one input."""

    scores: ImageScores  # one row
    heatmaps: np.ndarray  # (K, S, S) float32 in [0, 1], the model's heatmap targets in order
    neighbours: list[dict[str, Any]]
    seconds: dict[str, float]


class Explainer:
    """A trained model, its index and the models of its heatmap version, loaded once."""

    def __init__(
        self,
        model: str,
        index: str,
        heatmap_models: str | None = None,
        compute: Compute | None = None,
    ) -> None:
        self.compute = compute or cpu_fp32()
        folder = RunFolder(Location.of(model))
        folder.pull()
        self.model_url = Location.of(model).url
        self.loaded: ClipCheckpoint = load_clip_checkpoint(folder.local)
        self.loaded.model.to(self.compute.device)
        self.model_sha256 = checkpoint_sha256(folder.local)
        self.store = ImageStore.open(index, read_only=True)
        self.ingest = self.store.ingest_config()
        self.index = EmbeddingIndex.open(self.store, self.model_sha256)
        self.prompts = prompt_tokens(self.loaded.config)
        self.targets = tuple(self.loaded.heatmap_targets)
        self.version: str | None = None
        self.provenance: HeatmapProvenance | None = None
        self.channels = np.zeros(0, dtype=np.int64)
        self.worker = None
        if self.targets:
            self.version = str(self.loaded.info.get("heatmap_version"))
            self.provenance = self._check_version()
            self.channels = np.array([self.provenance.targets.index(t) for t in self.targets])
            self.worker = version_worker(
                self.provenance,
                heatmap_models,
                version=self.version,
                device=str(self.compute.device),
            )

    def _check_version(self) -> HeatmapProvenance:
        """The store's version the model was trained on, and that it is the one the model
        recorded (a version deleted and made again by other models is another version)."""
        assert self.version is not None
        stored = HeatmapStore(self.store, self.version).provenance
        recorded = self.loaded.info.get("heatmap_provenance")
        if recorded is not None:
            differences = HeatmapProvenance.from_dict(recorded).differences(stored)
            if differences:
                raise ConfigError(
                    f"{self.model_url} was trained on heatmap version {self.version!r} as "
                    f"{HeatmapProvenance.from_dict(recorded).summary()}; {self.store.location} "
                    f"holds it as {stored.summary()} ({'; '.join(differences)})"
                )
        else:
            log.warning(
                "%s does not record its heatmap version's provenance (trained before it was "
                "recorded): trusting %s's version %r",
                self.model_url,
                self.store.location,
                self.version,
            )
        missing = [t for t in self.targets if t not in stored.targets]
        if missing:
            raise ConfigError(
                f"heatmap version {self.version!r} has no target(s) {missing} the model reads"
            )
        return stored

    def provenance_record(self) -> dict[str, Any]:
        """What made an answer: the model, the heatmaps' source, the index."""
        return {
            "model": self.model_url,
            "model_sha256": self.model_sha256,
            "heatmap_version": self.version,
            "heatmap_source": describe_source(self.provenance) if self.provenance else None,
            "heatmap_provenance": self.provenance.as_dict() if self.provenance else None,
            "index": self.index.location,
            "index_items": self.index.size,
            "store": self.store.location,
        }

    def heatmaps(self, pixels: np.ndarray) -> np.ndarray:
        """(B, K, S, S) float32 heatmaps of store pixels (B, S, S), the model's targets in its
        order; made and rounded as the precompute stores them (float16)."""
        if self.worker is None:
            return np.zeros((len(pixels), 0, *pixels.shape[1:]), dtype=np.float32)
        outcome = self.worker(ImageBatch(np.arange(len(pixels)), pixels))
        if outcome.failures:
            raise RuntimeError("; ".join(f.reason for f in outcome.failures))
        return outcome.heatmaps[:, self.channels].astype(np.float32)

    def answer(self, pixels: np.ndarray, k: int) -> Answer:
        """The answer for one image's store pixels (S, S)."""
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        heat = self.heatmaps(pixels[None])
        seconds["heatmaps"] = time.perf_counter() - start
        start = time.perf_counter()
        scores = score_images(
            self.loaded.model,
            self.loaded.config.loss,
            self.prompts,
            torch.from_numpy(pixels[None, None].astype(np.float32)),
            torch.from_numpy(heat),
            self.compute,
        )
        seconds["model"] = time.perf_counter() - start
        start = time.perf_counter()
        similarity, rows = self.index.top_k(scores.image, k)
        hits = neighbours(self.index, self.store, similarity[0], rows[0])
        seconds["neighbours"] = time.perf_counter() - start
        return Answer(scores, heat[0], hits, seconds)


def input_folder(image: InputImage) -> str:
    """``<file name>-<sha256[:12]>``: one folder per file content, readable."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image.path).stem)[:60] or "input"
    return f"{stem}-{image.sha256[:12]}"


def slug(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", target).strip("-").lower() or "target"


def write_explanation(
    explainer: Explainer,
    image: InputImage,
    answer: Answer,
    folder: Path,
    settings: ExplainSettings,
) -> dict[str, Any]:
    """Every file of one input (see the module docstring); returns explain.json."""
    folder.mkdir(parents=True, exist_ok=True)
    pages.write_png(
        pages.render_overlay(image.pixels, np.zeros_like(image.pixels), settings.overlay_size),
        folder / "image.png",
    )
    overlays: dict[str, str] = {}
    captures: dict[str, str] = {}
    series: dict[str, str] = {}
    for number, (target, heat) in enumerate(
        zip(explainer.targets, answer.heatmaps, strict=True), start=1
    ):
        rgb = pages.render_overlay(image.pixels, heat, settings.overlay_size)
        name = f"heatmap-{slug(target)}"
        pages.write_png(rgb, folder / f"{name}.png")
        overlays[target] = f"{name}.png"
        if settings.dicom:
            write_heatmap_capture(
                overlay=rgb,
                target=target,
                source=image.dataset,
                # One series per target: a viewer lists each under its target's name.
                series_uid=series.setdefault(target, generate_uid()),
                instance_number=1,
                series_number=SERIES_NUMBER + number,
                out=folder / "dicom" / f"{name}.dcm",
                description=f"DAug heatmap: {target}",
            )
            captures[target] = f"dicom/{name}.dcm"
    indices = [n["index"] for n in answer.neighbours]
    pages.write_hit_images(
        answer.neighbours, explainer.store.read_images(indices), folder, "neighbour"
    )
    probabilities = answer.scores.probabilities[0]
    record = {
        "input": image.path,
        "id": folder.name,
        "sha256": image.sha256,
        "image": "image.png",
        "probabilities": dict(zip(CHEXPERT_LABELS, map(float, probabilities), strict=True)),
        "heatmap_targets": list(explainer.targets),
        "heatmap_peak": {
            t: [int(v) for v in np.unravel_index(int(np.argmax(h)), h.shape)]
            for t, h in zip(explainer.targets, answer.heatmaps, strict=True)
        },
        "overlays": overlays,
        "dicom": captures,
        "dicom_series": series,
        "neighbours": answer.neighbours,
        "seconds": {k: round(v, 4) for k, v in answer.seconds.items()},
        "provenance": explainer.provenance_record(),
    }
    np.save(folder / "heatmaps.npy", answer.heatmaps.astype(np.float16))
    write_json(record, folder / EXPLAIN_JSON)  # last: its presence marks the input done
    return record


def already_explained(folder: Path, model_sha256: str) -> dict[str, Any] | None:
    """The explain.json of an input explained before by the same model, else None."""
    path = folder / EXPLAIN_JSON
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    same = record.get("provenance", {}).get("model_sha256") == model_sha256
    return record if same else None


def explain_inputs(
    inputs: list[str],
    model: str,
    index: str,
    out: str,
    heatmap_models: str | None = None,
    settings: ExplainSettings = ExplainSettings(),
    compute: Compute | None = None,
    progress: ProgressReporter | None = None,
) -> dict[str, Any]:
    """Explain every input (see the module docstring); returns the run's summary."""
    start = time.perf_counter()
    explainer = Explainer(model, index, heatmap_models, compute)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    files = find_inputs([Path(p) for p in inputs])
    if progress is not None:
        progress.total = len(files)
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    skipped = 0
    stage_seconds: dict[str, list[float]] = {}
    for path in files:
        try:
            decode_start = time.perf_counter()
            image = read_input(path, explainer.ingest)
            decoded = time.perf_counter() - decode_start
            folder = root / input_folder(image)
            record = already_explained(folder, explainer.model_sha256)
            if record is not None:
                skipped += 1
            else:
                answer = explainer.answer(image.pixels, settings.neighbours)
                answer.seconds["decode"] = decoded
                write_start = time.perf_counter()
                record = write_explanation(explainer, image, answer, folder, settings)
                answer.seconds["outputs"] = time.perf_counter() - write_start
                for stage, value in answer.seconds.items():
                    stage_seconds.setdefault(stage, []).append(value)
            results.append(record)
        except InputError as exc:
            failures.append({"input": str(path), "reason": exc.reason, "detail": exc.detail})
            log.warning("not explained: %s", exc)
        if progress is not None:
            progress.advance(1)
    table = pd.DataFrame(failures, columns=["input", "reason", "detail"])
    table.to_csv(root / FAILURES_CSV, index=False)
    page = pages.explain_page(results, failures, root, f"daug explain: {len(results)} input(s)")
    return {
        "out": str(root),
        "inputs": len(files),
        "explained": len(results) - skipped,
        "skipped": skipped,
        "failed": len(failures),
        "failures": failures,
        "page": str(page),
        "model_sha256": explainer.model_sha256,
        "heatmap_source": explainer.provenance_record()["heatmap_source"],
        "mean_seconds": {k: round(float(np.mean(v)), 4) for k, v in stage_seconds.items()},
        "seconds": round(time.perf_counter() - start, 2),
        "results": [
            {
                "input": r["input"],
                "id": r["id"],
                "top": sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:3],
                "overlays": r["overlays"],
            }
            for r in results
        ],
    }


@flow(name="explain", flow_run_name=run_namer("explain", "out"))
def explain_flow(
    inputs: list[str],
    model: str,
    index: str,
    out: str,
    heatmap_models: str | None = None,
    explain: ExplainSettings = ExplainSettings(),
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Explain new studies: probabilities, heatmaps and similar past studies per input.

    Args:
        inputs: DICOM, JPG or PNG files, or folders of them (an inbox a scanner exports to).
        model: a trained contrastive checkpoint (``daug train``'s ``OUT/best``).
        index: the store the model was trained on, indexed for it (``daug index``).
        out: output folder; inputs it already holds an explanation of (same file, same model)
            are skipped.
        heatmap_models: where the models of the model's heatmap version are: a student
            checkpoint, or the teacher's train-generator folder (checked against the version).
        explain: what each explanation shows.
        compute: device and precision.
    """
    key = artifact_key("explain", Path(out).name)
    progress = ProgressReporter(f"{key}-progress", 0, "inputs explained")
    summary = explain_inputs(
        inputs, model, index, out, heatmap_models, explain, compute.resolve(), progress
    )
    rows = [
        {"input": r["input"], **{name: round(p, 3) for name, p in r["top"]}}
        for r in summary["results"]
    ]
    table_artifact(f"{key}-answers", pd.DataFrame(rows), "top-3 class probabilities per input")
    if summary["failures"]:
        table_artifact(f"{key}-failures", pd.DataFrame(summary["failures"]), "inputs not explained")
    pictures = [
        image_markdown(Path(out) / r["id"] / overlay, f"{Path(r['input']).name}: {target}")
        for r in summary["results"][:ARTIFACT_INPUTS]
        for target, overlay in list(r["overlays"].items())[:1]
    ]
    markdown_artifact(
        key,
        f"# explain\n\n{summary['explained']} explained, {summary['skipped']} already done, "
        f"{summary['failed']} failed; every input: `{summary['page']}`\n\n" + "\n\n".join(pictures),
        "daug explain summary",
    )
    return summary
