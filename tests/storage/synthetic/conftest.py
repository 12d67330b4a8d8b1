"""Small synthetic releases shared by the synthetic-release tests (built once per session)."""

from __future__ import annotations

import pytest

from storage.synthetic import SynthConfig, SynthSummary, write_synthetic_release


@pytest.fixture(scope="session")
def dicom_release(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """60 DICOM studies at ~64 px: enough for every header variation and label statistics."""
    out = tmp_path_factory.mktemp("synth_dicom")
    return write_synthetic_release(out, SynthConfig(studies=60, size=64), seed=11)


@pytest.fixture(scope="session")
def jpg_release(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """A JPG release with gzip-compressed CSVs (the MIMIC-CXR-JPG flavour)."""
    out = tmp_path_factory.mktemp("synth_jpg")
    config = SynthConfig(studies=10, size=64, image_format="jpg", gzip_csv=True)
    return write_synthetic_release(out, config, seed=5)
