"""DAug's image-text model: an open_clip CLIP whose image input carries diffusion heatmaps.

DAug (arXiv 2412.04828, Sec. 3.2) augments a chest X-ray with the counterfactual heatmap of a
target class and trains a CLIP model on (image + heatmap, report) pairs. The grey X-ray is given
as 3 identical channels (the input a pretrained CLIP expects); images and heatmaps enter in [0, 1]
and this module applies open_clip's per-channel normalisation ((x − mean_c) / std_c, the model's
``preprocess_cfg``) itself. Four ways to feed the heatmaps (:attr:`ClipModelConfig.heatmap_mode`):

``none``
    grey image as 3 channels; heatmaps ignored (the CLIP baseline).
``channel`` (official DAug, ``model.py``)
    the heatmap of ``channel_target`` replaces channel 0 of the normalised 3-channel image
    (normalised with channel 0's statistics, as the official processor does with its RGB copy).
``add`` (official DAug)
    a second image tower with the same architecture and the same initial weights sees the
    ``channel_target`` heatmap repeated to 3 channels (as the official dataset feeds it); the two
    projected image features are averaged, then L2-normalised (official: ``(x_img + x_hmp) / 2``
    before normalising). A K-channel second tower would use all heatmaps but cannot start from
    pretrained weights without the widening below; the official single-heatmap form is kept.
``append`` (this project; the issue's "1 + K channels")
    the image plus all K heatmaps as 1 + K input channels; the ViT patch embedding ``conv1`` is
    widened from 3 to 1 + K input channels.

Initialisation of the widened patch embedding (``append``)
    With W_c the pretrained kernel of RGB channel c (bias-free in open_clip's ViT) and the grey
    image g repeated 3× and normalised per channel, the pretrained patch embedding computes
    Σ_c W_c ⊛ (g − m_c) / s_c. The widened conv sees every input channel normalised alike,
    x_k = (u_k − m̄) / s̄ (u_0 = g, u_k = heatmap k; m̄, s̄ the means of open_clip's per-channel
    statistics), and is initialised to

        W'_0 = s̄ Σ_c W_c / s_c,    W'_k = 0 (k = 1..K),
        b'   = Σ_c ((m̄ − m_c) / s_c) Σ_ij W_c[ij],

    so W'_0 ⊛ x_0 + b' equals the pretrained response to the 3-channel grey image exactly (up to
    float rounding): at initialisation the model IS the pretrained model, whatever the heatmaps,
    and the zero kernels still receive gradient (∂L/∂W'_k = Σ ∂L/∂y ⊗ x_k ≠ 0), so training
    learns how much heatmap to mix in. The alternative (ENVIRONMENT.md) initialises new channels
    with the mean of the old kernels; it perturbs the pretrained embedding from step 0 by an
    amount that depends on the heatmaps, which the model was never trained to read.

Logit scale
    The model owns the contrastive scale, as open_clip does (``CLIP.logit_scale``, stored as its
    log): :attr:`HeatmapClip.logit_scale` is exp of that parameter, set at build time from
    :class:`~daug_core.contrastive.config.HybridLossConfig` (official: fixed at 100, overriding any
    checkpoint's value) and trained only when ``learn_logit_scale``. Checkpoints and evaluation
    therefore carry it; the losses in :mod:`daug_core.contrastive.losses` take it as an argument.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from daug_core.contrastive.config import (
    ClipModelConfig,
    ContrastiveConfig,
    check_local_checkpoint_name,
)
from daug_core.rng import seeded_init

logger = logging.getLogger(__name__)

TextTokenizer = Callable[..., torch.Tensor]

# Custom architectures this process registered with open_clip (name -> registered config).
_REGISTERED: dict[str, dict[str, Any]] = {}


class ModelLoadError(RuntimeError):
    """The open_clip model or its checkpoint cannot be created or loaded."""


class HeatmapInputError(ValueError):
    """Images or heatmaps do not fit the model (shape, target list, non-finite values)."""


class ClipEmbeddings(NamedTuple):
    """L2-normalised image and text embeddings, (B, D) each."""

    image: torch.Tensor
    text: torch.Tensor


_REGISTRATION = threading.Lock()


def register_architecture(config: ClipModelConfig) -> None:
    """Make ``config.model_name`` known to open_clip (create_model, get_tokenizer).

    A custom :class:`~daug_core.contrastive.config.ClipArchitecture` is written to a temporary JSON
    file
    and registered with ``open_clip.add_model_config`` (open_clip keeps the parsed config, so the
    file is removed again). Re-registering a name this process registered replaces it; a name that
    open_clip already knows from elsewhere (a built-in) is refused. ``add_model_config`` rescans
    every directory ever registered, so registrations take turns under a lock (the ablation
    flow builds models in two threads; a concurrent rescan saw the other thread's temporary
    file vanish).
    """
    with _REGISTRATION:
        _register(config)


def _register(config: ClipModelConfig) -> None:
    if config.architecture is None:
        if open_clip.get_model_config(config.model_name) is None:
            raise ModelLoadError(
                f"open_clip has no model config {config.model_name!r} and the config gives no "
                f"architecture; built-in names: e.g. ViT-B-32, ViT-B-16"
            )
        return
    wanted = config.architecture.open_clip_config(config.image_size, config.context_length)
    if _REGISTERED.get(config.model_name) == wanted:
        return
    if config.model_name not in _REGISTERED and open_clip.get_model_config(config.model_name):
        raise ModelLoadError(
            f"model_name {config.model_name!r} is already an open_clip model; give the custom "
            f"architecture another name"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{config.model_name}.json"
        path.write_text(json.dumps(wanted))
        open_clip.add_model_config(path)
    _REGISTERED[config.model_name] = wanted
    logger.debug("registered open_clip architecture %s: %s", config.model_name, wanted)


def build_tokenizer(config: ClipModelConfig) -> TextTokenizer:
    """open_clip's bundled BPE tokenizer at ``config.context_length`` (works offline).

    ``tokenizer(list_of_texts)`` gives int64 token ids (N, context_length), truncated.
    """
    register_architecture(config)
    tokenizer: TextTokenizer = open_clip.get_tokenizer(
        config.model_name, context_length=config.context_length
    )
    return tokenizer


def resolve_checkpoint(pretrained: str) -> Path:
    """The existing local file ``pretrained`` names; :class:`ModelLoadError` otherwise.

    Never consults the hub: a name that is not an existing file fails here, at once.
    """
    try:
        check_local_checkpoint_name(pretrained)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"pretrained checkpoint {str(path)!r} is not an existing file")
    return path


def widen_patch_embedding(
    conv: nn.Conv2d, num_heatmaps: int, mean: torch.Tensor, std: torch.Tensor
) -> nn.Conv2d:
    """The ``append`` patch embedding: 1 + K input channels from a 3-channel (RGB) ``conv``.

    See the module docstring: the grey kernel folds the per-channel normalisation
    (W'_0 = s̄ Σ_c W_c / s_c, bias b' = Σ_c ((m̄ − m_c) / s_c) Σ W_c), heatmap kernels start at 0,
    so a grey image gives exactly the 3-channel response whatever the heatmaps.
    """
    if conv.in_channels != 3 or conv.groups != 1:
        raise ModelLoadError(f"expected a 3-channel patch embedding, got {conv}")
    weight = conv.weight.detach().double()  # (D, 3, p, p); fold in float64, then cast back
    mean64, std64 = mean.double(), std.double()
    mean_bar, std_bar = mean64.mean(), std64.mean()
    grey = std_bar * (weight / std64[None, :, None, None]).sum(dim=1, keepdim=True)
    bias = (weight.sum(dim=(2, 3)) * ((mean_bar - mean64) / std64)[None, :]).sum(dim=1)
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double()
    widened = nn.Conv2d(
        1 + num_heatmaps,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    new_weight = torch.cat(
        [grey, weight.new_zeros((weight.shape[0], num_heatmaps, *weight.shape[2:]))], dim=1
    )
    with torch.no_grad():
        widened.weight.copy_(new_weight.to(conv.weight.dtype))
        assert widened.bias is not None
        widened.bias.copy_(bias.to(conv.weight.dtype))
    return widened


class HeatmapClip(nn.Module):
    """open_clip CLIP plus the DAug heatmap input (see the module docstring for the modes).

    Build with :func:`build_clip_model`. ``heatmap_targets`` is the stored heatmap channel order
    (the heatmap store's ``targets`` attribute); heatmaps passed to :meth:`encode_image` must have
    those K channels in that order.
    """

    # Buffers (registered in __init__), declared for the type checker.
    image_mean: torch.Tensor
    image_std: torch.Tensor

    def __init__(
        self,
        clip: open_clip.CLIP,
        config: ClipModelConfig,
        heatmap_targets: tuple[str, ...],
        heatmap_visual: nn.Module | None,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.heatmap_visual = heatmap_visual
        self.config = config
        self.heatmap_targets = heatmap_targets
        self.target_index = (
            heatmap_targets.index(config.channel_target)
            if config.heatmap_mode in ("channel", "add")
            else None
        )
        preprocess = clip.visual.preprocess_cfg
        mean = torch.tensor(preprocess["mean"], dtype=torch.float32)
        std = torch.tensor(preprocess["std"], dtype=torch.float32)
        # Derived from the open_clip config, so not part of the state dict.
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    @property
    def mode(self) -> str:
        return self.config.heatmap_mode

    @property
    def num_heatmaps(self) -> int:
        return len(self.heatmap_targets)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[1])

    @property
    def logit_scale(self) -> torch.Tensor:
        """The contrastive scale s (exp of open_clip's log-parametrised ``logit_scale``)."""
        scale: torch.Tensor = self.clip.logit_scale.exp()
        return scale

    def normalise_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """open_clip's per-channel normalisation of a (B, 3, S, S) tensor in [0, 1]."""
        mean = self.image_mean.to(rgb.dtype)[None, :, None, None]
        std = self.image_std.to(rgb.dtype)[None, :, None, None]
        return (rgb - mean) / std

    def encode_image(
        self, image: torch.Tensor, heatmaps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L2-normalised image embeddings (B, D) of grey images (B, 1, S, S) in [0, 1] and their
        heatmaps (B, K, S, S) in [0, 1] (ignored, and may be None, in mode ``none``)."""
        features = self.image_features(image, heatmaps)
        return F.normalize(features, dim=-1)

    def image_features(
        self, image: torch.Tensor, heatmaps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The projected image features before L2 normalisation (B, D)."""
        self._check_image(image)
        grey_rgb = self.normalise_rgb(image.expand(-1, 3, -1, -1))
        if self.mode == "none":
            features: torch.Tensor = self.clip.visual(grey_rgb)
            return features
        maps = self._check_heatmaps(heatmaps, image)
        if self.mode == "append":
            inputs = torch.cat([image, maps], dim=1)
            mean_bar = self.image_mean.mean().to(image.dtype)
            std_bar = self.image_std.mean().to(image.dtype)
            features = self.clip.visual((inputs - mean_bar) / std_bar)
            return features
        assert self.target_index is not None
        target = maps[:, self.target_index : self.target_index + 1]
        if self.mode == "channel":
            # Official DAug: x_img[:, 0] = x_hmp[:, 0] after both went through the processor.
            heat_r = (target - self.image_mean[0].to(image.dtype)) / self.image_std[0].to(
                image.dtype
            )
            features = self.clip.visual(torch.cat([heat_r, grey_rgb[:, 1:]], dim=1))
            return features
        # mode == "add": two towers, features averaged before normalisation (official).
        assert self.heatmap_visual is not None
        heat_rgb = self.normalise_rgb(target.expand(-1, 3, -1, -1))
        features = (self.clip.visual(grey_rgb) + self.heatmap_visual(heat_rgb)) / 2
        return features

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings (N, D) of token ids (N, context_length)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise HeatmapInputError(
                f"tokens must be (N, {self.context_length}), got {tuple(tokens.shape)}; "
                f"use build_tokenizer(config)"
            )
        text: torch.Tensor = self.clip.encode_text(tokens, normalize=True)
        return text

    def forward(
        self, image: torch.Tensor, heatmaps: torch.Tensor | None, tokens: torch.Tensor
    ) -> ClipEmbeddings:
        return ClipEmbeddings(self.encode_image(image, heatmaps), self.encode_text(tokens))

    def _check_image(self, image: torch.Tensor) -> None:
        size = self.image_size
        if image.ndim != 4 or image.shape[1] != 1 or image.shape[2:] != (size, size):
            raise HeatmapInputError(
                f"image must be (B, 1, {size}, {size}) in [0, 1], got {tuple(image.shape)}"
            )

    def _check_heatmaps(self, heatmaps: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
        expected = (image.shape[0], self.num_heatmaps, *image.shape[2:])
        if heatmaps is None:
            raise HeatmapInputError(
                f"heatmap_mode {self.mode!r} needs heatmaps of shape {expected}, got None"
            )
        if tuple(heatmaps.shape) != expected:
            raise HeatmapInputError(
                f"heatmaps must be {expected} (targets {self.heatmap_targets}), "
                f"got {tuple(heatmaps.shape)}"
            )
        maps = heatmaps.to(image.dtype)
        if not torch.isfinite(maps).all():
            # NaN marks "not computed" in the heatmap store; it must not reach the embedding.
            raise HeatmapInputError("heatmaps contain non-finite values (not computed?)")
        if self.config.rescale_heatmaps:
            lo = maps.amin(dim=(2, 3), keepdim=True)
            hi = maps.amax(dim=(2, 3), keepdim=True)
            maps = (maps - lo) / (hi - lo).clamp_min(1e-6)
        return maps


def build_clip_model(
    config: ClipModelConfig,
    heatmap_targets: Sequence[str] = (),
    *,
    generator: torch.Generator,
    logit_scale: float = 100.0,
    learn_logit_scale: bool = False,
) -> HeatmapClip:
    """A :class:`HeatmapClip` on CPU in float32.

    Weights: random from ``generator`` (open_clip's initialisation, run under
    :func:`~daug_core.rng.seeded_init`), then the local ``config.pretrained`` checkpoint if any
    (loaded into the 3-channel model), then the mode's changes: ``add`` copies the image tower,
    ``append`` widens its patch embedding. Two builds from equal generators share all weights
    whatever the mode. ``logit_scale`` (the scale, not its log) replaces the checkpoint's value.
    """
    targets = tuple(heatmap_targets)
    if len(set(targets)) != len(targets):
        raise HeatmapInputError(f"heatmap targets repeat: {targets}")
    mode = config.heatmap_mode
    if mode in ("channel", "add") and config.channel_target not in targets:
        raise HeatmapInputError(
            f"heatmap_mode {mode!r} uses target {config.channel_target!r}, which is not among "
            f"the stored heatmap targets {targets}"
        )
    if mode == "append" and not targets:
        raise HeatmapInputError("heatmap_mode 'append' needs at least one heatmap target")
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    checkpoint = resolve_checkpoint(config.pretrained) if config.pretrained else None

    register_architecture(config)
    with seeded_init(generator):
        try:
            # A file path (never a tag: resolve_checkpoint checked it is a file) makes open_clip
            # load it strictly with ``load_checkpoint``, interpolating the image and text position
            # embeddings to image_size / context_length (ViT-B/32's 224 px / 77 tokens into
            # 256 px / 154 tokens, as the official run resamples them).
            clip = open_clip.create_model(
                config.model_name,
                pretrained=str(checkpoint) if checkpoint else None,
                force_image_size=config.image_size,
                force_context_length=config.context_length,
                force_quick_gelu=config.quick_gelu,
            )
        except Exception as exc:  # torch / safetensors / open_clip raise many types
            source = f"checkpoint {str(checkpoint)!r}" if checkpoint else "random init"
            raise ModelLoadError(
                f"cannot create open_clip model {config.model_name!r} from {source}: {exc}"
            ) from exc
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(logit_scale))
    clip.logit_scale.requires_grad_(learn_logit_scale)

    heatmap_visual = copy.deepcopy(clip.visual) if mode == "add" else None
    if mode == "append":
        preprocess = clip.visual.preprocess_cfg
        clip.visual.conv1 = widen_patch_embedding(
            clip.visual.conv1,
            len(targets),
            torch.tensor(preprocess["mean"]),
            torch.tensor(preprocess["std"]),
        )
    model = HeatmapClip(clip, config, targets, heatmap_visual)
    logger.info(
        "built %s (%s, %d px, context %d, mode %s, K=%d): %.2f M parameters",
        config.model_name,
        "pretrained" if checkpoint else "random init",
        config.image_size,
        config.context_length,
        mode,
        len(targets),
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def build_model(
    config: ContrastiveConfig, heatmap_targets: tuple[str, ...], seed: int
) -> HeatmapClip:
    """The model of ``config`` with weights drawn from ``seed`` (then its local pretrained
    checkpoint, if the config names one)."""
    return build_clip_model(
        config.model,
        heatmap_targets,
        generator=torch.Generator().manual_seed(seed),
        logit_scale=config.loss.logit_scale,
        learn_logit_scale=config.loss.learn_logit_scale,
    )
