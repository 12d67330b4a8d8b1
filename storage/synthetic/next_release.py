"""A second synthetic release derived from a first one, with known changes.

``daug synth-next BASE OUT`` (:func:`write_next_release`) copies ``BASE/release`` and
``BASE/ground_truth`` (the output of ``daug synth``) to ``OUT`` and then, deterministically
for a seed (default: the base's own seed):

- ``new``: appends new patients with new studies, synthesised and written by the release
  writer's own :func:`~storage.synthetic.release_writer.synthesize_study` and
  :func:`~storage.synthetic.release_writer.write_study` (so they look like the rest); they
  are the cohort's next patients (patient indices after the base's, so the same seed gives
  other random streams) with subject, study and dicom ids that collide with none of BASE;
- ``labels_changed``: flips one label of a study in both label CSVs (CheXpert and NegBio);
- ``report_changed``: appends a sentence to a study's report (checked to change the parsed
  FINDINGS or IMPRESSION);
- ``pixels_changed``: rewrites one image with new noise on its stored values (DICOM: same
  header and UIDs; JPG: re-encoded);
- ``removed``: deletes studies (their CSV rows, images, report and masks).

Changed studies are disjoint, so every image has exactly one kind. The truth goes to
``OUT/ground_truth/changes.csv`` (one row per changed image: ``dicom_id, study_id,
subject_id, ViewPosition, kind, detail``; kinds are :class:`storage.release.diff.ChangeKind`
values) and ``OUT/ground_truth/release_changes.json`` (the seed, the fractions, the counts
and the next free patient index, so a release can be derived from a derived one);
``labels.csv`` and ``masks.zarr`` are updated for the new and removed images. Like
:func:`write_synthetic_release`, everything is built under ``*.partial`` names and renamed
into place at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from daug_core.labels import CHEXPERT_LABELS
from storage.errors import ReleaseFormatError
from storage.release.diff import ChangeKind
from storage.release.reports import parse_report
from storage.synthetic.cohort import (
    PatientPlan,
    draw_identity,
    patient_seed,
    plan_cohort,
)
from storage.synthetic.config import ImageFormat, ReleaseChangeConfig, SynthConfig
from storage.synthetic.ground_truth import GROUND_TRUTH_COLUMNS, MaskStore, write_labels
from storage.synthetic.ids import STUDY_ID_RANGE, SUBJECT_ID_RANGE, patient_dir, report_path
from storage.synthetic.jpeg_writer import write_jpeg
from storage.synthetic.phantom import sample_anatomy
from storage.synthetic.release_tables import (
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    SPLIT_COLUMNS,
    table_path,
    write_table,
)
from storage.synthetic.release_writer import (
    ReleaseExistsError,
    _Tables,
    synthesize_study,
    write_study,
)

logger = logging.getLogger(__name__)

CHANGES_CSV = "changes.csv"
CHANGES_JSON = "release_changes.json"
CHANGE_TRUTH_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "study_id",
    "subject_id",
    "ViewPosition",
    "kind",
    "detail",
)
# A flipped label: positive <-> negative, uncertain or blank -> positive.
_FLIP = {"1.0": "0.0", "0.0": "1.0", "-1.0": "1.0", "": "1.0"}
_ADDED_SENTENCES = (
    "Findings were discussed with the referring clinician.",
    "Clinical correlation is recommended.",
    "A follow-up radiograph is suggested.",
    "No change since the wet read.",
)
_PIXEL_NOISE = 0.03  # std of the added noise, as a fraction of the image's stored range


@dataclass(frozen=True)
class NextReleaseSummary:
    """What :func:`write_next_release` wrote."""

    release_dir: Path
    ground_truth_dir: Path
    changes_csv: Path
    seed: int
    counts: dict[str, int]  # changed images per kind (ChangeKind values)
    studies: dict[str, int]  # changed studies per kind (pixels: studies touched)
    images: int  # images in the new release
    seconds: float


@dataclass
class _Release:
    """The base release's CSV rows as text cells (mutable: edited in place, then written)."""

    metadata: list[list[str]]
    split: list[list[str]]
    chexpert: list[list[str]]
    negbio: list[list[str]]
    truth: list[list[str]]
    gzip_csv: bool


def _count(fraction: float, total: int) -> int:
    return 0 if fraction <= 0 or total == 0 else min(total, max(1, round(fraction * total)))


