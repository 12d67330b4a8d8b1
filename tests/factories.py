"""Hand-made DICOM files and tiny MIMIC-layout releases for tests with exact expectations."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from daug_core.diffusion.config import TranslationConfig
from daug_core.labels import CHEXPERT_LABELS
from storage.store.heatmaps import HeatmapProvenance
from storage.store.image import ImageStore
from storage.synthetic.dicom_writer import DicomStudyInfo

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


def subject(n: int) -> dict[str, str]:
    """MIMIC-shaped subject and study ids of item ``n``."""
    return {"subject_id": f"1{n % 10}{n:06d}", "study_id": f"5{n:07d}"}


def good(n: int) -> MiniItem:
    """Item ``n``: a decodable gradient image, Cardiomegaly positive."""
    return MiniItem(
        dicom_id(n),
        **subject(n),
        labels={"Cardiomegaly": 1.0},
        content=dicom_bytes(gradient(top=1000 + 37 * n)),
    )


# High-Throughput JPEG 2000 (lossless): a compressed syntax pydicom has no installed decoder
# for, with or without the dicom-codecs extra (JPEG-LS was one until highdicom brought
# pyjpegls).
UNDECODABLE_SYNTAX = "1.2.840.10008.1.2.4.201"

# The bad-input matrix of ingest: each bad file's quarantine reason and content.
BAD = {
    "truncated": dicom_bytes(gradient())[:-300],
    "not_dicom": b"<html>not a dicom</html>" * 20,
    "no_pixel_data": dicom_bytes(gradient(), with_pixels=False),
    "unsupported_transfer_syntax": dicom_bytes(
        gradient(),
        transfer_syntax=UNDECODABLE_SYNTAX,
        pixel_data=b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\x04\x00\x00\x00abcd",
    ),
    "degenerate_size": dicom_bytes(np.full((1, 1), 5, np.uint16)),
    "constant_image": dicom_bytes(np.full((8, 8), 5, np.uint16)),
    "pixel_data_size_mismatch": retag(dicom_bytes(gradient()), Rows=20),
    "image_too_large": retag(dicom_bytes(gradient()), Rows=65535, Columns=65535),
    "non_finite_pixels": dicom_bytes(gradient(), rescale=(math.nan, 0.0)),
    "not_a_file": b"replaced by a FIFO in bad_release",
}


def source_file(root: Path, n: int) -> Path:
    """Where item ``n``'s DICOM file lies in a release at ``root``."""
    ids = subject(n)
    sid = ids["subject_id"]
    return root / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{ids['study_id']}" / f"{dicom_id(n)}.dcm"


def bad_release(root: Path) -> Path:
    """A release of 6 good items (one of them, item 3, listed twice with rows that disagree),
    one item per :data:`BAD` file, a missing file, an item without a report and a dicom_id that
    would escape the release folder."""
    items = [good(n) for n in range(6)]
    for k, content in enumerate(BAD.values()):
        items.append(MiniItem(dicom_id(100 + k), **subject(100 + k), content=content))
    items.append(MiniItem(dicom_id(200), **subject(200), content=None))  # missing file
    items.append(MiniItem(dicom_id(201), **subject(201), content=good(1).content, report=None))
    # a second metadata row of item 3 that disagrees (another view): item 3 is refused
    items.append(MiniItem(dicom_id(3), **subject(3), view="AP", content=good(3).content))
    items.append(MiniItem("../../../../../escape", **subject(202), content=None))
    write_mini_release(root, items)
    replace_with_fifo(source_file(root, 100 + list(BAD).index("not_a_file")))
    return root


