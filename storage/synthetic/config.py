"""Typed configuration of the synthetic MIMIC-CXR release, with named presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from daug_core.labels import CHEXPERT_LABELS
from daug_core.settings import ConfigError, check_choices, described

ImageFormat = Literal["dicom", "jpg"]

# Labels a study can carry as a rendered finding. "No Finding" is derived (true iff none of
# these is present) and "Lung Opacity" is additionally implied by every parenchymal opacity.
RENDERABLE_FINDINGS: tuple[str, ...] = tuple(n for n in CHEXPERT_LABELS if n != "No Finding")

# Per-study probability of each finding GIVEN that the study is abnormal. Loosely follows the
# MIMIC-CXR label frequencies (effusion, devices, atelectasis and cardiomegaly common;
# pneumothorax and nodules uncommon; fracture and "pleural other" rare) but lifts the rare
# classes so that a 200-study demo release still has a handful of positives per class.
DEFAULT_PREVALENCES: tuple[tuple[str, float], ...] = (
    ("Atelectasis", 0.24),
    ("Cardiomegaly", 0.25),
    ("Consolidation", 0.10),
    ("Edema", 0.15),
    ("Enlarged Cardiomediastinum", 0.08),
    ("Fracture", 0.03),
    ("Lung Lesion", 0.08),
    ("Lung Opacity", 0.08),
    ("Pleural Effusion", 0.30),
    ("Pleural Other", 0.03),
    ("Pneumonia", 0.12),
    ("Pneumothorax", 0.08),
    ("Support Devices", 0.33),
)

# (cause, effect, probability): clinically linked findings co-occur more often than
# independent draws would give (congestive failure: edema with effusion and a big heart;
# pneumonia with consolidation; effusion with compressive basal atelectasis).
DEFAULT_COOCCURRENCE: tuple[tuple[str, str, float], ...] = (
    ("Edema", "Pleural Effusion", 0.5),
    ("Edema", "Cardiomegaly", 0.45),
    ("Pneumonia", "Consolidation", 0.35),
    ("Pleural Effusion", "Atelectasis", 0.3),
)


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What the synthetic release looks like. Every field has a sane default.

    Rates are probabilities per unit named in the field (patient, study or image).
    """

    studies: int = described(200, "number of studies")
    # Nominal image side in pixels; each image's Rows/Columns vary independently around it.
    size: int = described(128, "nominal image side in pixels")
    image_format: ImageFormat = described(
        "dicom", "dicom (MIMIC-CXR) or jpg (MIMIC-CXR-JPG)", option="format"
    )
    # Write the four release CSVs as .csv.gz (like the real release) instead of .csv.
    gzip_csv: bool = described(False, "write the CSVs as .csv.gz (like the real release)")
    # Std of additive Gaussian pixel noise on the [0, 1] phantom, scaled per patient by
    # 0.6-1.4. Kept modest: a previous trial found strong pixel noise drowned the lesions in
    # the diffusion heatmaps.
    noise: float = 0.012
    # train / validate / test fractions, assigned per patient (never splits a patient).
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Fraction of studies with no finding at all ("No Finding" true, all masks empty).
    normal_fraction: float = 0.35
    prevalences: tuple[tuple[str, float], ...] = DEFAULT_PREVALENCES
    cooccurrence: tuple[tuple[str, str, float], ...] = DEFAULT_COOCCURRENCE
    # Release imperfections the reader must tolerate.
    missing_report_rate: float = 0.02  # study without sSTUDY.txt (and without label rows)
    missing_label_rate: float = 0.02  # study with a report but absent from both label CSVs
    missing_split_rate: float = 0.01  # image absent from the split CSV
    # Per-mention probability that a labeler reads a mention wrongly; NegBio and CheXpert
    # err independently, so the two label CSVs disagree on a few percent of mentions.
    labeler_noise: float = 0.03
    # Fraction of DICOMs stored MONOCHROME1 (inverted) and fraction with window tags /
    # rescale tags. Ignored for JPG output.
    monochrome1_rate: float = 0.15
    window_rate: float = 0.5
    rescale_rate: float = 0.4

    def __post_init__(self) -> None:
        check_choices(self)
        if self.studies < 1:
            raise ConfigError(f"SynthConfig.studies must be >= 1, got {self.studies}")
        if not 32 <= self.size <= 4096:
            raise ConfigError(f"SynthConfig.size must be in [32, 4096], got {self.size}")
        if not 0.0 <= self.noise <= 0.2:
            raise ConfigError(f"SynthConfig.noise must be in [0, 0.2], got {self.noise}")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions):
            raise ConfigError(f"SynthConfig.split_fractions invalid: {self.split_fractions}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ConfigError(f"SynthConfig.split_fractions must sum to 1: {self.split_fractions}")
        for name, p in self.prevalences:
            _check_label(name, "prevalences")
            _check_rate(p, f"prevalences[{name}]")
        for cause, effect, p in self.cooccurrence:
            _check_label(cause, "cooccurrence")
            _check_label(effect, "cooccurrence")
            _check_rate(p, f"cooccurrence[{cause}->{effect}]")
        for field_name in (
            "normal_fraction",
            "missing_report_rate",
            "missing_label_rate",
            "missing_split_rate",
            "labeler_noise",
            "monochrome1_rate",
            "window_rate",
            "rescale_rate",
        ):
            _check_rate(getattr(self, field_name), field_name)


def _check_label(name: str, where: str) -> None:
    if name not in RENDERABLE_FINDINGS:
        raise ConfigError(f"SynthConfig.{where}: {name!r} is not a renderable CheXpert finding")


def _check_rate(value: float, where: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"SynthConfig.{where} must be a probability in [0, 1], got {value}")


SYNTH_PRESETS: Mapping[str, SynthConfig] = MappingProxyType(
    {
        # unit tests and CI smoke runs
        "tiny": SynthConfig(studies=12, size=64),
        # the embedded demo data set
        "demo": SynthConfig(),
        # throughput benchmark / larger local experiments
        "bench": SynthConfig(studies=1000, size=128),
    }
)


@dataclass(frozen=True, kw_only=True)
class ReleaseChangeConfig:
    """How much of the base release changes. Study fractions are of the base's studies,
    ``pixel_fraction`` of its images; a positive fraction changes at least one."""

    new_fraction: float = described(0.05, "new studies, fraction of the base's")
    relabel_fraction: float = described(0.03, "studies with a flipped label")
    report_fraction: float = described(0.02, "studies with a changed report")
    pixel_fraction: float = described(0.02, "images with new pixels")
    remove_fraction: float = described(0.02, "studies removed")
    # Nominal side of the new studies' images; None: the base's (median of Rows, Columns).
    size: int | None = described(None, "new images' side (default: the base's)")

    def __post_init__(self) -> None:
        for name in (
            "new_fraction",
            "relabel_fraction",
            "report_fraction",
            "pixel_fraction",
            "remove_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"ReleaseChangeConfig.{name} must be in [0, 1], got {value}")
        changed = self.relabel_fraction + self.report_fraction + self.remove_fraction
        if changed > 0.9:
            raise ConfigError(
                f"relabel + report + remove fractions change {changed:.0%} of the studies; "
                "keep them under 90 % so that pixel changes have studies left"
            )
        if self.size is not None and not 32 <= self.size <= 4096:
            raise ConfigError(f"ReleaseChangeConfig.size must be in [32, 4096], got {self.size}")