def _read_rows(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    return rows[1:]


def _read_release(release: Path, truth: Path) -> _Release:
    gzip_csv = table_path(release, "metadata", True).is_file()
    if not gzip_csv and not table_path(release, "metadata", False).is_file():
        raise ReleaseFormatError(f"{release}: no mimic-cxr-2.0.0-metadata.csv[.gz]")
    tables = {
        name: _read_rows(table_path(release, name, gzip_csv))
        for name in ("metadata", "split", "chexpert", "negbio")
    }
    return _Release(truth=_read_rows(truth / "labels.csv"), gzip_csv=gzip_csv, **tables)


def _perturb_pixels(path: Path, rng: np.random.Generator) -> None:
    """New noise on the stored values; DICOM headers and UIDs unchanged."""
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.float64)
        spread = max(float(stored.max() - stored.min()), 1.0)
        noisy = stored + rng.normal(0.0, _PIXEL_NOISE * spread, stored.shape)
        top = 2 ** int(ds.BitsStored) - 1
        ds.PixelData = np.clip(np.round(noisy), 0, top).astype("<u2").tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        write_jpeg(path, pixels + rng.normal(0.0, _PIXEL_NOISE, pixels.shape))


def _as_text(rows: Sequence[Sequence[object]]) -> list[list[str]]:
    """Rows as the CSV writer would write them (``str`` of every cell)."""
    return [[str(cell) for cell in row] for row in rows]


def _infer_size(metadata: list[list[str]]) -> int:
    rows = METADATA_COLUMNS.index("Rows")
    columns = METADATA_COLUMNS.index("Columns")
    sides = [(int(r[rows]) + int(r[columns])) / 2 for r in metadata]
    return round(float(np.median(sides))) if sides else 128


def _next_patient_index(base_truth: Path) -> int:
    """The base's next free patient index: recorded by a derived base, else its patient
    count (every patient of a ``daug synth`` release has an image in labels.csv)."""
    recorded = base_truth / CHANGES_JSON
    if recorded.is_file():
        return int(json.loads(recorded.read_text())["next_patient_index"])
    subject = GROUND_TRUTH_COLUMNS.index("subject_id")
    return len({r[subject] for r in _read_rows(base_truth / "labels.csv")})


def _fresh_id(rng: np.random.Generator, bounds: tuple[int, int], taken: set[int]) -> int:
    while True:
        value = int(rng.integers(*bounds))
        if value not in taken:
            taken.add(value)
            return value


def _new_patients(seed: int, count: int, first_index: int, release: _Release) -> list[PatientPlan]:
    """``count`` new studies' patients: a cohort plan of their own, re-indexed after the
    base's patients and with ids the base does not use."""
    if count == 0:
        return []
    plan_seed = int(np.random.SeedSequence([seed, first_index]).generate_state(1)[0])
    plan = plan_cohort(plan_seed, count, SynthConfig().split_fractions)
    subject_col = METADATA_COLUMNS.index("subject_id")
    study_col = METADATA_COLUMNS.index("study_id")
    subjects = {int(r[subject_col]) for r in release.metadata}
    subjects |= {int(r[GROUND_TRUTH_COLUMNS.index("subject_id")]) for r in release.truth}
    studies = {int(r[study_col]) for r in release.metadata}
    studies |= {int(r[GROUND_TRUTH_COLUMNS.index("study_id")]) for r in release.truth}
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(8, first_index)))
    patients = []
    for number, patient in enumerate(plan.patients):
        subject_id = patient.subject_id
        if subject_id in subjects:
            subject_id = _fresh_id(rng, SUBJECT_ID_RANGE, subjects)
        subjects.add(subject_id)
        plans = []
        for study in patient.studies:
            study_id = study.study_id
            if study_id in studies:
                study_id = _fresh_id(rng, STUDY_ID_RANGE, studies)
            studies.add(study_id)
            plans.append(dataclasses.replace(study, study_id=study_id))
        patients.append(
            dataclasses.replace(
                patient,
                index=first_index + number,
                subject_id=subject_id,
                studies=tuple(plans),
            )
        )
    return patients