__all__ = [
    "BAD",
    "MiniItem",
    "bad_release",
    "call_within",
    "dicom_bytes",
    "dicom_id",
    "good",
    "gradient",
    "replace_with_fifo",
    "retag",
    "source_file",
    "subject",
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


# The small stores of the store tests: fill_images's images (16 px, shards of 4 items) and
# heatmaps of three targets (8 px).
STORE_SIZE, STORE_SHARD = 16, 4
HEATMAP_TARGETS = ("+No Finding", "+Pleural", "+Lung Lesion")
PROVENANCE = fake_heatmap_provenance(HEATMAP_TARGETS, 8)


def fill_images(store: ImageStore, n: int, bad: Sequence[int] = ()) -> None:
    """``n`` items: splits alternate train/test; items in ``bad`` are quarantined."""
    store.register(
        pd.DataFrame(
            {"dicom_id": [f"d{i}" for i in range(n)], "split": ["train", "test"] * (n // 2)}
        )
    )
    store.write_images(np.arange(n), np.random.default_rng(0).random((n, STORE_SIZE, STORE_SIZE)))
    for shard in range(-(-n // STORE_SHARD)):
        idx = np.arange(shard * STORE_SHARD, min(n, (shard + 1) * STORE_SHARD))
        status = ["quarantined" if i in bad else "ok" for i in idx]
        store.write_part(shard, pd.DataFrame({"index": idx, "status": status}))
    store.mark_done([i for i in range(n) if i not in bad])
    store.consolidate()


INDEX_BYTES = 16  # one (offset, nbytes) uint64 pair per inner chunk in a shard index


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def inner_chunk_middle(shard_file: Path, position: int, chunks: int) -> int:
    """Offset of the middle byte of inner chunk ``position`` (Zarr v3 sharding: the index of
    ``chunks`` (offset, nbytes) pairs plus its 4-byte CRC sits at the end of the file)."""
    data = shard_file.read_bytes()
    index = np.frombuffer(data[-(chunks * INDEX_BYTES + 4) : -4], dtype="<u8").reshape(-1, 2)
    offset, nbytes = (int(v) for v in index[position])
    return offset + nbytes // 2


def corrupt_item(array_dir: Path, index: int, shard_items: int | None, trailing: int) -> None:
    """Flip one byte inside item ``index``'s chunk of the array stored in ``array_dir``
    (Zarr-sharded by ``shard_items`` items, or not when None); ``trailing`` is the number of
    zero chunk coordinates after the item's (2 for images, 3 for heatmaps)."""
    rest = ["0"] * trailing
    if shard_items is None:
        flip_byte(array_dir.joinpath("c", str(index), *rest))
        return
    shard_file = array_dir.joinpath("c", str(index // shard_items), *rest)
    flip_byte(shard_file, inner_chunk_middle(shard_file, index % shard_items, shard_items))


def write_random_checkpoints(root: Path, generator_seed: int = 0, classifier_seed: int = 1) -> Path:
    """``root/generator`` and ``root/classifier``: untrained tiny-preset models, step 0."""
    import torch

    from daug_core.checkpoints.diffusion import (
        save_classifier_checkpoint,
        save_generator_checkpoint,
    )
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


def write_random_student(
    root: Path,
    targets: Sequence[str],
    teacher_targets: Sequence[str] | None = None,
    image_size: int = 64,
) -> Path:
    """``root``: an untrained tiny-preset heatmap student of ``targets`` (step 0) recorded as
    the student of a ``image_size`` px teacher version ``v1`` of ``teacher_targets`` (default:
    the same targets)."""
    from daug_core.checkpoints.student import save_student_checkpoint
    from daug_core.student.config import student_preset
    from daug_core.student.training import init_student_state

    state = init_student_state(student_preset("tiny"), tuple(targets), seed=0)
    teacher = fake_heatmap_provenance(teacher_targets or targets, image_size)
    return save_student_checkpoint(state, root, "v1", teacher.as_dict())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(page_path: Path) -> dict[str, Any]:
    """A page in headless Chromium once its images have loaded: each image's alt and natural
    width (0: it did not render), ``window.pwned`` (set by injected script), every
    ``table[data-name]``'s body cells and the h2 headings."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            return page.evaluate(
                """({
                  widths: Array.from(document.images).map(i => [i.alt, i.naturalWidth]),
                  pwned: window.pwned === undefined ? null : window.pwned,
                  tables: Object.fromEntries(Array.from(document.querySelectorAll(
                    'table[data-name]')).map(t => [t.dataset.name, Array.from(t.tBodies[0].rows)
                      .map(r => Array.from(r.cells).map(c => c.textContent))])),
                  headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
                })"""
            )
        finally:
            browser.close()


def synthetic_study(rng: np.random.Generator) -> DicomStudyInfo:
    """The study of a synthetic chest X-ray (the DICOM writer's and derived objects' tests):
    a fixed patient, date, time, ids and description, a drawn Study Instance UID."""
    from storage.synthetic.cohort import FakeIdentity
    from storage.synthetic.ids import draw_uid

    return DicomStudyInfo(
        identity=FakeIdentity(
            patient_name="Doe^Jane", patient_id="123456789", birth_date="20900101", sex="F"
        ),
        study_uid=draw_uid(rng),
        study_date=21800506,
        study_time=84712.546,
        study_id="12345",
        accession="87654321",
        description="CHEST (PA AND LAT)",
        procedure_code="CXR2V",
    )
