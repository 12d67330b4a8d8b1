"""Image readers: one per release format behind one interface (MONAI ``ImageReader`` style).

Every reader turns a file's bytes into a 2-D float32 array in [0, 1] where bright means
dense (bone, fluid), whatever the file's photometric interpretation. Failures raise
:class:`~storage.errors.ItemError` naming the item and the reason.

A reader is built with a budget, the most bytes one image may decode to: the size is read from
the header and checked before anything is decoded, so a header declaring 65535 x 65535 pixels
(or an RLE or JPEG bomb) costs nothing.
"""

from __future__ import annotations

import io
import math
import struct
import threading
import warnings
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import pydicom
from PIL import Image, ImageMode, UnidentifiedImageError
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from storage.errors import ItemError, QuarantineReason

CODECS_HINT = "install the optional decoders: pip install 'daug[dicom-codecs]'"
UNDEFINED_LENGTH = 0xFFFFFFFF
# Warning filters are process-wide (Python < 3.14 has no per-thread ones), and Prefect runs
# ingest tasks in threads: the lock keeps two decoding threads from restoring each other's
# filters, which could leave "error" installed for the whole process.
_STRICT_WARNINGS = threading.Lock()


# A 4096 x 4096 16-bit radiograph is 32 MiB; the default leaves room for a few frames and
# refuses what no chest X-ray is (8000 x 8000 x 2 frames, the 65535^2 maximum).
DEFAULT_MAX_DECODED_MB = 128.0
MIB = 1 << 20


class ImageReader(ABC):
    """Decode one image file (given as bytes, so the caller hashes and reads it once) whose
    decoded pixels fit in ``max_decoded_bytes`` (else ``image_too_large``, undecoded)."""

    suffix: ClassVar[str]

    def __init__(self, *, max_decoded_bytes: int = int(DEFAULT_MAX_DECODED_MB * MIB)) -> None:
        if max_decoded_bytes < 1:
            raise ValueError(f"max_decoded_bytes must be >= 1, got {max_decoded_bytes}")
        self.max_decoded_bytes = max_decoded_bytes

    @abstractmethod
    def decode(self, data: bytes, item_id: str) -> np.ndarray:
        """Return a 2-D float32 image in [0, 1], bright = dense."""

    def _check_budget(self, decoded_bytes: int, shape: str, item_id: str) -> None:
        if decoded_bytes > self.max_decoded_bytes:
            raise ItemError(
                item_id,
                QuarantineReason.IMAGE_TOO_LARGE,
                f"{shape} decodes to {decoded_bytes / MIB:.1f} MiB, over the "
                f"{self.max_decoded_bytes / MIB:g} MiB budget (ReaderConfig.max_decoded_mb)",
            )


def _rescale_unit(pixels: np.ndarray, item_id: str) -> np.ndarray:
    """Min-max to [0, 1]; a constant image carries no information and is rejected, and so is
    one with NaN or infinite values (a NaN or huge Rescale Slope), which min-max would turn
    into all-NaN."""
    pixels = pixels.astype(np.float32, copy=False)
    finite = np.isfinite(pixels)
    if not finite.all():
        raise ItemError(
            item_id,
            QuarantineReason.NON_FINITE_PIXELS,
            f"{pixels.size - int(finite.sum())} of {pixels.size} pixel values are NaN or "
            "infinite after the modality and VOI LUTs (as float32)",
        )
    lo, hi = float(pixels.min()), float(pixels.max())
    if not hi > lo:
        raise ItemError(item_id, QuarantineReason.CONSTANT_IMAGE, f"all pixels equal {lo:g}")
    return (pixels - lo) / (hi - lo)


# Chest films and detectors run from square (43 x 43 cm) to about 1 : 1.3 (35 x 43 cm, 24 x 30
# cm); a frame far longer than wide is a line scan, a stitched long-leg or spine view, or a
# broken header, and squared it would be a one-pixel stripe.
MAX_ASPECT = 4.0


def _check_size(rows: int, cols: int, item_id: str) -> None:
    if rows < 2 or cols < 2:
        raise ItemError(item_id, QuarantineReason.DEGENERATE_SIZE, f"{rows}x{cols} pixels")
    if max(rows, cols) > MAX_ASPECT * min(rows, cols):
        raise ItemError(
            item_id,
            QuarantineReason.DEGENERATE_SIZE,
            f"{rows}x{cols} pixels: an aspect ratio over {MAX_ASPECT:g} : 1, which no chest "
            "film has",
        )


