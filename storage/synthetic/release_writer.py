"""Write a whole synthetic MIMIC-CXR release plus its ground truth.

``out/release/``      exactly the MIMIC-CXR layout (files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm
                      or .jpg, sSTUDY.txt reports, the four mimic-cxr-2.0.0-*.csv[.gz])
``out/ground_truth/`` labels.csv and masks.zarr (see :mod:`ground_truth`)

Both are built under ``*.partial`` names and renamed into place at the end, so an
interrupted run never leaves a release that looks complete. Each study is synthesised by a
pure function of (seed, config, plan) (:func:`synthesize_study`) and then written
(:func:`write_study`); the split keeps rendering and file I/O separately timed and would let
studies run in parallel later.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from daug_core.labels import CHEXPERT_LABELS
from storage.synthetic.cohort import (
    FakeIdentity,
    PatientPlan,
    StudyPlan,
    draw_identity,
    patient_seed,
    plan_cohort,
    study_seed,
)
from storage.synthetic.config import SynthConfig
from storage.synthetic.dicom_writer import (
    DicomEncoding,
    DicomStudyInfo,
    ImageUids,
    build_dataset,
    draw_encoding,
    view_code_meaning,
    write_dicom,
)
from storage.synthetic.findings import StudyFindings, draw_study_findings
from storage.synthetic.ground_truth import MaskStore, write_labels
from storage.synthetic.ids import draw_dicom_id, draw_uid, image_path, report_path
from storage.synthetic.jpeg_writer import write_jpeg
from storage.synthetic.labeler import LabelerStyle, LabelValue, format_label, label_row
from storage.synthetic.mentions import draw_mentions
from storage.synthetic.phantom import Anatomy, View, sample_anatomy, sample_pose
from storage.synthetic.release_tables import (
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    SPLIT_COLUMNS,
    Row,
    table_path,
    write_table,
)
from storage.synthetic.render import RenderedImage, render_image
from storage.synthetic.report_templates import ReportContext, write_report

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


class ReleaseExistsError(FileExistsError):
    """The output directory already holds a release or ground truth."""


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_release` wrote."""

    release_dir: Path
    ground_truth_dir: Path
    labels_csv: Path
    masks_zarr: Path
    patients: int
    studies: int
    images: int
    frontal_images: int
    lateral_images: int
    reports_written: int
    reports_missing: int
    # studies whose TRUE findings include the label (14 CheXpert labels, incl. No Finding)
    label_positive_studies: Mapping[str, int]
    seconds: float
    render_seconds: float  # phantom + lesion rendering, reports, labels (pure compute)
    write_seconds: float  # DICOM/JPG, masks, reports and CSV files


@dataclass(frozen=True)
class SynthImage:
    dicom_id: str
    view_position: str  # as written to the metadata: PA, AP, LATERAL or LL
    rendered: RenderedImage
    encoding: DicomEncoding  # drawn for both formats; used for DICOM output only
    uids: ImageUids
    pixel_spacing_mm: float
    orientation: str  # PatientOrientationCodeSequence meaning: Erect, Recumbent or ""
    in_split: bool


@dataclass(frozen=True)
class SynthStudy:
    """Everything one study writes, computed without touching the file system."""

    patient: PatientPlan
    plan: StudyPlan
    findings: StudyFindings
    truth: dict[str, bool]
    images: tuple[SynthImage, ...]
    description: str
    procedure_code: str
    report: str | None  # None: the report file is missing from the release
    chexpert: dict[str, LabelValue] | None  # None: study absent from the label CSVs
    negbio: dict[str, LabelValue] | None
    dicom: DicomStudyInfo


def _choose_views(rng: np.random.Generator, findings: StudyFindings) -> tuple[bool, list[View]]:
    """Portable AP for sicker patients (tubes, fluid), PA + lateral for ambulatory ones."""
    names = findings.names
    p_portable = 0.25 + 0.45 * ("Support Devices" in names)
    p_portable += 0.15 * bool(names & {"Edema", "Pleural Effusion", "Pneumothorax"})
    portable = rng.random() < min(p_portable, 0.9)
    if portable:
        options: list[list[View]] = [["AP"], ["AP", "AP"], ["AP", "LATERAL"]]
        weights = [0.8, 0.08, 0.12]
    else:
        options = [["PA", "LATERAL"], ["PA"], ["PA", "LATERAL", "LATERAL"], ["PA", "LATERAL", "PA"]]
        weights = [0.82, 0.06, 0.06, 0.06]
    return portable, options[int(rng.choice(len(options), p=weights))]


def _procedure(
    rng: np.random.Generator, portable: bool, views: list[View], findings: StudyFindings
) -> tuple[str, str]:
    """(PerformedProcedureStepDescription, procedure code)."""
    if portable:
        if "Support Devices" in findings.names and rng.random() < 0.3:
            return "CHEST PORT. LINE PLACEMENT", "CXRPORTLINE"
        return "CHEST (PORTABLE AP)", "CXRPORT"
    if len(views) == 1:
        return "CHEST (SINGLE VIEW)", "CXR1V"
    if rng.random() < 0.12:
        return "CHEST (PRE-OP PA AND LAT)", "CXRPREOP"
    return "CHEST (PA AND LAT)", "CXR2V"