def write_next_release(
    base: Path,
    out: Path,
    changes: ReleaseChangeConfig | None = None,
    seed: int | None = None,
    *,
    overwrite: bool = False,
) -> NextReleaseSummary:
    """Derive ``out/release`` and ``out/ground_truth`` from the synthetic release in ``base``
    (see the module docstring). Same base, config and seed give the same files."""
    start = time.perf_counter()
    changes = changes or ReleaseChangeConfig()
    base, out = Path(base), Path(out)
    base_release, base_truth = base / "release", base / "ground_truth"
    if not (base_release / "files").is_dir() or not (base_truth / "labels.csv").is_file():
        raise ReleaseFormatError(
            f"{base} holds no synthetic release (release/files and ground_truth/labels.csv)"
        )
    release_dir, truth_dir = out / "release", out / "ground_truth"
    for final in (release_dir, truth_dir):
        if final.exists():
            if not overwrite:
                raise ReleaseExistsError(
                    f"{final} exists; --overwrite (overwrite=True) replaces it"
                )
            shutil.rmtree(final)
    partial_release, partial_truth = out / "release.partial", out / "ground_truth.partial"
    for partial, source in ((partial_release, base_release), (partial_truth, base_truth)):
        if partial.exists():
            shutil.rmtree(partial)
        shutil.copytree(source, partial)

    masks = MaskStore.open_existing(partial_truth / "masks.zarr")
    seed = masks.seed if seed is None else seed
    tables = _read_release(partial_release, partial_truth)
    dicom = next((base_release / "files").rglob("*.dcm"), None) is not None
    image_format: ImageFormat = "dicom" if dicom else "jpg"
    suffix = ".dcm" if image_format == "dicom" else ".jpg"
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))

    # ---- choose disjoint studies per kind, in one seeded order ---------------------------
    m_dicom, m_subject, m_study = (
        METADATA_COLUMNS.index(c) for c in ("dicom_id", "subject_id", "study_id")
    )
    m_view = METADATA_COLUMNS.index("ViewPosition")
    images_of: dict[str, list[list[str]]] = {}
    for row in tables.metadata:
        images_of.setdefault(row[m_study], []).append(row)
    study_ids = sorted(images_of)
    subject_of = {s: images_of[s][0][m_subject] for s in study_ids}
    labelled = {r[1] for r in tables.chexpert} & {r[1] for r in tables.negbio}
    order = [study_ids[i] for i in rng.permutation(len(study_ids))]

    removed = order[: _count(changes.remove_fraction, len(order))]
    gone = set(removed)
    rest = [s for s in order if s not in gone]
    relabelled = [s for s in rest if s in labelled][: _count(changes.relabel_fraction, len(order))]
    taken = set(relabelled)
    rest = [s for s in rest if s not in taken]

    truth_rows: list[list[str]] = []

    def note(study: str, kind: ChangeKind, detail: str, image: list[str] | None = None) -> None:
        for row in [image] if image is not None else images_of[study]:
            truth_rows.append(
                [row[m_dicom], study, row[m_subject], row[m_view], kind.value, detail]
            )

    # ---- report changes: the first candidates whose parsed text really changes -----------
    reported: list[str] = []
    wanted = _count(changes.report_fraction, len(order))
    for study in rest:
        if len(reported) == wanted:
            break
        path = partial_release / report_path(int(subject_of[study]), int(study))
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        sentence = _ADDED_SENTENCES[int(rng.integers(len(_ADDED_SENTENCES)))]
        changed = text.rstrip() + " " + sentence + "\n"
        before, after = parse_report(text), parse_report(changed)
        if (before.findings, before.impression) == (after.findings, after.impression):
            continue
        path.write_text(changed, encoding="utf-8")
        reported.append(study)
        note(study, ChangeKind.REPORT_CHANGED, f"added: {sentence}")
    taken = set(reported)
    rest = [s for s in rest if s not in taken]

    # ---- label flips, in both labelers' CSVs ---------------------------------------------
    for study in relabelled:
        column = int(rng.integers(len(CHEXPERT_LABELS)))
        details = []
        for name, rows in (("chexpert", tables.chexpert), ("negbio", tables.negbio)):
            row = next(r for r in rows if r[1] == study)
            old = row[2 + column]
            row[2 + column] = _FLIP[old]
            details.append(
                f"{name} {CHEXPERT_LABELS[column]}: {old or 'blank'} -> {row[2 + column]}"
            )
        note(study, ChangeKind.LABELS_CHANGED, "; ".join(details))

    # ---- pixel changes: images of studies no other change touched ------------------------
    candidates = sorted((r for s in rest for r in images_of[s]), key=lambda r: r[m_dicom])
    picked = (
        rng.choice(
            len(candidates),
            size=min(len(candidates), _count(changes.pixel_fraction, len(tables.metadata))),
            replace=False,
        )
        if candidates
        else np.zeros(0, dtype=np.int64)
    )
    pixel_studies: set[str] = set()
    for i in sorted(int(p) for p in picked):
        row = candidates[i]
        path = (
            partial_release
            / patient_dir(int(row[m_subject]))
            / f"s{row[m_study]}"
            / f"{row[m_dicom]}{suffix}"
        )
        _perturb_pixels(path, rng)
        pixel_studies.add(row[m_study])
        note(
            row[m_study],
            ChangeKind.PIXELS_CHANGED,
            f"noise std {_PIXEL_NOISE:.0%} of the range",
            row,
        )

    # ---- removals: rows, files and masks ---------------------------------------------------
    for study in removed:
        note(study, ChangeKind.REMOVED, "study removed from the release")
        subject = subject_of[study]
        shutil.rmtree(partial_release / patient_dir(int(subject)) / f"s{study}", ignore_errors=True)
        (partial_release / report_path(int(subject), int(study))).unlink(missing_ok=True)
        folder = partial_release / patient_dir(int(subject))
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        for row in images_of[study]:
            masks.delete(row[m_dicom])
    truth_study = GROUND_TRUTH_COLUMNS.index("study_id")
    tables.metadata = [r for r in tables.metadata if r[m_study] not in gone]
    tables.split = [r for r in tables.split if r[SPLIT_COLUMNS.index("study_id")] not in gone]
    tables.chexpert = [r for r in tables.chexpert if r[1] not in gone]
    tables.negbio = [r for r in tables.negbio if r[1] not in gone]
    tables.truth = [r for r in tables.truth if r[truth_study] not in gone]

    # ---- new studies, by the release writer itself -----------------------------------------
    first_index = _next_patient_index(base_truth)
    new_count = _count(changes.new_fraction, len(order))
    patients = _new_patients(seed, new_count, first_index, tables)
    config = SynthConfig(
        studies=max(1, new_count),
        size=changes.size or _infer_size(tables.metadata),
        image_format=image_format,
        gzip_csv=tables.gzip_csv,
    )
    known_dicom_ids = {
        r[GROUND_TRUTH_COLUMNS.index("dicom_id")] for r in _read_rows(base_truth / "labels.csv")
    }
    written = _Tables([], [], [], [], [])
    for patient in patients:
        patient_rng = np.random.default_rng(patient_seed(seed, patient))
        identity = draw_identity(patient_rng, patient.studies[0].study_date)
        anatomy = sample_anatomy(patient_rng, female=identity.sex == "F")
        for plan in patient.studies:
            study = synthesize_study(seed, config, patient, plan, anatomy, identity)
            clash = [im.dicom_id for im in study.images if im.dicom_id in known_dicom_ids]
            if clash:
                raise ValueError(f"new study {plan.study_id}: dicom_id {clash[0]} exists in {base}")
            write_study(partial_release, masks, study, config, written)
            for image in study.images:
                truth_rows.append(
                    [
                        image.dicom_id,
                        str(plan.study_id),
                        str(patient.subject_id),
                        image.view_position,
                        ChangeKind.NEW.value,
                        f"new patient index {patient.index}",
                    ]
                )

    tables.metadata += _as_text(written.metadata)
    tables.split += _as_text(written.split)
    tables.chexpert += _as_text(written.chexpert)
    tables.negbio += _as_text(written.negbio)
    tables.truth += _as_text(written.truth)

    # ---- write the tables and the truth, then move everything into place ---------------------
    gz = tables.gzip_csv
    write_table(
        table_path(partial_release, "metadata", gz),
        METADATA_COLUMNS,
        sorted(tables.metadata, key=lambda r: (r[1], r[2], r[0])),
    )
    write_table(
        table_path(partial_release, "split", gz),
        SPLIT_COLUMNS,
        sorted(tables.split, key=lambda r: (r[2], r[1], r[0])),
    )
    for name, rows in (("chexpert", tables.chexpert), ("negbio", tables.negbio)):
        write_table(
            table_path(partial_release, name, gz),
            LABEL_COLUMNS,
            sorted(rows, key=lambda r: (r[0], r[1])),
        )
    write_labels(partial_truth / "labels.csv", tables.truth)
    write_table(
        partial_truth / CHANGES_CSV,
        CHANGE_TRUTH_COLUMNS,
        sorted(truth_rows, key=lambda r: (r[4], r[0])),
    )
    counts = {
        kind.value: sum(r[4] == kind.value for r in truth_rows)
        for kind in ChangeKind
        if kind is not ChangeKind.UNCHANGED
    }
    studies_changed = {
        ChangeKind.NEW.value: sum(len(p.studies) for p in patients),
        ChangeKind.PIXELS_CHANGED.value: len(pixel_studies),
        ChangeKind.LABELS_CHANGED.value: len(relabelled),
        ChangeKind.REPORT_CHANGED.value: len(reported),
        ChangeKind.REMOVED.value: len(removed),
    }
    record = {
        "base": str(base.resolve()),
        "seed": seed,
        "changes": dataclasses.asdict(changes),
        "image_format": image_format,
        "new_image_size": config.size,
        "images": counts,
        "studies": studies_changed,
        "next_patient_index": first_index + len(patients),
    }
    (partial_truth / CHANGES_JSON).write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial_release, release_dir)
    os.replace(partial_truth, truth_dir)
    summary = NextReleaseSummary(
        release_dir=release_dir,
        ground_truth_dir=truth_dir,
        changes_csv=truth_dir / CHANGES_CSV,
        seed=seed,
        counts=counts,
        studies=studies_changed,
        images=len(tables.metadata),
        seconds=time.perf_counter() - start,
    )
    logger.info("derived %s from %s: images changed per kind %s", out, base, counts)
    return summary
