"""DAug heatmaps: where an image would have to change to move toward each target class.

For image x0 and target k: x_L = DDIM-invert(x0) to noise level L, x_cf = guided DDIM decoding of
x_L toward k, and the heatmap compares the two (``TranslationConfig.difference``):

* ``"minmax"`` (the official definition): |minmax(x0) - minmax(x_cf)|, where minmax rescales
  each image by its own minimum and maximum;
* ``"raw"``: |x0 - x_cf| / 2, the change in store pixel units ([-1, 1] model space halved).
  Measured on the synthetic release (tiny preset), minmax turned the small global brightness
  shifts of guided decoding into heat over the whole image: pixel AUROC 0.52 against 0.73.

With ``reference = "reconstruction"`` the comparison is with the unguided DDIM decoding of the
same x_L instead of x0: only what the guidance changed, not what the generator fails to
reconstruct.

``signed`` keeps the sign (> 0 where the counterfactual is brighter). With
``smoothing_sigma`` > 0 the heatmap is |signed| blurred by a Gaussian of that many pixels
(torchvision's ``gaussian_blur``); blurring |signed| rather than signed keeps changes of mixed
sign (an edge that moves) from cancelling.

Two public paths, equal up to float rounding:

* :func:`compute_heatmaps` (fast): inverts each image once, computes the first decoding
  step's eps once per image, and decodes all K targets as one batch of B*K rows, cut into
  chunks of at most ``InferenceConfig.max_batch`` rows so memory stays bounded.
* :func:`compute_heatmaps_reference`: re-inverts per (image, target) pair at batch 1, as the
  official code does; kept for tests and benchmarks.

Both run the models in ``TranslationConfig.precision`` (:func:`prepare_model` casts a copy of
each model once, in the memory format and compiled as ``InferenceConfig`` says; inputs are cast
per call, outputs and DDIM updates stay float32).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from daug_core.compute import precision_dtype
from daug_core.diffusion.config import (
    DiffusionConfig,
    HeatmapDifference,
    InferenceConfig,
    Precision,
    TranslationConfig,
)
from daug_core.diffusion.ddim import EpsModel, invert_to_level, level_epsilon, model_dtype
from daug_core.diffusion.guidance import (
    classifier_logits,
    guided_decode,
    target_probabilities,
    target_probability,
)
from daug_core.diffusion.schedule import alphas_cumprod
from daug_core.diffusion.targets import Target

_FLAT = 1e-12  # an image whose max - min is below this has no contrast: minmax gives zeros


@dataclass(frozen=True)
class HeatmapResult:
    """Heatmaps for B images and K targets (all float32, on x0's device)."""

    targets: tuple[Target, ...]  # (K,)
    heatmaps: torch.Tensor  # (B, K, S, S) in [0, 1]: |signed|, smoothed if configured
    signed: torch.Tensor  # (B, K, S, S) in [-1, 1]: x_cf minus the reference, as configured
    counterfactuals: torch.Tensor  # (B, K, S, S) x_cf in model space (about [-1, 1])
    prob_before: torch.Tensor  # (B, K) p(target | x0) at t = 0
    prob_after: torch.Tensor  # (B, K) p(target | x_cf) at t = 0


def minmax(images: torch.Tensor) -> torch.Tensor:
    """Rescale each image (last two dims) to [0, 1] by its own min and max."""
    flat = images.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values.unsqueeze(-1)
    hi = flat.max(dim=-1, keepdim=True).values.unsqueeze(-1)
    span = hi - lo
    return torch.where(
        span > _FLAT, (images - lo) / span.clamp_min(_FLAT), torch.zeros_like(images)
    )


def signed_difference(
    x0: torch.Tensor, x_cf: torch.Tensor, difference: HeatmapDifference = "minmax"
) -> torch.Tensor:
    """x_cf - x0 in [-1, 1], broadcasting x0 over x_cf's leading dims: minmax(x_cf) - minmax(x0)
    for ``"minmax"``, (x_cf - x0) / 2 for ``"raw"`` (images in [-1, 1] model space)."""
    if difference == "minmax":
        return minmax(x_cf) - minmax(x0)
    if difference == "raw":
        return ((x_cf - x0) / 2).clamp(-1.0, 1.0)
    raise ValueError(f"difference must be 'minmax' or 'raw', got {difference!r}")


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of the last two dims (kernel 2 * ceil(3 sigma) + 1, reflected borders);
    ``sigma = 0`` returns ``maps`` unchanged."""
    if sigma <= 0:
        return maps
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(maps, kernel_size=[size, size], sigma=[sigma, sigma])


def heatmap(signed: torch.Tensor, smoothing_sigma: float = 0.0) -> torch.Tensor:
    """The heatmap of a :func:`signed_difference`: its magnitude, blurred by
    ``smoothing_sigma`` px (``heatmap(signed_difference(x0, x_cf))`` is the official DAug
    definition |minmax(x0) - minmax(x_cf)|)."""
    return smooth(signed.abs(), smoothing_sigma)


def prepare_model(
    model: torch.nn.Module,
    precision: Precision,
    inference: InferenceConfig,
    device: torch.device | str | None = None,
) -> torch.nn.Module:
    """``model`` as the heatmap passes run it: on ``device`` (default: where it is), weights in
    ``precision``, channels-last and compiled as ``inference`` says. ``model`` itself when
    nothing changes, else a copy in eval mode whose weights need no gradient (the guidance
    differentiates the classifier with respect to its input only; the original is untouched,
    so a worker keeps its source weights in host memory and only the copies on the GPU).
    fp16 needs a CUDA device."""
    dtype = precision_dtype(precision)
    source = next(model.parameters()).device
    target = torch.device(device) if device is not None else source
    if dtype == torch.float16 and target.type != "cuda":
        raise ValueError(f"fp16 heatmaps need a CUDA device, the models are on {target}")
    unchanged = model_dtype(model, dtype) == dtype and target == source
    if unchanged and not inference.channels_last and not inference.compile:
        return model
    prepared = copy.deepcopy(model).to(device=target, dtype=dtype).eval().requires_grad_(False)
    if inference.channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    if inference.compile:
        from torch._dynamo import config as dynamo_config

        # Where a graph cannot be compiled (no C++ compiler, an unsupported op) that part runs
        # eagerly, with a logged warning, instead of failing the run.
        dynamo_config.suppress_errors = True
        return cast(torch.nn.Module, torch.compile(prepared))
    return prepared


def _check_inputs(
    x0: torch.Tensor,
    targets: Sequence[Target],
    cfg: DiffusionConfig,
    models: Sequence[object] = (),
) -> None:
    s = cfg.image_size
    if x0.ndim != 4 or x0.shape[1] != 1 or tuple(x0.shape[2:]) != (s, s):
        raise ValueError(f"x0 must be (B, 1, {s}, {s}), got {tuple(x0.shape)}")
    if not targets:
        raise ValueError("need at least one target")
    k = cfg.classifier.num_classes
    bad = [str(t) for t in targets if not 0 <= t.class_index < k]
    if bad:
        raise ValueError(f"targets {bad} are outside the classifier's {k} classes")
    precision = cfg.translation.precision
    dtype = precision_dtype(precision)
    for model in models:
        if model_dtype(model, dtype) != dtype:
            raise ValueError(
                f"{type(model).__name__} has {model_dtype(model, dtype)} weights, the "
                f"translation's precision is {precision}: pass prepare_model(model, "
                f"{precision!r}, ...)"
            )


def _result(
    reference: torch.Tensor,
    cf: torch.Tensor,
    targets: Sequence[Target],
    before: torch.Tensor,
    after: torch.Tensor,
    tr: TranslationConfig,
) -> HeatmapResult:
    # reference: x0 or the unguided reconstruction, (B, 1, S, S) broadcast over cf (B, K, S, S)
    # or one per row (B, K, S, S).
    signed = signed_difference(reference.float(), cf, tr.difference)
    return HeatmapResult(
        targets=tuple(targets),
        heatmaps=heatmap(signed, tr.smoothing_sigma),
        signed=signed,
        counterfactuals=cf,
        prob_before=before,
        prob_after=after,
    )


def compute_heatmaps(
    unet: EpsModel,
    classifier: torch.nn.Module,
    x0: torch.Tensor,
    targets: Sequence[Target],
    cfg: DiffusionConfig,
) -> HeatmapResult:
    """Fast path: one inversion per image, all K targets decoded together in bounded chunks
    (the unguided decoding, for ``scale = 0`` or the reconstruction reference: once per image,
    shared by its K targets).

    Models stay where they are; x0 (B, 1, S, S) in [-1, 1] must be on their device.
    """
    _check_inputs(x0, targets, cfg, (unet, classifier))
    tr = cfg.translation
    ab = alphas_cumprod(cfg.schedule)
    b, k, s, chunk = x0.shape[0], len(targets), cfg.image_size, cfg.inference.max_batch
    # Per chunk of images: x_L, and (all K decodings of an image start from its x_L) the
    # first unguided eps once per image, not once per row; the classifier's logits of x0.
    levels, first_eps, logits = [], [], []
    for i in range(0, b, chunk):
        x_chunk = invert_to_level(
            unet,
            x0[i : i + chunk],
            alphas_cumprod=ab,
            level=tr.level,
            steps=tr.steps,
            refinements=tr.inversion_refinements,
            clip_denoised=tr.clip_denoised,
        )
        levels.append(x_chunk)
        first_eps.append(level_epsilon(unet, x_chunk, alphas_cumprod=ab, level=tr.level))
        logits.append(classifier_logits(classifier, x0[i : i + chunk]))
    x_level, eps_level, logits_x0 = torch.cat(levels), torch.cat(first_eps), torch.cat(logits)
    before = target_probabilities(logits_x0, targets, mode=tr.mode)
    decode = functools.partial(
        guided_decode,
        unet,
        classifier,
        mode=tr.mode,
        alphas_cumprod=ab,
        level=tr.level,
        steps=tr.steps,
        clip_denoised=tr.clip_denoised,
    )
    unguided: torch.Tensor | None = None
    if tr.scale == 0 or tr.reference == "reconstruction":
        # Every target's unguided decoding is the same DDIM decode of x_L: once per image.
        unguided = torch.cat(
            [
                decode(
                    x_level[i : i + chunk],
                    targets[0],
                    scale=0.0,
                    first_eps=eps_level[i : i + chunk],
                )
                for i in range(0, b, chunk)
            ]
        )
    reference = x0 if unguided is None or tr.reference == "input" else unguided
    if unguided is not None and tr.scale == 0:
        # Unguided (the reconstruction-error baseline): no per-target decoding at all.
        logits_cf = torch.cat(
            [classifier_logits(classifier, unguided[i : i + chunk]) for i in range(0, b, chunk)]
        )
        after = target_probabilities(logits_cf, targets, mode=tr.mode)
        cf_all = unguided.expand(b, k, s, s).contiguous()
        return _result(reference, cf_all, targets, before, after, tr)
    # Row r of the B*K batch is image r // K with target r % K; a chunk gathers only its rows.
    rows_t = list(targets) * b
    cf_parts, after_parts = [], []
    for i in range(0, b * k, chunk):
        part_targets = rows_t[i : i + chunk]
        image_of_row = torch.arange(i, i + len(part_targets), device=x_level.device) // k
        cf = decode(
            x_level[image_of_row], part_targets, scale=tr.scale, first_eps=eps_level[image_of_row]
        )
        cf_parts.append(cf)
        after_parts.append(target_probability(classifier, cf, part_targets, mode=tr.mode))
    cf_all = torch.cat(cf_parts).view(b, k, s, s)
    after = torch.cat(after_parts).view(b, k)
    return _result(reference, cf_all, targets, before, after, tr)


def compute_heatmaps_reference(
    unet: EpsModel,
    classifier: torch.nn.Module,
    x0: torch.Tensor,
    targets: Sequence[Target],
    cfg: DiffusionConfig,
) -> HeatmapResult:
    """Reference path: for every (image, target) pair, invert and decode at batch 1 (and, for
    the reconstruction reference, decode unguided too)."""
    _check_inputs(x0, targets, cfg, (unet, classifier))
    tr = cfg.translation
    ab = alphas_cumprod(cfg.schedule)
    cfs, refs, befores, afters = [], [], [], []
    for i in range(x0.shape[0]):
        image = x0[i : i + 1]
        for target in targets:
            x_level = invert_to_level(
                unet,
                image,
                alphas_cumprod=ab,
                level=tr.level,
                steps=tr.steps,
                refinements=tr.inversion_refinements,
                clip_denoised=tr.clip_denoised,
            )
            decode = functools.partial(
                guided_decode,
                unet,
                classifier,
                x_level,
                target,
                mode=tr.mode,
                alphas_cumprod=ab,
                level=tr.level,
                steps=tr.steps,
                clip_denoised=tr.clip_denoised,
            )
            cf = decode(scale=tr.scale)
            cfs.append(cf)
            refs.append(decode(scale=0.0) if tr.reference == "reconstruction" else image)
            befores.append(target_probability(classifier, image, target, mode=tr.mode))
            afters.append(target_probability(classifier, cf, target, mode=tr.mode))
    b, k, s = x0.shape[0], len(targets), cfg.image_size
    cf_all = torch.cat(cfs).view(b, k, s, s)
    reference = torch.cat(refs).view(b, k, s, s)
    before, after = torch.cat(befores).view(b, k), torch.cat(afters).view(b, k)
    return _result(reference, cf_all, targets, before, after, tr)
