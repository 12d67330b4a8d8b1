"""The store-backed Dataset of the contrastive trainer: image + DAug heatmap channels + report.

One item is a finished image of the image store (``done`` and status ok), optionally with the
heatmaps of one heatmap version (``STORE/heatmaps/<version>``), its report text and its 14
CheXpert targets. Items come out as a :class:`ContrastiveItem` dict, which torch's default
collate turns into a batch (tensors stacked, strings as lists).

Workers. The dataset pickles to a few numpy arrays and the store path: Zarr handles are
opened lazily, once per process, on the first read, and never pickled. That keeps spawn
DataLoader workers cheap to start. Report text and ids are packed into one UTF-8 buffer each
(:class:`PackedStrings`): it pickles in half the time of a list of str (0.05 s vs 0.09 s for
370 k MIMIC-sized reports, measured here) and holds no per-string Python objects, so a forked
worker's reference counting does not copy it page by page.

Reads are batched: torch's DataLoader calls :meth:`ContrastiveDataset.__getitems__` with the
whole batch of indices, and the images (and heatmaps) of a batch come from one Zarr
orthogonal selection each, whose chunk reads Zarr runs concurrently. Augmentation is one
``grid_sample`` over the batch.

Tokenisation stays out of storage: pass ``text_transform`` (a picklable callable from a
string to a 1-D token tensor, e.g. open_clip's ``SimpleTokenizer``, which pickles, ~2 MB)
to get a ``tokens`` entry; without it the item carries the text only and the caller
tokenises the collated list of strings.

Randomness (augmentation, shuffling) is a function of ``(seed, epoch, store index)`` and
``(seed, epoch)``: call :meth:`ContrastiveDataset.set_epoch` before each epoch. Nothing is
seeded globally, and the same epoch gives the same tensors in any worker layout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Sampler

from daug_core.labels import LABEL_COLUMNS
from storage.datasets.augment import (
    AugmentConfig,
    apply_affine,
    augment_rng,
    augment_theta,
    mixed_seed,
)
from storage.datasets.batches import EmptySelectionError
from storage.errors import StoreFormatError
from storage.release.reader import SPLITS
from storage.release.reports import ReportSections
from storage.store.arrays import read_items
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.items import ItemStatus
from storage.store.location import Location

log = logging.getLogger(__name__)

MissingHeatmaps = Literal["exclude", "fail"]
TextTransform = Callable[[str], torch.Tensor]


class MissingHeatmapsError(StoreFormatError):
    """Finished images of the selection have no heatmaps and the config says to fail."""


class HeatmapTargetError(StoreFormatError):
    """A requested heatmap target is not a channel of the stored version."""


class CorruptItemError(StoreFormatError):
    """A finished item holds non-finite pixels (it should have been written whole)."""


# ---- selection ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExclusionCounts:
    """Items of the requested splits left out, by reason.

    ``quarantined``: not ingested (see quarantine.csv); ``not_done_image``: pending, retired
    (not in the latest release, see storage/release/update.py) or its ``done`` flag unset (an
    interrupted ingest, a changed image waiting for re-ingest); ``no_heatmap``: image fine but
    the heatmap version has no ``heatmaps_done`` for it; ``no_labels``: its study is in no
    label table (read as all negative, it would teach and score 14 negatives nobody stated);
    ``no_report``: no report text to pair the image with (MIMIC-CXR has studies of both kinds).
    """

    quarantined: int = 0
    not_done_image: int = 0
    no_heatmap: int = 0
    no_labels: int = 0
    no_report: int = 0

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        return {
            "quarantined": self.quarantined,
            "not_done_image": self.not_done_image,
            "no_heatmap": self.no_heatmap,
            "no_labels": self.no_labels,
            "no_report": self.no_report,
        }


class PackedStrings:
    """A read-only sequence of strings as one UTF-8 buffer plus offsets (cheap to pickle)."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._buffer[self._offsets[i] : self._offsets[i + 1]].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


# ---- the dataset -------------------------------------------------------------------------
class ContrastiveItem(TypedDict):
    """One training or evaluation item. ``heatmaps`` has K = 0 channels without a version."""

    image: torch.Tensor  # float32 (1, S, S) in [0, 1]
    heatmaps: torch.Tensor  # float32 (K, S, S) in [0, 1], channels in heatmap_targets order
    text: str  # FINDINGS then IMPRESSION (storage.release.reports.ReportSections.text)
    tokens: NotRequired[torch.Tensor]  # text_transform(text), only with a text_transform
    labels: torch.Tensor  # float32 (14,) in CHEXPERT_LABELS order, NaN = masked by the policy
    index: int  # the image store's index
    dicom_id: str
    study_id: str
    split: str


