import numpy as np
import pytest

from daug_core.labels import (
    CHEXPERT_LABELS,
    SUPER_CLASS_NAMES,
    UncertaintyPolicy,
    binarize,
    super_class_targets,
)

NAN = np.nan


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (UncertaintyPolicy.U_ZEROS, [1.0, 0.0, 0.0, 0.0]),
        (UncertaintyPolicy.U_ONES, [1.0, 0.0, 1.0, 0.0]),
        (UncertaintyPolicy.IGNORE, [1.0, 0.0, NAN, 0.0]),
    ],
)
def test_binarize_blank_is_negative(policy, expected):
    np.testing.assert_array_equal(binarize(np.array([1.0, 0.0, -1.0, NAN]), policy), expected)


def _row(**values: float) -> np.ndarray:
    row = np.zeros(len(CHEXPERT_LABELS))
    for name, value in values.items():
        row[CHEXPERT_LABELS.index(name.replace("_", " "))] = value
    return row


def test_super_classes_any_member_positive_and_masking():
    rows = np.stack(
        [
            _row(Cardiomegaly=1.0),  # cardiomediastinal via cardiomegaly
            _row(Edema=NAN, Pneumonia=1.0),  # positive wins over masked
            _row(Edema=NAN),  # masked member, nothing positive
            _row(No_Finding=1.0),
            _row(Lung_Opacity=1.0, Fracture=1.0),  # not used by DAug super-classes
        ]
    )
    out = super_class_targets(rows)
    names = list(SUPER_CLASS_NAMES)
    assert out.shape == (5, 7)
    assert out[0, names.index("Cardiomediastinal")] == 1.0
    assert out[1, names.index("Parenchymal")] == 1.0
    assert np.isnan(out[2, names.index("Parenchymal")])
    np.testing.assert_array_equal(out[3], [1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[4], np.zeros(7))


def test_wrong_width_is_an_error():
    with pytest.raises(ValueError, match="14"):
        super_class_targets(np.zeros((2, 13)))
