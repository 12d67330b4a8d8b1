"""Checkpoints: weights as safetensors, configs as JSON, written atomically; sha256 for provenance.

Generator checkpoint directory::

    unet/                 UNet2DModel.save_pretrained (config.json + safetensors)
    unet_ema/             the same UNet carrying the EMA weights (what heatmaps should use)
    trainer_state.safetensors + trainer_state.json
                          AdamW tensors, torch.Generator state, step, EMA counters, DiffusionConfig

A guided-diffusion generator converted by ``daug convert-generator`` has the same ``unet/`` and
``unet_ema/`` (diffusers ``UNet2DModel``, class embedding and variance channels included) and,
instead of the trainer state, ``eps.json``: the class label every decoding uses and the
ε channels; :func:`load_unet` then returns the ε-model (:class:`ConditionedEps`). It decodes
heatmaps; it cannot resume training.

Classifier checkpoint directory::

    classifier.safetensors + classifier.json   weights; ClassifierConfig and pos_weight
    trainer_state.safetensors + trainer_state.json

or, converted by ``daug convert-classifier`` from a guided-diffusion classifier (the official
DAug one), ``encoder.safetensors + encoder.json`` (its settings, class names and sources);
:func:`load_classifier` returns either network. The converted one cannot resume training.

A training run's output folder holds both, as ``generator/`` and ``classifier/``
(:data:`GENERATOR_DIR`, :data:`CLASSIFIER_DIR`). The trainer state exists to resume training
bit-for-bit; inference loaders ignore it. No pickle
is written or read. Loading is local-only (works with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from safetensors.torch import load_file, save_file

from daug_core import strict_json
from daug_core.diffusion.classifier.factory import classifier_module
from daug_core.diffusion.classifier.model import NoiseAwareClassifier
from daug_core.diffusion.classifier.training import ClassifierState
from daug_core.diffusion.config import (
    ClassifierConfig,
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
    read_weights,
)
from daug_core.settings import CheckpointError, ConfigError, dataclass_from_dict
from daug_core.training import make_optimizer

if TYPE_CHECKING:  # imported where used: it loads open_clip, which most callers never need
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier

FORMAT_VERSION = 1
# A train-generator output folder holds one checkpoint directory per model.
GENERATOR_DIR, CLASSIFIER_DIR = "generator", "classifier"
TRAINER_STATE = "trainer_state"
UNET_DIR = "unet"
UNET_EMA_DIR = "unet_ema"
EPS_JSON = "eps.json"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_JSON = "classifier.json"
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_JSON = "encoder.json"


# --- provenance -------------------------------------------------------------------------------


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 over the model weights under ``path`` (a file, or a directory tree).

    For a directory: every ``*.safetensors`` file except the trainer state, in sorted relative
    path order, each contributing its relative POSIX path, a NUL byte, its size and its bytes. JSON
    configs, timestamps and optimizer state do not change the hash; any weight does.
    """
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            (p for p in root.rglob("*.safetensors") if p.name != f"{TRAINER_STATE}.safetensors"),
            key=lambda p: p.relative_to(root).as_posix(),
        )
    else:
        raise CheckpointError(root, "does not exist")
    if not files:
        raise CheckpointError(root, "holds no *.safetensors weight file")
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + file.stat().st_size.to_bytes(8, "little"))
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --- file manifest: every file's sha256, checked before a checkpoint is used ----------------------

MANIFEST = "SHA256SUMS.json"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    sums = {p.relative_to(directory).as_posix(): _file_sha256(p) for p in files}
    _write_json(directory / MANIFEST, {"sha256": sums})


def verify_checkpoint_files(directory: str | os.PathLike[str]) -> bool:
    """Check every file of a checkpoint directory against the sha256 recorded when it was
    written (``SHA256SUMS.json``): a changed, replaced (a pickle named like the weights) or
    missing file is a :class:`CheckpointError` before anything is loaded. True when checked;
    False for a checkpoint written before manifests existed (nothing to check against)."""
    root = Path(directory)
    manifest = root / MANIFEST
    if not manifest.is_file():
        return False
    try:
        sums: dict[str, str] = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(root, f"{MANIFEST} is damaged: {exc}") from None
    for name, recorded in sums.items():
        path = root / name
        if not path.is_file():
            raise CheckpointError(root, f"{name} is missing (listed in {MANIFEST})")
        if _file_sha256(path) != recorded:
            raise CheckpointError(
                root, f"{name} differs from the file written with the checkpoint (sha256)"
            )
    return True


# --- atomic directory writes -------------------------------------------------------------------


@contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """Write into a hidden sibling directory, then swap it into place (never a half checkpoint)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.with_name(f".{target.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        _write_manifest(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{tag}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(strict_json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(path.parent, f"missing {path.name}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- trainer state (optimizer + RNG), shared by both models ------------------------------------


def _save_trainer_state(
    directory: Path,
    *,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    extra: dict[str, Any],
) -> None:
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"generator_state": generator.get_state().contiguous()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, str(directory / f"{TRAINER_STATE}.safetensors"))
    _write_json(
        directory / f"{TRAINER_STATE}.json",
        {
            "format_version": FORMAT_VERSION,
            "step": step,
            "generator_device": generator.device.type,
            "optimizer_param_groups": opt["param_groups"],
            "optimizer_scalars": scalars,
            **extra,
        },
    )


def _load_trainer_state(
    directory: Path, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[dict[str, Any], torch.Generator]:
    meta = _read_json(directory / f"{TRAINER_STATE}.json")
    tensor_path = directory / f"{TRAINER_STATE}.safetensors"
    if not tensor_path.is_file():
        raise CheckpointError(directory, f"missing {tensor_path.name}")
    tensors = load_file(str(tensor_path))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entry in meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["optimizer_param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    saved_on = meta["generator_device"]
    if saved_on == "cpu":
        generator = torch.Generator(device="cpu")
    elif saved_on == device.type:
        generator = torch.Generator(device=device)
    else:
        raise CheckpointError(directory, f"RNG state was saved on {saved_on}; load on {saved_on}")
    generator.set_state(tensors["generator_state"])
    return meta, generator


def _device(device: str | torch.device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


# --- generator ---------------------------------------------------------------------------------


def save_generator_checkpoint(state: GeneratorState, directory: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``directory`` (replacing it atomically); returns the path."""
    target = Path(directory)
    with _atomic_directory(target) as tmp:
        state.unet.save_pretrained(tmp / UNET_DIR, safe_serialization=True)
        ema_model = copy.deepcopy(state.unet)
        state.ema.copy_to(ema_model.parameters())
        ema_model.save_pretrained(tmp / UNET_EMA_DIR, safe_serialization=True)
        ema_state = {k: v for k, v in state.ema.state_dict().items() if k != "shadow_params"}
        _save_trainer_state(
            tmp,
            optimizer=state.optimizer,
            generator=state.generator,
            step=state.step,
            extra={"ema": ema_state, "config": config_to_dict(state.config)},
        )
    return target


def save_converted_generator(
    unet: torch.nn.Module,
    ema_unet: torch.nn.Module,
    directory: str | os.PathLike[str],
    *,
    model: GuidedDiffusionConfig,
    sources: dict[str, str],
) -> Path:
    """Write converted guided-diffusion UNets (raw and EMA weights, diffusers ``UNet2DModel``)
    as a generator checkpoint, with ``eps.json`` (decoding label, ε channels, the
    guided-diffusion settings and the sha256 of each source file); atomically."""
    target = Path(directory)
    with _atomic_directory(target) as tmp:
        for module, name in ((unet, UNET_DIR), (ema_unet, UNET_EMA_DIR)):
            module.save_pretrained(tmp / name, safe_serialization=True)  # type: ignore[operator]
        _write_json(
            tmp / EPS_JSON,
            {
                "format": FORMAT_VERSION,
                "class_label": model.label,
                "eps_channels": model.in_channels,
                "guided_diffusion": dataclasses.asdict(model),
                "sources": sources,
            },
        )
    return target


