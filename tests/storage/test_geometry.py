import numpy as np
import pytest

from storage.geometry import FitMode, fit_to_square


def test_pad_keeps_aspect_and_centres():
    image = np.ones((100, 50), np.float32)
    out = fit_to_square(image, 64, FitMode.PAD)
    assert out.shape == (64, 64)
    filled = np.flatnonzero(out.max(axis=0) > 0.5)
    assert (filled.min(), filled.max()) == (16, 47)  # 32 columns, centred
    assert out[:, :16].max() == 0.0 and out[:, 48:].max() == 0.0


def test_crop_fills_the_square():
    image = np.ones((100, 50), np.float32)
    out = fit_to_square(image, 64, FitMode.CROP)
    assert out.shape == (64, 64) and out.min() == pytest.approx(1.0)


def test_squash_fills_the_square_and_stretches_the_short_side():
    """The official DAug code's Resize([S, S]): a 100 x 50 image's left half lands on the
    square's left half (the width doubles relative to the height)."""
    image = np.zeros((100, 50), np.float32)
    image[:, :25] = 1.0
    out = fit_to_square(image, 64, FitMode.SQUASH)
    assert out.shape == (64, 64)
    assert out[:, :31].min() == pytest.approx(1.0) and out[:, 33:].max() == pytest.approx(0.0)


def test_downscale_is_antialiased():
    checker = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)
    out = fit_to_square(checker, 64)
    assert np.abs(out - 0.5).max() < 0.05  # aliasing would leave 0/1 pixels


def test_mask_lands_where_the_lesion_is():
    image = np.zeros((300, 200), np.float32)
    image[60:120, 40:100] = 1.0
    mask = image > 0
    img64 = fit_to_square(image, 64)
    mask64 = fit_to_square(mask.astype(np.float32), 64, nearest=True) > 0.5
    assert mask64.sum() > 0
    assert img64[mask64].mean() > 0.9
    assert img64[~mask64].mean() < 0.05


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        fit_to_square(np.zeros((3, 4, 4), np.float32), 8)