def synthesize_study(
    seed: int,
    config: SynthConfig,
    patient: PatientPlan,
    study: StudyPlan,
    anatomy: Anatomy,
    identity: FakeIdentity,
) -> SynthStudy:
    """Findings, images, masks, report and label rows of one study (pure compute)."""
    streams = [np.random.default_rng(s) for s in study_seed(seed, patient, study).spawn(9)]
    presence, lesions, views_rng, pose_rng, report_rng, chexpert_rng, negbio_rng = streams[:7]
    header_rng, missing_rng = streams[7:]

    findings = draw_study_findings(presence, lesions, config)
    truth = findings.labels()
    portable, views = _choose_views(views_rng, findings)
    description, procedure_code = _procedure(views_rng, portable, views, findings)

    images = []
    for view in views:
        pose = sample_pose(pose_rng, view, config.size)
        rendered = render_image(anatomy, pose, findings, config.noise)
        view_position: str = view
        if view == "LATERAL" and views_rng.random() < 0.1:
            view_position = "LL"
        if view == "AP":
            orientation = str(views_rng.choice(["Erect", "Recumbent", ""], p=[0.5, 0.4, 0.1]))
        else:
            orientation = "Erect"
        # Drawn for JPG too, so that one seed gives the same cohort and ids in both formats,
        # as MIMIC-CXR and MIMIC-CXR-JPG share their dicom_ids.
        encoding = draw_encoding(
            header_rng, config.monochrome1_rate, config.window_rate, config.rescale_rate
        )
        images.append(
            SynthImage(
                dicom_id=draw_dicom_id(header_rng),
                view_position=view_position,
                rendered=rendered,
                encoding=encoding,
                uids=ImageUids(sop_instance=draw_uid(header_rng), series=draw_uid(header_rng)),
                orientation=orientation,
                pixel_spacing_mm=pose.pixel_spacing_mm,
                in_split=bool(missing_rng.random() >= config.missing_split_rate),
            )
        )

    report_missing = missing_rng.random() < config.missing_report_rate
    labels_missing = report_missing or missing_rng.random() < config.missing_label_rate
    mentions = draw_mentions(report_rng, truth)
    ctx = ReportContext(examination=description, sex=identity.sex, has_prior=study.number > 0)
    report = write_report(mentions, findings, ctx, report_rng)
    chexpert = label_row(mentions, chexpert_rng, config.labeler_noise, LabelerStyle.CHEXPERT)
    negbio = label_row(mentions, negbio_rng, config.labeler_noise, LabelerStyle.NEGBIO)
    dicom = DicomStudyInfo(
        identity=identity,
        study_uid=draw_uid(header_rng),
        study_date=study.study_date,
        study_time=study.study_time,
        study_id=str(int(header_rng.integers(10_000, 99_999))),
        accession=str(int(header_rng.integers(10**7, 10**8))),
        description=description,
        procedure_code=procedure_code,
    )
    return SynthStudy(
        patient=patient,
        plan=study,
        findings=findings,
        truth=truth,
        images=tuple(images),
        description=description,
        procedure_code=procedure_code,
        report=None if report_missing else report,
        chexpert=None if labels_missing else chexpert,
        negbio=None if labels_missing else negbio,
        dicom=dicom,
    )


@dataclass
class _Tables:
    """Rows accumulated while writing studies (mutable on purpose: an accumulator)."""

    metadata: list[Row]
    split: list[Row]
    chexpert: list[Row]
    negbio: list[Row]
    truth: list[Row]


