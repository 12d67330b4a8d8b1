"""Image readers: one per release format behind one interface (MONAI ``ImageReader`` style).

Every reader turns a file's bytes into a 2-D float32 array in [0, 1] where bright means
dense (bone, fluid), whatever the file's photometric interpretation. Failures raise
:class:`~storage.errors.ItemError` naming the item and the reason.
"""

from __future__ import annotations

import io
import struct
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from storage.errors import ItemError, QuarantineReason

CODECS_HINT = "install the optional decoders: pip install 'daug[dicom-codecs]'"


class ImageReader(ABC):
    """Decode one image file (given as bytes, so the caller hashes and reads it once)."""

    suffix: ClassVar[str]

    @abstractmethod
    def decode(self, data: bytes, item_id: str) -> np.ndarray:
        """Return a 2-D float32 image in [0, 1], bright = dense."""


def _rescale_unit(pixels: np.ndarray, item_id: str) -> np.ndarray:
    """Min-max to [0, 1]; a constant image carries no information and is rejected."""
    pixels = pixels.astype(np.float32, copy=False)
    lo, hi = float(pixels.min()), float(pixels.max())
    if not hi > lo:
        raise ItemError(item_id, QuarantineReason.CONSTANT_IMAGE, f"all pixels equal {lo:g}")
    return (pixels - lo) / (hi - lo)


def _check_size(rows: int, cols: int, item_id: str) -> None:
    if rows < 2 or cols < 2:
        raise ItemError(item_id, QuarantineReason.DEGENERATE_SIZE, f"{rows}x{cols} pixels")


class DicomReader(ImageReader):
    """pydicom decoding: Modality LUT, then VOI LUT or window, then MONOCHROME1 inversion.

    The LUT order is the DICOM grey-scale pipeline (PS3.4 N.2): stored values -> Modality
    LUT (rescale slope/intercept) -> VOI LUT / window -> presentation. The result is
    min-max scaled to [0, 1] and inverted for MONOCHROME1, where low values are white.
    Multi-frame files contribute their first frame.
    """

    suffix = ".dcm"

    def decode(self, data: bytes, item_id: str) -> np.ndarray:
        ds = self._read_dataset(data, item_id)
        if "PixelData" not in ds:
            raise ItemError(item_id, QuarantineReason.NO_PIXEL_DATA, "no PixelData element")
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        _check_size(rows, cols, item_id)
        file_meta = getattr(ds, "file_meta", None)
        syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
        if syntax is not None and syntax.is_compressed:
            if not get_decoder(syntax).is_available:
                raise ItemError(
                    item_id,
                    QuarantineReason.UNSUPPORTED_TRANSFER_SYNTAX,
                    f"no decoder for {syntax.name} ({syntax}); {CODECS_HINT}",
                )
        else:
            self._check_native_length(ds, rows, cols, item_id)
        try:
            pixels = ds.pixel_array
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            raise ItemError(item_id, QuarantineReason.DECODE_ERROR, str(exc)) from exc
        if pixels.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
            pixels = pixels[0]
        if pixels.ndim != 2:
            raise ItemError(
                item_id, QuarantineReason.DECODE_ERROR, f"not a grey-scale image: {pixels.shape}"
            )
        values = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
        unit = _rescale_unit(values, item_id)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            unit = 1.0 - unit
        return unit

    @staticmethod
    def _read_dataset(data: bytes, item_id: str) -> pydicom.Dataset:
        try:
            return pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError as exc:
            raise ItemError(item_id, QuarantineReason.NOT_DICOM, str(exc)) from exc
        except (EOFError, struct.error, OSError, ValueError, KeyError) as exc:
            raise ItemError(
                item_id, QuarantineReason.TRUNCATED, f"header unreadable: {exc}"
            ) from exc

    @staticmethod
    def _check_native_length(ds: pydicom.Dataset, rows: int, cols: int, item_id: str) -> None:
        bits = int(ds.get("BitsAllocated", 16))
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = (rows * cols * samples * frames * bits + 7) // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise ItemError(
                item_id,
                QuarantineReason.TRUNCATED,
                f"PixelData has {actual} bytes, {rows}x{cols}x{bits} bit needs {expected}",
            )


class JpegReader(ImageReader):
    """MIMIC-CXR-JPG: 8-bit display images, already windowed; scaled by their bit depth."""

    suffix = ".jpg"

    def decode(self, data: bytes, item_id: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                _check_size(opened.height, opened.width, item_id)
                mode = opened.mode if opened.mode in ("L", "I;16", "I") else "L"
                pixels = np.asarray(opened.convert(mode), dtype=np.float32)
        except UnidentifiedImageError as exc:
            raise ItemError(item_id, QuarantineReason.NOT_AN_IMAGE, str(exc)) from exc
        except OSError as exc:
            raise ItemError(item_id, QuarantineReason.TRUNCATED, str(exc)) from exc
        if not pixels.max() > pixels.min():
            raise ItemError(
                item_id, QuarantineReason.CONSTANT_IMAGE, f"all pixels equal {pixels.min():g}"
            )
        return pixels / (255.0 if mode == "L" else 65535.0)


READERS: dict[str, ImageReader] = {"dicom": DicomReader(), "jpg": JpegReader()}
