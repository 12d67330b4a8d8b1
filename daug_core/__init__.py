"""The math of DAug: a pure library (torch, numpy and the model libraries only).

Exported here, the diffusion core: generator (DDPM UNet) and noise-aware classifier training,
DDIM inversion and classifier-guided decoding, and the per-class heatmaps
|minmax(x0) - minmax(x_cf)|. The contrastive half lives in its modules, imported from there
(they load open_clip): ``clip_config``, ``clip_model``, ``losses``, ``clip_training``,
``metrics``, ``retrieval``. No Prefect, Ray, Zarr or storage imports: flows call these
functions and own all file and cluster handling.

The names below load their module on first use (PEP 562), so ``import daug_core.config`` (the
CLI does it for every command) does not pay for diffusers and torch models up front.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "BatchError": "daug_core.training",
    "CheckpointError": "daug_core.checkpoints",
    "ClassifierConfig": "daug_core.config",
    "ClassifierEvaluation": "daug_core.classifier_eval",
    "ClassifierState": "daug_core.classifier_training",
    "ConfigError": "daug_core.config",
    "DEFAULT_CLASS_NAMES": "daug_core.config",
    "DiffusionConfig": "daug_core.config",
    "GeneratorConfig": "daug_core.config",
    "GeneratorState": "daug_core.generator",
    "HeatmapResult": "daug_core.heatmaps",
    "NoiseAwareClassifier": "daug_core.classifier",
    "NoiseLevelMetrics": "daug_core.classifier_eval",
    "NoiseScheduleConfig": "daug_core.config",
    "StepReport": "daug_core.training",
    "Target": "daug_core.guidance",
    "TargetError": "daug_core.guidance",
    "TrainingConfig": "daug_core.config",
    "TrainingResult": "daug_core.training",
    "TranslationConfig": "daug_core.config",
    "all_targets": "daug_core.guidance",
    "alphas_cumprod": "daug_core.schedule",
    "build_classifier": "daug_core.classifier",
    "build_unet": "daug_core.generator",
    "checkpoint_sha256": "daug_core.checkpoints",
    "compute_heatmaps": "daug_core.heatmaps",
    "compute_heatmaps_reference": "daug_core.heatmaps",
    "config_from_dict": "daug_core.config",
    "config_to_dict": "daug_core.config",
    "ddim_decode": "daug_core.ddim",
    "ema_unet": "daug_core.generator",
    "evaluate_classifier": "daug_core.classifier_eval",
    "guided_decode": "daug_core.guidance",
    "heatmap": "daug_core.heatmaps",
    "init_classifier_state": "daug_core.classifier_training",
    "init_generator_state": "daug_core.generator",
    "invert_to_level": "daug_core.ddim",
    "load_classifier": "daug_core.checkpoints",
    "load_classifier_checkpoint": "daug_core.checkpoints",
    "load_generator_checkpoint": "daug_core.checkpoints",
    "load_unet": "daug_core.checkpoints",
    "make_cond_fn": "daug_core.guidance",
    "make_noise_scheduler": "daug_core.schedule",
    "masked_bce_with_logits": "daug_core.classifier_loss",
    "pos_weight_from_labels": "daug_core.classifier_loss",
    "preset": "daug_core.config",
    "roc_auc": "daug_core.metrics",
    "roc_auc_per_class": "daug_core.metrics",
    "save_classifier_checkpoint": "daug_core.checkpoints",
    "save_generator_checkpoint": "daug_core.checkpoints",
    "train_classifier": "daug_core.classifier_training",
    "train_generator": "daug_core.generator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'daug_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