class ContrastiveDataset(Dataset[ContrastiveItem]):
    """Finished items of an image store's splits, with the channels of one heatmap version.

    Args:
        store_path: the image store (a folder or a URL).
        splits: one split or several of ``train``, ``validate``, ``test``.
        heatmap_version: e.g. ``"v1"``; None for image-only training (K = 0 channels).
        heatmap_targets: channels to read, in this order, by target name
            (``"+No Finding"``, ``"+Pleural"``, ...); None = all stored, in stored order.
        missing_heatmaps: items whose heatmaps are not done are left out and counted in
            :attr:`excluded` (``"exclude"``), or construction fails naming them (``"fail"``).
        augment: geometric augmentation, or None (evaluation).
        seed: the augmentation and shuffling seed.
        text_transform: optional picklable tokenizer; see the module docstring.
    """

    def __init__(
        self,
        store_path: Path | str,
        splits: str | Sequence[str],
        heatmap_version: str | None = None,
        heatmap_targets: Sequence[str] | None = None,
        missing_heatmaps: MissingHeatmaps = "exclude",
        augment: AugmentConfig | None = None,
        seed: int = 0,
        text_transform: TextTransform | None = None,
    ) -> None:
        self.store_path = Location.of(store_path).url  # a path or URL, never a Path of a URL
        self.splits = (splits,) if isinstance(splits, str) else tuple(splits)
        unknown = [s for s in self.splits if s not in SPLITS]
        if not self.splits or unknown:
            raise ValueError(f"splits must be among {SPLITS}, got {self.splits}")
        if missing_heatmaps not in ("exclude", "fail"):
            raise ValueError(f"missing_heatmaps must be 'exclude' or 'fail': {missing_heatmaps!r}")
        if heatmap_version is None and heatmap_targets is not None:
            raise ValueError("heatmap_targets given without a heatmap_version")
        self.heatmap_version = heatmap_version
        self.augment = augment
        self.seed = int(seed)
        self.text_transform = text_transform
        self.epoch = 0

        store = ImageStore.open(self.store_path, read_only=True)
        self.size = store.size
        items = store.items()
        in_splits = items["split"].isin(self.splits).to_numpy()
        status = items["status"].to_numpy()
        quarantined = in_splits & (status == ItemStatus.QUARANTINED.value)
        image_ok = in_splits & store.usable_mask(items)
        not_done = in_splits & ~quarantined & ~image_ok

        self.heatmap_targets: tuple[str, ...] = ()
        # What made the heatmaps read (a model records it: daug explain makes the same).
        self.heatmap_provenance: dict[str, Any] | None = None
        self._channels: np.ndarray | None = None
        no_heatmap = np.zeros(len(items), dtype=bool)
        if heatmap_version is not None:
            heatmaps = HeatmapStore(store, heatmap_version)
            self.heatmap_provenance = heatmaps.provenance.as_dict()
            self._channels, self.heatmap_targets = _channel_selection(heatmaps, heatmap_targets)
            if heatmaps.size != store.size:
                raise StoreFormatError(
                    f"{heatmaps.location}: heatmaps are {heatmaps.size} px, images "
                    f"{store.size} px; train at one size (ingest or precompute again)"
                )
            no_heatmap = image_ok & ~heatmaps.done_for(items["index"].to_numpy())
            if missing_heatmaps == "fail" and no_heatmap.any():
                missing = items.loc[no_heatmap, "dicom_id"].tolist()
                raise MissingHeatmapsError(
                    f"{len(missing)} finished images of {list(self.splits)} have no heatmaps "
                    f"in version {heatmap_version!r} (first: {missing[:5]}); run "
                    f"`daug precompute --version {heatmap_version}` for them, or use "
                    "missing_heatmaps='exclude'"
                )

        texts = pd.Series(
            [
                ReportSections(f, i, "").text
                for f, i in zip(items["findings"], items["impression"], strict=True)
            ],
            index=items.index,
            dtype=object,
        )
        no_labels = image_ok & ~no_heatmap & items["labels_missing"].to_numpy(dtype=bool)
        no_report = image_ok & ~no_heatmap & ~no_labels & (texts.str.strip() == "").to_numpy()
        self.excluded = ExclusionCounts(
            quarantined=int(quarantined.sum()),
            not_done_image=int(not_done.sum()),
            no_heatmap=int(no_heatmap.sum()),
            no_labels=int(no_labels.sum()),
            no_report=int(no_report.sum()),
        )
        keep = image_ok & ~no_heatmap & ~no_labels & ~no_report
        chosen = items[keep].sort_values("index")
        if chosen.empty:
            raise EmptySelectionError(
                f"{self.store_path}: no usable items in {list(self.splits)} "
                f"(excluded: {self.excluded.as_dict()})"
            )
        # Everything __getitem__ needs, as arrays: per-item pandas lookups cost ~10 us each.
        self._indices = chosen["index"].to_numpy(dtype=np.int64)
        self._labels = chosen[list(LABEL_COLUMNS)].to_numpy(dtype=np.float32, copy=True)
        self._texts = PackedStrings(texts.loc[chosen.index].tolist())
        self._dicom_ids = PackedStrings(chosen["dicom_id"].tolist())
        self._study_ids = PackedStrings(chosen["study_id"].tolist())
        self._split_codes = np.array([self.splits.index(s) for s in chosen["split"]], dtype=np.int8)
        self._images: zarr.Array | None = None
        self._heatmaps: zarr.Array | None = None
        log.info(
            "contrastive dataset %s %s: %d items, heatmaps %s %s, excluded %s",
            self.store_path,
            list(self.splits),
            len(self._indices),
            heatmap_version,
            list(self.heatmap_targets),
            self.excluded.as_dict(),
        )

    # ---- pickling: arrays travel, Zarr handles do not --------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None
        state["_heatmaps"] = None
        return state

    def _arrays(self) -> tuple[zarr.Array, zarr.Array | None]:
        if self._images is None:
            store = ImageStore.open(self.store_path, read_only=True)
            self._images = store.images
            if self.heatmap_version is not None:
                self._heatmaps = HeatmapStore(store, self.heatmap_version).heatmaps
        return self._images, self._heatmaps

    # ---- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._indices)

    @property
    def indices(self) -> np.ndarray:
        """The image store indices of the items, in dataset order (ascending)."""
        return self._indices.copy()

    @property
    def labels(self) -> np.ndarray:
        """(N, 14) float32 targets of all items (NaN = masked), in dataset order."""
        return self._labels.copy()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation draws (and the epoch's shuffle, see make_loader).

        DataLoader workers receive a fresh copy of the dataset for every epoch's iterator
        (``persistent_workers=False``, as :func:`make_loader` sets), so call this before
        ``iter(loader)``."""
        self.epoch = int(epoch)

    def __getitem__(self, position: int) -> ContrastiveItem:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[ContrastiveItem]:
        """A batch of items: one Zarr selection for the images and one for the heatmaps."""
        rows = np.asarray(positions, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"positions {positions} out of range for {len(self)} items")
        rows = rows % len(self)
        indices = self._indices[rows]
        images_array, heatmaps_array = self._arrays()
        images = read_items(images_array, indices)[:, None]  # (B, 1, S, S)
        if heatmaps_array is not None:
            heat = read_items(heatmaps_array, indices)[:, self._channels]  # (B, K, S, S)
        else:
            heat = np.zeros((len(rows), 0, self.size, self.size), dtype=np.float32)
        self._check_finite(images, rows, "image")
        self._check_finite(heat, rows, "heatmaps")
        stack = torch.from_numpy(np.concatenate([images, heat], axis=1))
        if self.augment is not None:
            theta = np.stack(
                [
                    augment_theta(self.augment, augment_rng(self.seed, self.epoch, int(i)))
                    for i in indices
                ]
            )
            stack = apply_affine(stack, torch.from_numpy(theta))
        items: list[ContrastiveItem] = []
        for b, row in enumerate(rows):
            text = self._texts[row]
            item = ContrastiveItem(
                image=stack[b, :1],
                heatmaps=stack[b, 1:],
                text=text,
                labels=torch.from_numpy(self._labels[row].copy()),
                index=int(indices[b]),
                dicom_id=self._dicom_ids[row],
                study_id=self._study_ids[row],
                split=self.splits[self._split_codes[row]],
            )
            if self.text_transform is not None:
                item["tokens"] = _one_row(self.text_transform(text))
            items.append(item)
        return items

    def _check_finite(self, data: np.ndarray, rows: np.ndarray, what: str) -> None:
        bad = ~np.isfinite(data).all(axis=(1, 2, 3))
        if bad.any():
            row = int(rows[np.flatnonzero(bad)[0]])
            raise CorruptItemError(
                f"{self.store_path}: item {self._indices[row]} ({self._dicom_ids[row]}) is "
                f"marked done but its {what} hold NaN/inf"
            )


def _channel_selection(
    heatmaps: HeatmapStore, wanted: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    stored = heatmaps.targets
    if wanted is None:
        return np.arange(len(stored)), tuple(stored)
    wanted = tuple(wanted)
    missing = [t for t in wanted if t not in stored]
    if missing:
        raise HeatmapTargetError(
            f"{heatmaps.location} has no heatmap target(s) {missing}; stored: {list(stored)}"
        )
    if len(set(wanted)) != len(wanted):
        raise HeatmapTargetError(f"heatmap targets repeat: {list(wanted)}")
    return np.array([stored.index(t) for t in wanted], dtype=np.int64), wanted


def _one_row(tokens: torch.Tensor) -> torch.Tensor:
    """A tokenizer's output for one string as (L,): open_clip returns (1, L)."""
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        return tokens[0]
    if tokens.ndim != 1:
        raise ValueError(f"text_transform must return (L,) or (1, L), got {tuple(tokens.shape)}")
    return tokens


# ---- loading -----------------------------------------------------------------------------
class EpochShuffle(Sampler[int]):
    """A permutation per epoch from a generator seeded by (seed, dataset.epoch).

    The order of epoch e is the same whether or not epochs 0..e-1 were iterated in this
    process, so a resumed run sees the batches an uninterrupted one would have.

    Data-parallel: with ``world_size`` > 1 the permutation is cut into global batches of
    ``global_batch`` (the incomplete last one dropped) and rank r yields the r-th contiguous
    share of each, so a loader of ``global_batch / world_size`` per batch on every rank reads,
    step by step, exactly the rows one process reading ``global_batch`` would."""

    def __init__(
        self,
        dataset: ContrastiveDataset,
        seed: int,
        *,
        global_batch: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size or global_batch % world_size:
            raise ValueError(
                f"rank {rank} of {world_size} workers cannot share global batches of {global_batch}"
            )
        self.dataset = dataset
        self.seed = int(seed)
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        if self.world_size == 1:
            return len(self.dataset)
        return len(self.dataset) // self.global_batch * (self.global_batch // self.world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.dataset.epoch))
        order = torch.randperm(len(self.dataset), generator=generator)
        if self.world_size > 1:
            local = self.global_batch // self.world_size
            full = len(order) // self.global_batch * self.global_batch
            order = order[:full].view(-1, self.global_batch)
            order = order[:, self.rank * local : (self.rank + 1) * local].reshape(-1)
        return iter(order.tolist())


def make_loader(
    dataset: ContrastiveDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[ContrastiveItem]:
    """A DataLoader over ``dataset`` (default collate: a dict of stacked tensors and lists).

    ``batch_size`` is the global batch: with ``world_size`` > 1 (a shuffled, data-parallel
    training loader) this rank's loader yields its ``batch_size / world_size`` rows of each
    global batch (:class:`EpochShuffle`).

    With ``shuffle`` the order of each epoch is a permutation drawn from a ``torch.Generator``
    seeded by ``(seed, dataset.epoch)`` (:class:`EpochShuffle`); without it, store order.
    Workers start with ``spawn`` (safe beside threads, Zarr's event loop and Ray) and are not
    persistent, so each epoch's iterator ships the dataset with its current epoch.

    The loader has its own ``torch.Generator`` (for the workers' base seed): without one, every
    epoch's iterator draws from the process-wide RNG, which the ablation's concurrent runs
    share; a draw landing inside another thread's :func:`daug_core.rng.seeded_init` changed
    that model's initial weights (a baseline run differed between two demo runs).
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    if world_size > 1 and not (shuffle and drop_last):
        raise ValueError("a data-parallel loader shuffles and drops the last partial batch")
    sampler = None
    if shuffle:
        sampler = EpochShuffle(
            dataset, seed, global_batch=batch_size, rank=rank, world_size=world_size
        )
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=sampler,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers > 0 else None,
        persistent_workers=False,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(mixed_seed(seed, 0)),
    )