class DicomReader(ImageReader):
    """pydicom decoding: Modality LUT, then VOI LUT or window, then MONOCHROME1 inversion.

    The LUT order is the DICOM grey-scale pipeline (PS3.4 N.2): stored values -> Modality
    LUT (rescale slope/intercept) -> VOI LUT / window -> presentation. The result is
    min-max scaled to [0, 1] and inverted for MONOCHROME1, where low values are white.
    Multi-frame files contribute their first frame.

    The header is checked against the data before decoding: pydicom decodes a PixelData longer
    than the header says (halved Rows, 8 BitsAllocated on 16-bit data) with only a warning,
    which would store wrong pixels as ok; here that is ``pixel_data_size_mismatch``, and any
    warning pydicom gives while decoding is a ``decode_error``.
    """

    suffix = ".dcm"

    def decode(self, data: bytes, item_id: str) -> np.ndarray:
        ds = self._read_dataset(data, item_id)
        if "PixelData" not in ds:
            raise ItemError(item_id, QuarantineReason.NO_PIXEL_DATA, "no PixelData element")
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        _check_size(rows, cols, item_id)
        self._check_bit_depth(ds, item_id)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
        bytes_per_sample = math.ceil(int(ds.get("BitsAllocated", 16)) / 8)
        self._check_budget(
            rows * cols * frames * samples * bytes_per_sample,
            f"{rows}x{cols} x {frames} frame(s) x {samples} sample(s) x {bytes_per_sample} byte(s)",
            item_id,
        )
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
        pixels = self._decode_pixels(ds, item_id)
        if pixels.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
            pixels = pixels[0]
        if pixels.ndim != 2:
            raise ItemError(
                item_id, QuarantineReason.DECODE_ERROR, f"not a grey-scale image: {pixels.shape}"
            )
        # A NaN or infinite Rescale Slope makes NaNs here; _rescale_unit names them.
        with np.errstate(invalid="ignore", over="ignore"):
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
    def _check_bit_depth(ds: pydicom.Dataset, item_id: str) -> None:
        """1 <= BitsStored <= BitsAllocated and HighBit = BitsStored - 1 (PS3.3 C.7.6.3, Table
        C.7-11c: samples are stored right-aligned, which is how pydicom reads them)."""
        allocated = int(ds.get("BitsAllocated", 16))
        stored = int(ds.get("BitsStored", allocated))
        high = ds.get("HighBit")
        if not 1 <= stored <= allocated or (high is not None and int(high) != stored - 1):
            raise ItemError(
                item_id,
                QuarantineReason.DECODE_ERROR,
                f"inconsistent bit depth: BitsAllocated {allocated}, BitsStored {stored}, "
                f"HighBit {high}",
            )

    @staticmethod
    def _check_native_length(ds: pydicom.Dataset, rows: int, cols: int, item_id: str) -> None:
        """Uncompressed PixelData is exactly what the header describes, plus the one byte
        that pads an odd length to an even one (PS3.5 8.1.1); a file that ends inside the
        element is ``truncated``, any other length ``pixel_data_size_mismatch``."""
        bits = int(ds.get("BitsAllocated", 16))
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
            samples = 2  # two pixels share one Cb and one Cr (PS3.3 C.7.6.3.1.2)
        expected = (rows * cols * samples * frames * bits + 7) // 8
        element = ds.get_item("PixelData")
        actual = len(ds.PixelData)
        if (
            isinstance(element, RawDataElement)
            and element.length != UNDEFINED_LENGTH
            and actual < element.length
        ):
            raise ItemError(
                item_id,
                QuarantineReason.TRUNCATED,
                f"the file ends inside PixelData: {actual} of its {element.length} bytes",
            )
        if actual != expected and not (expected % 2 and actual == expected + 1):
            raise ItemError(
                item_id,
                QuarantineReason.PIXEL_DATA_SIZE_MISMATCH,
                f"PixelData has {actual} bytes; {rows}x{cols} x {frames} frame(s) x "
                f"{samples} sample(s) x {bits} bit need {expected}",
            )

    @staticmethod
    def _decode_pixels(ds: pydicom.Dataset, item_id: str) -> np.ndarray:
        """``ds.pixel_array`` with pydicom's warnings as errors: it warns, and goes on, about
        data its header does not describe (an RLE segment longer than Rows x Columns, more
        frames than NumberOfFrames). Its decoders fail with many exception types (a missing
        RLE frame is a StopIteration): each is a ``decode_error`` of this item."""
        with _STRICT_WARNINGS, warnings.catch_warnings():
            warnings.filterwarnings("error", category=UserWarning, module="pydicom")
            try:
                pixels: np.ndarray = ds.pixel_array
            except UserWarning as exc:
                detail = f"pydicom warned: {' '.join(str(exc).split())}"
                raise ItemError(item_id, QuarantineReason.DECODE_ERROR, detail) from exc
            except Exception as exc:
                detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                raise ItemError(item_id, QuarantineReason.DECODE_ERROR, detail) from exc
        return pixels


class JpegReader(ImageReader):
    """MIMIC-CXR-JPG: 8-bit display images, already windowed; scaled by their bit depth."""

    suffix = ".jpg"

    def decode(self, data: bytes, item_id: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                # Image.open reads the header only: the size is known before load() decodes.
                _check_size(opened.height, opened.width, item_id)
                descriptor = ImageMode.getmode(opened.mode)
                pixel_bytes = np.dtype(descriptor.typestr).itemsize * len(descriptor.bands)
                self._check_budget(
                    opened.width * opened.height * pixel_bytes,
                    f"{opened.height}x{opened.width} {opened.mode}",
                    item_id,
                )
                opened.load()
                mode = opened.mode if opened.mode in ("L", "I;16", "I") else "L"
                pixels = np.asarray(opened.convert(mode), dtype=np.float32)
        except Image.DecompressionBombError as exc:  # PIL's own limit, met before ours
            raise ItemError(item_id, QuarantineReason.IMAGE_TOO_LARGE, str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise ItemError(item_id, QuarantineReason.NOT_AN_IMAGE, str(exc)) from exc
        except OSError as exc:
            raise ItemError(item_id, QuarantineReason.TRUNCATED, str(exc)) from exc
        if not pixels.max() > pixels.min():
            raise ItemError(
                item_id, QuarantineReason.CONSTANT_IMAGE, f"all pixels equal {pixels.min():g}"
            )
        return pixels / (255.0 if mode == "L" else 65535.0)


READER_TYPES: dict[str, type[ImageReader]] = {"dicom": DicomReader, "jpg": JpegReader}
"""The reader of each release format; :class:`~storage.release.reader.ReleaseReader` builds them
with
its :class:`~storage.release.ingest_config.ReaderConfig`'s budget."""
