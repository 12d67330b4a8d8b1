"""Synthetic MIMIC-CXR release: the embedded default data set of the demo, tests and checks.

README section (for the lead)
=============================

``daug synth OUT --studies N --size S --seed X --format dicom|jpg [--gzip-csv]`` calls
:func:`write_synthetic_release` and writes, deterministically for a seed (byte-identical
files for the same seed, config and library versions)::

    OUT/release/                      exactly the MIMIC-CXR layout (see shared/MIMIC.md)
      files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm|.jpg
      files/pXX/pSUBJECT/sSTUDY.txt   report, in the PATIENT folder
      mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv[.gz]
    OUT/ground_truth/                 NOT part of a real release: what is really in the images
      labels.csv
      masks.zarr/

The release imitates the real one's imperfections: ~2 % of studies have no report file (and
no label rows), ~2 % more are absent from the label CSVs, ~1 % of images are absent from the
split CSV; the CheXpert and NegBio label CSVs are derived from what the report SAYS
(positive 1.0, negated 0.0, uncertain -1.0, not mentioned blank) with a little labeler noise
that differs between the two, so they disagree with the ground truth and with each other a
little. DICOMs vary like the real ones: CR and DX SOP classes, MONOCHROME1 and 2, 12 and 16
stored bits, optional rescale and window tags, non-square sizes around ``--size``, and a
FAKE PatientName / PatientID / PatientBirthDate in every header (downstream stores must
never contain them).

Ground truth
------------
``ground_truth/labels.csv`` — one row per image (also images missing from split/labels):
``dicom_id,study_id,subject_id,ViewPosition`` then one 0/1 column per CheXpert label in
:data:`daug_core.labels.CHEXPERT_LABELS` order. Values are the TRUE study findings (findings
are per study: every image of a study shows them). ``No Finding`` is 1 iff no other
finding is present (support devices count as a finding); ``Lung Opacity`` is 1 when the
study has a nonspecific opacity or any of Atelectasis, Consolidation, Edema, Lung Lesion,
Pneumonia.

``ground_truth/masks.zarr`` — a Zarr v3 group (zarr 3.1). One ``uint8`` array per image,
named by ``dicom_id``, shape ``(14, Rows, Columns)`` at the image's native pixel size,
channel ``k`` = ``CHEXPERT_LABELS[k]``, value 1 where that finding changed the image pixels
(its own change against the normal image exceeds ~1 % of the tissue/air contrast), else 0.
Array attributes: ``study_id``, ``ViewPosition``. Group attributes: ``format``,
``format_version``, ``label_order`` (the channel order), ``axes``, ``values``, ``notes``,
``seed``. Reading::

    group = zarr.open_group("OUT/ground_truth/masks.zarr", mode="r")
    masks = group[dicom_id][...]            # (14, H, W) uint8
    order = group.attrs["label_order"]

Notes: the ``No Finding`` channel is always 0; the ``Lung Opacity`` channel is the union of
its own opacity and its children's masks; on LATERAL/LL images Pneumothorax, Enlarged
Cardiomediastinum, Fracture and Pleural Other are not drawn, so those channels are 0 there
even when the study label is 1 (the other findings are drawn on laterals too). Masks of
different findings may overlap.

Rendering one image with chosen findings (tests, demos, heatmap sanity checks)::

    from storage.synthetic.render import render_image, sample_case
    case = sample_case(seed=3, view="PA", size=96)        # parameters for all 13 findings
    clean = render_image(case.anatomy, case.pose, case.findings.only(()), noise=0.012)
    ptx = render_image(case.anatomy, case.pose, case.findings.only({"Pneumothorax"}), 0.012)
    # ptx.pixels - clean.pixels is non-zero only inside ptx.masks[12]

Module map: ``config`` (SynthConfig, presets), ``cohort`` (patients, studies, ids, seeds),
``ids``, ``fields`` (drawing primitives), ``phantom`` (anatomy and the normal image),
``lesions`` (one drawable lesion per finding), ``findings`` (which findings a study has),
``render`` (composition, masks), ``mentions`` / ``report_templates`` / ``labeler``
(report text and label CSV rows), ``dicom_writer`` / ``jpeg_writer``, ``release_tables``
(the four CSVs), ``ground_truth`` (labels.csv, masks.zarr), ``release_writer``.
"""

from typing import TYPE_CHECKING, Any

from storage.synthetic.config import SYNTH_PRESETS, SynthConfig

if TYPE_CHECKING:
    from storage.synthetic.release_writer import (
        ReleaseExistsError,
        SynthSummary,
        write_synthetic_release,
    )

_WRITER_NAMES = ("ReleaseExistsError", "SynthSummary", "write_synthetic_release")


def __getattr__(name: str) -> Any:
    """The writer's names load it on first use (PEP 562): importing the light ``config`` (the
    CLI builds its options from it) must not load zarr, pydicom and the renderer."""
    if name in _WRITER_NAMES:
        from storage.synthetic import release_writer

        return getattr(release_writer, name)
    raise AttributeError(f"module 'storage.synthetic' has no attribute {name!r}")


__all__ = [
    "SYNTH_PRESETS",
    "ReleaseExistsError",
    "SynthConfig",
    "SynthSummary",
    "write_synthetic_release",
]
