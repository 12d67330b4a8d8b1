"""Classifier guidance toward (or away from) a class: targets, log p(y | x_t), ``cond_fn``.

A :class:`Target` is a class and a direction: ``+c`` moves the image toward class c, ``-c`` away
from it (``+No Finding`` moves toward healthy). What log p(y | x_t) means depends on the mode,
over the classifier's logits z (B, C):

* ``softmax`` (DAug's choice): log p(+c) = log_softmax(z)_c, so pushing one class pulls the
  others down; log p(-c) = log(1 - softmax(z)_c) = logsumexp_{j != c} z_j - logsumexp_j z_j.
* ``sigmoid`` (baseline): each class on its own; log p(+c) = logsigmoid(z_c),
  log p(-c) = logsigmoid(-z_c).
* ``official`` (the official DAug code, ``classifier_sample_known.py``, whose classifier puts
  No Finding first, as our class order does): ``+c`` for a finding c normalises over the
  finding logits only, log p(+c) = z_c - logsumexp_{j >= 1} z_j; ``+No Finding`` is the
  softmax over all classes; ``-c`` follows -grad log softmax(z)_c instead of
  grad log(1 - softmax(z)_c) (:func:`guidance_objective`; its reported probability stays
  1 - p_c).

:func:`make_cond_fn` binds a classifier and per-row targets into guided-diffusion's
``cond_fn(x_t, t) = s * grad_x log p(y | x_t)``; :func:`daug_core.diffusion.ddim.ddim_decode`
applies it
(Dhariwal & Nichol 2021, eq. 14). Nothing here holds global state or moves models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from daug_core.diffusion.config import GUIDANCE_MODES, GuidanceMode
from daug_core.diffusion.ddim import CondFn, EpsModel, ddim_decode, model_dtype
from daug_core.diffusion.targets import Target, TargetError


def target_tensors(
    targets: Sequence[Target], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class indices (N,) long, directions (N,) float +-1) for per-row targets."""
    index = torch.tensor([t.class_index for t in targets], dtype=torch.long, device=device)
    sign = torch.tensor([float(t.direction) for t in targets], device=device)
    return index, sign


