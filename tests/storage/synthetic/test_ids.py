from __future__ import annotations

import re

import numpy as np
import pytest

from storage.synthetic.ids import (
    draw_dicom_id,
    draw_uid,
    draw_unique_ids,
    image_path,
    report_path,
)

DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


def test_dicom_id_shape() -> None:
    rng = np.random.default_rng(0)
    ids = {draw_dicom_id(rng) for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 44 and DICOM_ID.match(i) for i in ids)


def test_unique_ids_in_range() -> None:
    ids = draw_unique_ids(np.random.default_rng(1), 10_000_000, 20_000_000, 500)
    assert len(set(ids)) == 500
    assert all(10_000_000 <= i < 20_000_000 for i in ids)
    with pytest.raises(ValueError):
        draw_unique_ids(np.random.default_rng(1), 0, 10, 8)


def test_uids_are_deterministic_and_valid() -> None:
    a = draw_uid(np.random.default_rng(3))
    b = draw_uid(np.random.default_rng(3))
    assert a == b and a.is_valid and len(a) <= 64


def test_paths_follow_mimic_layout() -> None:
    did = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
    assert str(image_path(10000032, 50414267, did, ".dcm")) == (
        f"files/p10/p10000032/s50414267/{did}.dcm"
    )
    assert str(report_path(10000032, 50414267)) == "files/p10/p10000032/s50414267.txt"