def write_study(
    root: Path, masks: MaskStore, study: SynthStudy, config: SynthConfig, tables: _Tables
) -> None:
    """Write one study's images, masks and report; append its CSV rows to ``tables``."""
    subject_id = study.patient.subject_id
    study_id = study.plan.study_id
    suffix = ".dcm" if config.image_format == "dicom" else ".jpg"
    for number, image in enumerate(study.images, start=1):
        path = root / image_path(subject_id, study_id, image.dicom_id, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = image.rendered.pixels
        if config.image_format == "dicom":
            ds = build_dataset(
                pixels,
                image.encoding,
                study.dicom,
                image.view_position,
                image.orientation,
                number,
                image.uids,
                image.pixel_spacing_mm,
            )
            write_dicom(path, ds)
        else:
            write_jpeg(path, pixels)
        masks.write(image.dicom_id, image.rendered.masks, study_id, image.view_position)
        rows, columns = pixels.shape
        tables.metadata.append(
            (
                image.dicom_id,
                subject_id,
                study_id,
                study.description,
                image.view_position,
                rows,
                columns,
                study.plan.study_date,
                f"{study.plan.study_time:.3f}".rstrip("0").rstrip("."),
                study.description,
                view_code_meaning(image.view_position),
                image.orientation,
            )
        )
        if image.in_split:
            tables.split.append((image.dicom_id, study_id, subject_id, study.patient.split))
        tables.truth.append(
            (
                image.dicom_id,
                study_id,
                subject_id,
                image.view_position,
                *(int(study.truth[name]) for name in CHEXPERT_LABELS),
            )
        )
    if study.report is not None:
        (root / report_path(subject_id, study_id)).write_text(study.report, encoding="utf-8")
    for target, row in ((tables.chexpert, study.chexpert), (tables.negbio, study.negbio)):
        if row is not None:
            target.append(
                (subject_id, study_id, *(format_label(row[name]) for name in CHEXPERT_LABELS))
            )


def write_synthetic_release(
    out: Path,
    config: SynthConfig,
    seed: int,
    progress: ProgressCallback | None = None,
    *,
    overwrite: bool = False,
) -> SynthSummary:
    """Generate a deterministic synthetic MIMIC-CXR release under ``out``.

    Same ``seed`` and ``config`` give byte-identical files. ``progress`` is called with
    (done_studies, total_studies) after every study. Raises :class:`ReleaseExistsError` if
    ``out/release`` or ``out/ground_truth`` exists, unless ``overwrite``.
    """
    start = time.perf_counter()
    out = Path(out)
    release_dir, truth_dir = out / "release", out / "ground_truth"
    for final in (release_dir, truth_dir):
        if final.exists():
            if not overwrite:
                raise ReleaseExistsError(
                    f"{final} exists; --overwrite (overwrite=True) replaces it"
                )
            shutil.rmtree(final)
    partial_release = out / "release.partial"
    partial_truth = out / "ground_truth.partial"
    for partial in (partial_release, partial_truth):
        if partial.exists():
            shutil.rmtree(partial)  # left over by an interrupted run
        partial.mkdir(parents=True)

    plan = plan_cohort(seed, config.studies, config.split_fractions)
    total = plan.study_count
    logger.info(
        "synthesizing %d studies of %d patients (size %d, %s) into %s",
        total,
        len(plan.patients),
        config.size,
        config.image_format,
        out,
    )
    masks = MaskStore(partial_truth / "masks.zarr", seed)
    tables = _Tables([], [], [], [], [])
    render_s = write_s = 0.0
    done = frontal = lateral = reports = 0
    positives = dict.fromkeys(CHEXPERT_LABELS, 0)
    for patient in plan.patients:
        t0 = time.perf_counter()
        patient_rng = np.random.default_rng(patient_seed(seed, patient))
        identity = draw_identity(patient_rng, patient.studies[0].study_date)
        anatomy = sample_anatomy(patient_rng, female=identity.sex == "F")
        render_s += time.perf_counter() - t0
        for study_plan in patient.studies:
            t0 = time.perf_counter()
            study = synthesize_study(seed, config, patient, study_plan, anatomy, identity)
            t1 = time.perf_counter()
            write_study(partial_release, masks, study, config, tables)
            t2 = time.perf_counter()
            render_s += t1 - t0
            write_s += t2 - t1
            for name, value in study.truth.items():
                positives[name] += int(value)
            frontal += sum(im.view_position in ("PA", "AP") for im in study.images)
            lateral += sum(im.view_position in ("LATERAL", "LL") for im in study.images)
            reports += study.report is not None
            done += 1
            if progress is not None:
                progress(done, total)

    t0 = time.perf_counter()
    by_image = sorted(tables.metadata, key=lambda r: (r[1], r[2], r[0]))
    write_table(
        table_path(partial_release, "metadata", config.gzip_csv), METADATA_COLUMNS, by_image
    )
    write_table(
        table_path(partial_release, "split", config.gzip_csv),
        SPLIT_COLUMNS,
        sorted(tables.split, key=lambda r: (r[2], r[1], r[0])),
    )
    for name, rows in (("chexpert", tables.chexpert), ("negbio", tables.negbio)):
        write_table(
            table_path(partial_release, name, config.gzip_csv),
            LABEL_COLUMNS,
            sorted(rows, key=lambda r: (r[0], r[1])),
        )
    write_labels(partial_truth / "labels.csv", tables.truth)
    os.replace(partial_release, release_dir)
    os.replace(partial_truth, truth_dir)
    write_s += time.perf_counter() - t0

    summary = SynthSummary(
        release_dir=release_dir,
        ground_truth_dir=truth_dir,
        labels_csv=truth_dir / "labels.csv",
        masks_zarr=truth_dir / "masks.zarr",
        patients=len(plan.patients),
        studies=total,
        images=len(tables.metadata),
        frontal_images=frontal,
        lateral_images=lateral,
        reports_written=reports,
        reports_missing=total - reports,
        label_positive_studies=MappingProxyType(positives),
        seconds=time.perf_counter() - start,
        render_seconds=render_s,
        write_seconds=write_s,
    )
    logger.info(
        "wrote %d images / %d studies / %d patients in %.1f s (render %.1f s, write %.1f s)",
        summary.images,
        summary.studies,
        summary.patients,
        summary.seconds,
        summary.render_seconds,
        summary.write_seconds,
    )
    return summary