def _log_prob_and_log_softmax(
    logits: torch.Tensor, class_index: torch.Tensor, direction: torch.Tensor, mode: GuidanceMode
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target | x) per row and, for the softmax modes, log softmax(z)_c (else None)."""
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    z = logits.float()
    idx = class_index.view(-1, 1)
    toward = direction.view(-1) > 0
    z_c = z.gather(1, idx).squeeze(1)
    if mode == "sigmoid":
        return F.logsigmoid(torch.where(toward, z_c, -z_c)), None
    log_norm = torch.logsumexp(z, dim=1)
    log_softmax_c = z_c - log_norm
    log_p_c = log_softmax_c
    if mode == "official":  # a finding's softmax leaves No Finding (class 0) out
        log_p_c = torch.where(idx.view(-1) == 0, log_p_c, z_c - torch.logsumexp(z[:, 1:], dim=1))
    # log(1 - p_c) without cancellation: drop class c from the numerator's logsumexp.
    others = z.scatter(1, idx, float("-inf"))
    log_not_c = torch.logsumexp(others, dim=1) - log_norm
    return torch.where(toward, log_p_c, log_not_c), log_softmax_c


def target_log_prob(
    logits: torch.Tensor, class_index: torch.Tensor, direction: torch.Tensor, mode: GuidanceMode
) -> torch.Tensor:
    """log p(target | x) per row, (N,), from logits (N, C); see the module docstring."""
    return _log_prob_and_log_softmax(logits, class_index, direction, mode)[0]


def guidance_objective(
    logits: torch.Tensor, class_index: torch.Tensor, direction: torch.Tensor, mode: GuidanceMode
) -> torch.Tensor:
    """What guidance ascends, per row (N,): log p(target | x), except for ``official``
    ``-c``, which is -log softmax(z)_c (the official ``cond_fn_neg``)."""
    log_p, log_softmax_c = _log_prob_and_log_softmax(logits, class_index, direction, mode)
    if mode != "official" or log_softmax_c is None:
        return log_p
    return torch.where(direction.view(-1) > 0, log_p, -log_softmax_c)


def make_cond_fn(
    classifier: torch.nn.Module,
    class_index: torch.Tensor,
    direction: torch.Tensor,
    *,
    mode: GuidanceMode,
    scale: float,
) -> CondFn:
    """``cond_fn(x_t, t) = scale * grad_x log p(target | x_t, t)`` (:func:`guidance_objective`)
    for per-row targets
    (``class_index``/``direction`` of length B, on the device of the x_t it will be called with).

    ``classifier(x, t) -> logits`` runs in its own dtype; the gradient is returned in float32.
    """

    def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Gradients are needed even when the caller runs under no_grad or inference_mode; the
        # clone turns a possible inference tensor into a normal one autograd can record.
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().to(model_dtype(classifier, x.dtype)).clone().requires_grad_(True)
            logits = classifier(x_in, t.clone())
            objective = guidance_objective(logits, class_index.clone(), direction.clone(), mode)
            (grad,) = torch.autograd.grad(objective.sum(), x_in)
        return grad.float() * scale

    return cond_fn


def _rows(targets: Target | Sequence[Target], batch: int) -> list[Target]:
    rows = [targets] if isinstance(targets, Target) else list(targets)
    if len(rows) == 1:
        return rows * batch
    if len(rows) != batch:
        raise TargetError(f"need 1 target or one per row ({batch}), got {len(rows)}")
    return rows


def guided_decode(
    unet: EpsModel,
    classifier: torch.nn.Module,
    x_level: torch.Tensor,
    targets: Target | Sequence[Target],
    *,
    mode: GuidanceMode,
    scale: float,
    alphas_cumprod: torch.Tensor,
    level: int,
    steps: int,
    clip_denoised: bool = False,
    first_eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM from x_L (B, 1, S, S) to counterfactuals x_cf, guided toward ``targets`` (one for all
    rows, or one per row). ``scale = 0`` is plain DDIM decoding; ``first_eps`` the unguided
    eps_theta(x_L, L) if known. Returns float32."""
    index, sign = target_tensors(_rows(targets, x_level.shape[0]), x_level.device)
    cond_fn = make_cond_fn(classifier, index, sign, mode=mode, scale=scale) if scale else None
    return ddim_decode(
        unet,
        x_level,
        alphas_cumprod=alphas_cumprod,
        level=level,
        steps=steps,
        cond_fn=cond_fn,
        clip_denoised=clip_denoised,
        first_eps=first_eps,
    )


@torch.no_grad()
def classifier_logits(
    classifier: torch.nn.Module, x: torch.Tensor, timestep: int = 0
) -> torch.Tensor:
    """classifier(x, t) in float32 (B, C), x cast to the classifier's dtype, no gradient."""
    t = torch.full((x.shape[0],), timestep, device=x.device, dtype=torch.long)
    return classifier(x.to(model_dtype(classifier, x.dtype)), t).float()


def target_probabilities(
    logits: torch.Tensor, targets: Sequence[Target], *, mode: GuidanceMode
) -> torch.Tensor:
    """p(target_k | x_b) for every image b and target k: (B, K) from logits (B, C)."""
    b, k = logits.shape[0], len(targets)
    index, sign = target_tensors(targets, logits.device)
    rows = logits.repeat_interleave(k, dim=0)
    return target_log_prob(rows, index.repeat(b), sign.repeat(b), mode).exp().view(b, k)


def target_probability(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    targets: Target | Sequence[Target],
    *,
    mode: GuidanceMode,
    timestep: int = 0,
) -> torch.Tensor:
    """p(target_b | x_b) per row (B,) in float32 (one target for all rows, or one per row)."""
    index, sign = target_tensors(_rows(targets, x.shape[0]), x.device)
    logits = classifier_logits(classifier, x, timestep)
    return target_log_prob(logits, index, sign, mode).exp()
