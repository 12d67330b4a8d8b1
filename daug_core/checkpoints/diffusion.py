"""Checkpoints of the diffusion models: the generator (diffusers UNets, raw and EMA weights) and
the noise-aware classifier, trained here or converted from guided-diffusion, in the one layout
of :mod:`daug_core.checkpoints.layout`.

A converted generator decodes with its class label and drops its variance channels
(:class:`~daug_core.diffusion.guided_diffusion_convert.ConditionedEps`); converted models
cannot resume training. The trainer state exists to resume bit-for-bit; inference loaders
ignore it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from safetensors.torch import load_file

from daug_core.checkpoints.foreign import convert_foreign_weights
from daug_core.checkpoints.layout import (
    Pretrained,
    flat_weights,
    load_pretrained,
    load_trainer_state,
    read_json,
    resolve_device,
    save_pretrained,
    trainer_state_writer,
)
from daug_core.checkpoints.manifest import file_sha256
from daug_core.checkpoints.names import TRAINER_STATE, UNET_DIR, UNET_EMA_DIR
from daug_core.diffusion.classifier.factory import classifier_module
from daug_core.diffusion.classifier.model import NoiseAwareClassifier
from daug_core.diffusion.classifier.training import ClassifierState
from daug_core.diffusion.config import (
    classifier_config_from_dict,
    config_from_dict,
    config_to_dict,
)
from daug_core.diffusion.generator import GeneratorState, make_ema
from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionClassifierConfig
from daug_core.diffusion.guided_diffusion_convert import (
    ConditionedEps,
    GuidedDiffusionConfig,
    convert_unet,
)
from daug_core.settings import CheckpointError, ConfigError, dataclass_from_dict
from daug_core.training import make_optimizer

if TYPE_CHECKING:  # imported where used: the converter's module is only needed for encoders
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier

GENERATOR_KINDS = ("generator", "guided_diffusion_generator")
CLASSIFIER_KINDS = ("classifier", "guided_diffusion_classifier")


# --- generator -------------------------------------------------------------------------------


def _unet_writer(unet: torch.nn.Module, ema_unet: torch.nn.Module, then: Any = None) -> Any:
    def write(directory: Path) -> None:
        for module, name in ((unet, UNET_DIR), (ema_unet, UNET_EMA_DIR)):
            module.save_pretrained(directory / name, safe_serialization=True)  # type: ignore[operator]
        if then is not None:
            then(directory)

    return write


def save_generator_checkpoint(state: GeneratorState, directory: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``directory`` (replacing it atomically); returns the path."""
    ema_model = copy.deepcopy(state.unet)
    state.ema.copy_to(ema_model.parameters())
    ema_state = {k: v for k, v in state.ema.state_dict().items() if k != "shadow_params"}
    trainer = trainer_state_writer(
        optimizer=state.optimizer,
        generator=state.generator,
        step=state.step,
        extra={"ema": ema_state},
    )
    return save_pretrained(
        directory,
        kind="generator",
        header={"config": config_to_dict(state.config)},
        write=_unet_writer(state.unet, ema_model, trainer),
    )


def save_converted_generator(
    unet: torch.nn.Module,
    ema_unet: torch.nn.Module,
    directory: str | os.PathLike[str],
    *,
    model: GuidedDiffusionConfig,
    sources: dict[str, str],
) -> Path:
    """Write converted guided-diffusion UNets (raw and EMA weights, diffusers ``UNet2DModel``)
    as a generator checkpoint whose header holds the decoding label, the ε channels, the
    guided-diffusion settings and the sha256 of each source file; atomically."""
    header = {
        "config": dataclasses.asdict(model),
        "class_label": model.label,
        "eps_channels": model.in_channels,
        "sources": sources,
    }
    return save_pretrained(
        directory,
        kind="guided_diffusion_generator",
        header=header,
        write=_unet_writer(unet, ema_unet),
    )


def convert_guided_diffusion(
    model: GuidedDiffusionConfig,
    weights: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    ema_weights: str | os.PathLike[str] | None = None,
) -> Path:
    """A guided-diffusion generator (``weights``: its ``model*.pt``; ``ema_weights``: its
    ``ema_*.pt``, else the raw weights serve as both) as our generator checkpoint at
    ``directory``; the official DAug code decodes with the raw weights."""
    raw = convert_foreign_weights(weights, lambda state: convert_unet(model, state))
    ema = raw
    if ema_weights is not None:
        ema = convert_foreign_weights(ema_weights, lambda state: convert_unet(model, state))
    sources = {"weights": file_sha256(Path(weights))}
    if ema_weights is not None:
        sources["ema_weights"] = file_sha256(Path(ema_weights))
    return save_converted_generator(raw, ema, directory, model=model, sources=sources)


def _diffusers_unet(
    found: Pretrained, *, use_ema: bool, device: str | torch.device, dtype: torch.dtype
) -> UNet2DModel:
    path = found.directory / (UNET_EMA_DIR if use_ema else UNET_DIR)
    if not (path / "config.json").is_file():
        raise CheckpointError(found.directory, f"missing {path.name}/config.json")
    # low_cpu_mem_usage needs `accelerate` (not a dependency); without it diffusers warns.
    unet = UNet2DModel.from_pretrained(
        path, local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False
    )
    return unet.to(device=device).eval()


