"""Hand-made DICOM files and tiny MIMIC-layout releases for tests with exact expectations."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from daug_core.diffusion.config import TranslationConfig
from daug_core.labels import CHEXPERT_LABELS
from storage.store.heatmaps import HeatmapProvenance

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def dicom_bytes(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    with_pixels: bool = True,
) -> bytes:
    """A valid DICOM file holding ``stored`` (uint16) with the given grey-scale tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[stored.tobytes().hex()])
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-123"
    ds.PatientBirthDate = "19700101"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if with_pixels:
        ds.PixelData = pixel_data if pixel_data is not None else stored.astype("<u2").tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def retag(data: bytes, **tags: object) -> bytes:
    """``data`` (a DICOM file) with header elements set by keyword, pixel data untouched: a
    header that no longer describes its data (``Rows=20`` on 40 rows)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def gradient(rows: int = 40, cols: int = 32, top: int = 4000) -> np.ndarray:
    """A non-constant 12-bit test pattern: a ramp plus a bright square."""
    image = np.linspace(0, top * 0.6, rows * cols).reshape(rows, cols)
    image[rows // 4 : rows // 2, cols // 4 : cols // 2] = top
    return image.astype(np.uint16)


T = TypeVar("T")


def call_within(seconds: float, function: Callable[[], T]) -> T:
    """``function()``, failing the test if it has not returned after ``seconds`` (it runs in a
    daemon thread, so code stuck opening a FIFO cannot hang the test session)."""
    outcome: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{function} did not return within {seconds} s")
    if errors:
        raise errors[0]
    return outcome[0]


def replace_with_fifo(path: Path) -> Path:
    """``path`` made a FIFO: opening it for reading waits for a writer forever."""
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


@dataclass(frozen=True)
class MiniItem:
    dicom_id: str
    subject_id: str = "10000032"
    study_id: str = "50414267"
    view: str = "PA"
    split: str | None = "train"
    labels: dict[str, float] | None = None
    content: bytes | None = None  # file bytes; None: no file written
    report: str | None = "FINDINGS: Normal heart.\nIMPRESSION: No acute process.\n"


def write_mini_release(root: Path, items: Sequence[MiniItem], gzip: bool = False) -> Path:
    """A MIMIC-CXR layout with exactly these items (metadata, split, labels, reports)."""
    suffix = ".csv.gz" if gzip else ".csv"
    meta, split, labels = [], [], {}
    for item in items:
        meta.append(
            {
                "dicom_id": item.dicom_id,
                "subject_id": item.subject_id,
                "study_id": item.study_id,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                "ViewPosition": item.view,
                "Rows": 40,
                "Columns": 32,
                "StudyDate": 21800506,
                "StudyTime": 213014.531,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                "ViewCodeSequence_CodeMeaning": "postero-anterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect",
            }
        )
        if item.split is not None:
            split.append(
                {
                    "dicom_id": item.dicom_id,
                    "study_id": item.study_id,
                    "subject_id": item.subject_id,
                    "split": item.split,
                }
            )
        if item.labels is not None:
            row: dict[str, object] = {"subject_id": item.subject_id, "study_id": item.study_id}
            row |= {name: item.labels.get(name, np.nan) for name in CHEXPERT_LABELS}
            labels[item.study_id] = row
        folder = root / "files" / f"p{item.subject_id[:2]}" / f"p{item.subject_id}"
        if item.content is not None:
            path = folder / f"s{item.study_id}" / f"{item.dicom_id}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item.content)
        if item.report is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"s{item.study_id}.txt").write_text(item.report)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(meta).to_csv(root / f"mimic-cxr-2.0.0-metadata{suffix}", index=False)
    pd.DataFrame(split, columns=["dicom_id", "study_id", "subject_id", "split"]).to_csv(
        root / f"mimic-cxr-2.0.0-split{suffix}", index=False
    )
    label_table = pd.DataFrame(
        list(labels.values()), columns=["subject_id", "study_id", *CHEXPERT_LABELS]
    )
    for kind in ("chexpert", "negbio"):
        label_table.to_csv(root / f"mimic-cxr-2.0.0-{kind}{suffix}", index=False)
    return root


def dicom_id(n: int) -> str:
    """A MIMIC-shaped dicom_id that sorts by ``n``."""
    return "-".join(f"{n:08x}" for _ in range(5))


__all__ = [
    "MiniItem",
    "call_within",
    "dicom_bytes",
    "dicom_id",
    "gradient",
    "replace_with_fifo",
    "retag",
    "write_mini_release",
]


def run_daug(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The `daug` command line in a subprocess. Wide columns: typer's error box would
    otherwise wrap long temporary paths inside the messages the tests look for. Inside the
    session's Prefect server (the ``prefect_server`` fixture) the command runs its flows
    against that server instead of starting a temporary one of its own (6-8 s each, and
    slower than Prefect's 20 s start-up limit on a loaded machine)."""
    from prefect.settings import get_current_settings

    env = os.environ | {"COLUMNS": "400", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    api = get_current_settings().api.url
    if api:
        env["PREFECT_API_URL"] = str(api)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def fake_heatmap_provenance(targets: Sequence[str], image_size: int) -> HeatmapProvenance:
    """Provenance for heatmaps no model computed (store, dataset and trainer tests)."""
    return HeatmapProvenance(
        targets=tuple(targets),
        translation=TranslationConfig(level=50, steps=3, mode="softmax", scale=100.0),
        preset="tiny",
        image_size=image_size,
        generator_sha256="a" * 64,
        classifier_sha256="b" * 64,
    )


def with_translation(provenance: HeatmapProvenance, **changes: object) -> HeatmapProvenance:
    """``provenance`` with some translation numbers changed (another heatmap version)."""
    translation = dataclasses.replace(provenance.translation, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(provenance, translation=translation)


def write_random_checkpoints(root: Path, generator_seed: int = 0, classifier_seed: int = 1) -> Path:
    """``root/generator`` and ``root/classifier``: untrained tiny-preset models, step 0."""
    import torch

    from daug_core.checkpoints import save_classifier_checkpoint, save_generator_checkpoint
    from daug_core.diffusion.classifier.training import init_classifier_state
    from daug_core.diffusion.generator import init_generator_state
    from daug_core.diffusion.presets import preset

    config = preset("tiny")
    generator = init_generator_state(
        config, generator=torch.Generator().manual_seed(generator_seed)
    )
    save_generator_checkpoint(generator, root / "generator")
    classifier = init_classifier_state(
        config, pos_weight=None, generator=torch.Generator().manual_seed(classifier_seed)
    )
    save_classifier_checkpoint(classifier, root / "classifier")
    return root