def _load_diffusers_unet(
    directory: str | os.PathLike[str],
    *,
    use_ema: bool,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNet2DModel:
    path = Path(directory) / (UNET_EMA_DIR if use_ema else UNET_DIR)
    verify_checkpoint_files(directory)
    if not (path / "config.json").is_file():
        raise CheckpointError(Path(directory), f"missing {path.name}/config.json")
    # low_cpu_mem_usage needs `accelerate` (not a dependency); without it diffusers warns.
    unet = UNet2DModel.from_pretrained(
        path, local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False
    )
    return unet.to(device=device).eval()


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
    raw = convert_unet(model, read_weights(weights))
    ema = convert_unet(model, read_weights(ema_weights)) if ema_weights is not None else raw
    sources = {"weights": _file_sha256(Path(weights))}
    if ema_weights is not None:
        sources["ema_weights"] = _file_sha256(Path(ema_weights))
    return save_converted_generator(raw, ema, directory, model=model, sources=sources)


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
    unet = _load_diffusers_unet(directory, use_ema=use_ema, device=device, dtype=dtype)
    module: torch.nn.Module = unet
    eps_file = Path(directory) / EPS_JSON
    if eps_file.is_file():
        meta = _read_json(eps_file)
        module = ConditionedEps(
            module, channels=int(meta["eps_channels"]), class_label=meta["class_label"]
        )
    return module.eval()


def load_generator_checkpoint(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> GeneratorState:
    """The full training state, to resume :func:`daug_core.diffusion.generator.train_generator`."""
    root = Path(directory)
    if (root / EPS_JSON).is_file():
        raise CheckpointError(
            root,
            "a converted guided-diffusion generator decodes heatmaps; it cannot resume training",
        )
    dev = _device(device)
    meta = _read_json(root / f"{TRAINER_STATE}.json")
    config = config_from_dict(meta["config"])
    unet = _load_diffusers_unet(root, use_ema=False, device=dev)
    ema_weights = _load_diffusers_unet(root, use_ema=True, device=dev)
    ema = make_ema(ema_weights, config.generator_training)
    ema.load_state_dict(meta["ema"])
    optimizer = make_optimizer(unet, config.generator_training)
    meta, generator = _load_trainer_state(root, optimizer, dev)
    return GeneratorState(config, unet, ema, optimizer, generator, step=int(meta["step"]))


# --- classifier --------------------------------------------------------------------------------


def _save_classifier_files(
    directory: Path,
    classifier: torch.nn.Module,
    config: ClassifierConfig,
    pos_weight: torch.Tensor,
) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    save_file(weights, str(directory / CLASSIFIER_WEIGHTS), metadata={"format": "pt"})
    _write_json(
        directory / CLASSIFIER_JSON,
        {
            "format_version": FORMAT_VERSION,
            "classifier": dataclasses.asdict(config),
            "pos_weight": [float(w) for w in pos_weight.detach().cpu()],
        },
    )


def save_classifier_checkpoint(state: ClassifierState, directory: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``directory`` (replacing it atomically); returns the path."""
    target = Path(directory)
    with _atomic_directory(target) as tmp:
        _save_classifier_files(tmp, state.classifier, state.config.classifier, state.pos_weight)
        _save_trainer_state(
            tmp,
            optimizer=state.optimizer,
            generator=state.generator,
            step=state.step,
            extra={"config": config_to_dict(state.config)},
        )
    return target


def convert_guided_diffusion_classifier(
    model: GuidedDiffusionClassifierConfig,
    weights: str | os.PathLike[str],
    directory: str | os.PathLike[str],
) -> Path:
    """A guided-diffusion classifier (``weights``: its ``model*.pt``, a state dict or the
    official training script's ``{"state_dict": ...}``) as our classifier checkpoint at
    ``directory``, atomically."""
    from daug_core.diffusion.classifier.guided_diffusion import convert_classifier

    classifier = convert_classifier(model, read_weights(weights, key="state_dict"))
    target = Path(directory)
    with _atomic_directory(target) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
        save_file(tensors, str(tmp / ENCODER_WEIGHTS), metadata={"format": "pt"})
        _write_json(
            tmp / ENCODER_JSON,
            {
                "format": FORMAT_VERSION,
                "guided_diffusion": dataclasses.asdict(model),
                "sources": {"weights": _file_sha256(Path(weights))},
            },
        )
    return target


def _load_encoder(root: Path) -> EncoderClassifier:
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier

    meta = _read_json(root / ENCODER_JSON)
    try:
        model = dataclass_from_dict(GuidedDiffusionClassifierConfig, meta["guided_diffusion"])
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(root, f"{ENCODER_JSON}: {exc}") from exc
    with torch.device("meta"):
        classifier = EncoderClassifier(model)
    classifier.load_state_dict(load_file(str(root / ENCODER_WEIGHTS)), strict=True, assign=True)
    return classifier


def load_classifier(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> NoiseAwareClassifier | EncoderClassifier:
    """The classifier for inference, in eval mode, on ``device``/``dtype``: ours, or a
    converted guided-diffusion one (``encoder.json``)."""
    root = Path(directory)
    verify_checkpoint_files(root)
    if (root / ENCODER_JSON).is_file():
        return _load_encoder(root).to(device=device, dtype=dtype).eval()
    meta = _read_json(root / CLASSIFIER_JSON)
    cfg = classifier_config_from_dict(meta["classifier"])
    weights_path = root / CLASSIFIER_WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(root, f"missing {CLASSIFIER_WEIGHTS}")
    with torch.device("meta"):
        classifier = classifier_module(cfg)
    classifier.load_state_dict(load_file(str(weights_path)), strict=True, assign=True)
    if any(t.is_meta for t in [*classifier.parameters(), *classifier.buffers()]):
        raise CheckpointError(root, f"{CLASSIFIER_WEIGHTS} does not cover every tensor")
    return classifier.to(device=device, dtype=dtype).eval()


def load_classifier_checkpoint(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> ClassifierState:
    """The full training state, to resume
    :func:`daug_core.diffusion.classifier.training.train_classifier`."""
    root = Path(directory)
    if (root / ENCODER_JSON).is_file():
        raise CheckpointError(
            root,
            "a converted guided-diffusion classifier: it guides heatmaps, it cannot resume "
            "training",
        )
    dev = _device(device)
    meta = _read_json(root / f"{TRAINER_STATE}.json")
    config = config_from_dict(meta["config"])
    classifier = load_classifier(root, device=dev)
    pos_weight = torch.tensor(_read_json(root / CLASSIFIER_JSON)["pos_weight"], device=dev)
    optimizer = make_optimizer(classifier, config.classifier_training)
    meta, generator = _load_trainer_state(root, optimizer, dev)
    return ClassifierState(config, classifier, optimizer, generator, pos_weight, int(meta["step"]))