def load_unet(
    directory: str | os.PathLike[str],
    *,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The ε-model for inference (EMA weights by default), in eval mode, on ``device``/
    ``dtype``: the UNet itself, or for a converted guided-diffusion generator the UNet
    decoding with its class label, variance channels dropped."""
    found = load_pretrained(directory, GENERATOR_KINDS)
    module: torch.nn.Module = _diffusers_unet(found, use_ema=use_ema, device=device, dtype=dtype)
    if found.kind == "guided_diffusion_generator":
        module = ConditionedEps(
            module,
            channels=int(found.header["eps_channels"]),
            class_label=found.header["class_label"],
        )
    return module.eval()


def load_generator_checkpoint(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> GeneratorState:
    """The full training state, to resume :func:`daug_core.diffusion.generator.train_generator`."""
    found = load_pretrained(directory, GENERATOR_KINDS)
    if found.kind != "generator":
        raise CheckpointError(
            found.directory,
            "a converted guided-diffusion generator decodes heatmaps; it cannot resume training",
        )
    dev = resolve_device(device)
    config = config_from_dict(found.header["config"])
    unet = _diffusers_unet(found, use_ema=False, device=dev, dtype=torch.float32)
    ema_weights = _diffusers_unet(found, use_ema=True, device=dev, dtype=torch.float32)
    ema = make_ema(ema_weights, config.generator_training)
    optimizer = make_optimizer(unet, config.generator_training)
    meta, generator = load_trainer_state(found.directory, optimizer, dev)
    ema.load_state_dict(meta["ema"])
    return GeneratorState(config, unet, ema, optimizer, generator, step=int(meta["step"]))


# --- classifier ------------------------------------------------------------------------------


def save_classifier_checkpoint(state: ClassifierState, directory: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``directory`` (replacing it atomically); returns the path. The
    header holds the network's :class:`~daug_core.diffusion.config.ClassifierConfig` and the
    loss's ``pos_weight``; the trainer state the whole training config, to resume."""
    header = {
        "config": dataclasses.asdict(state.config.classifier),
        "pos_weight": [float(w) for w in state.pos_weight.detach().cpu()],
    }
    trainer = trainer_state_writer(
        optimizer=state.optimizer,
        generator=state.generator,
        step=state.step,
        extra={"config": config_to_dict(state.config)},
    )
    return save_pretrained(
        directory,
        kind="classifier",
        header=header,
        weights=flat_weights(state.classifier),
        write=trainer,
    )


def convert_guided_diffusion_classifier(
    model: GuidedDiffusionClassifierConfig,
    weights: str | os.PathLike[str],
    directory: str | os.PathLike[str],
) -> Path:
    """A guided-diffusion classifier (``weights``: its ``model*.pt``, a state dict or the
    official training script's ``{"state_dict": ...}``) as our classifier checkpoint at
    ``directory``, atomically."""
    from daug_core.diffusion.classifier.guided_diffusion import convert_classifier

    classifier = convert_foreign_weights(
        weights, lambda state: convert_classifier(model, state), key="state_dict"
    )
    header = {
        "config": dataclasses.asdict(model),
        "sources": {"weights": file_sha256(Path(weights))},
    }
    return save_pretrained(
        directory,
        kind="guided_diffusion_classifier",
        header=header,
        weights=flat_weights(classifier),
    )


def _load_encoder(found: Pretrained) -> EncoderClassifier:
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier

    try:
        model = dataclass_from_dict(GuidedDiffusionClassifierConfig, found.header["config"])
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(found.directory, f"guided-diffusion settings: {exc}") from exc
    with torch.device("meta"):
        classifier = EncoderClassifier(model)
    classifier.load_state_dict(load_file(str(found.weights)), strict=True, assign=True)
    return classifier


def load_classifier(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> NoiseAwareClassifier | EncoderClassifier:
    """The classifier for inference, in eval mode, on ``device``/``dtype``: ours, or a
    converted guided-diffusion one."""
    return _classifier(load_pretrained(directory, CLASSIFIER_KINDS), device=device, dtype=dtype)


def _classifier(
    found: Pretrained, *, device: str | torch.device, dtype: torch.dtype
) -> NoiseAwareClassifier | EncoderClassifier:
    if found.kind == "guided_diffusion_classifier":
        return _load_encoder(found).to(device=device, dtype=dtype).eval()
    cfg = classifier_config_from_dict(found.header["config"])
    weights = found.weights
    with torch.device("meta"):
        classifier = classifier_module(cfg)
    classifier.load_state_dict(load_file(str(weights)), strict=True, assign=True)
    if any(t.is_meta for t in [*classifier.parameters(), *classifier.buffers()]):
        raise CheckpointError(found.directory, f"{weights.name} does not cover every tensor")
    return classifier.to(device=device, dtype=dtype).eval()


def load_classifier_checkpoint(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> ClassifierState:
    """The full training state, to resume
    :func:`daug_core.diffusion.classifier.training.train_classifier`."""
    found = load_pretrained(directory, CLASSIFIER_KINDS)
    if found.kind != "classifier":
        raise CheckpointError(
            found.directory,
            "a converted guided-diffusion classifier: it guides heatmaps, it cannot resume "
            "training",
        )
    dev = resolve_device(device)
    state = read_json(found.directory / f"{TRAINER_STATE}.json")
    config = config_from_dict(state["config"])
    classifier = _classifier(found, device=dev, dtype=torch.float32)
    pos_weight = torch.tensor(found.header["pos_weight"], device=dev)
    optimizer = make_optimizer(classifier, config.classifier_training)
    meta, generator = load_trainer_state(found.directory, optimizer, dev)
    return ClassifierState(config, classifier, optimizer, generator, pos_weight, int(meta["step"]))
