"""The math of DAug: a pure library (torch, numpy and the model libraries only).

Exported here, the diffusion core: generator (DDPM UNet) and noise-aware classifier training,
DDIM inversion and classifier-guided decoding, and the per-class heatmaps
|minmax(x0) - minmax(x_cf)|. The contrastive half lives in its modules, imported from there
(they load open_clip): ``clip_config``, ``clip_model``, ``losses``, ``clip_training``,
``metrics``, ``retrieval``. No Prefect, Ray, Zarr or storage imports: flows call these
functions and own all file and cluster handling.
"""

from daug_core.checkpoints import (
    CheckpointError,
    checkpoint_sha256,
    load_classifier,
    load_classifier_checkpoint,
    load_generator_checkpoint,
    load_unet,
    save_classifier_checkpoint,
    save_generator_checkpoint,
)
from daug_core.classifier import NoiseAwareClassifier, build_classifier
from daug_core.classifier_eval import ClassifierEvaluation, NoiseLevelMetrics, evaluate_classifier
from daug_core.classifier_loss import masked_bce_with_logits, pos_weight_from_labels
from daug_core.classifier_training import ClassifierState, init_classifier_state, train_classifier
from daug_core.config import (
    DEFAULT_CLASS_NAMES,
    ClassifierConfig,
    ConfigError,
    DiffusionConfig,
    GeneratorConfig,
    NoiseScheduleConfig,
    TrainingConfig,
    TranslationConfig,
    config_from_dict,
    config_to_dict,
    preset,
)
from daug_core.ddim import ddim_decode, invert_to_level
from daug_core.generator import (
    GeneratorState,
    build_unet,
    ema_unet,
    init_generator_state,
    train_generator,
)
from daug_core.guidance import Target, TargetError, all_targets, guided_decode, make_cond_fn
from daug_core.heatmaps import HeatmapResult, compute_heatmaps, compute_heatmaps_reference, heatmap
from daug_core.metrics import roc_auc, roc_auc_per_class
from daug_core.schedule import alphas_cumprod, make_noise_scheduler
from daug_core.training import BatchError, StepReport, TrainingResult

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "BatchError",
    "CheckpointError",
    "ClassifierConfig",
    "ClassifierEvaluation",
    "ClassifierState",
    "ConfigError",
    "DiffusionConfig",
    "GeneratorConfig",
    "GeneratorState",
    "HeatmapResult",
    "NoiseAwareClassifier",
    "NoiseLevelMetrics",
    "NoiseScheduleConfig",
    "StepReport",
    "Target",
    "TargetError",
    "TrainingConfig",
    "TrainingResult",
    "TranslationConfig",
    "all_targets",
    "alphas_cumprod",
    "build_classifier",
    "build_unet",
    "checkpoint_sha256",
    "compute_heatmaps",
    "compute_heatmaps_reference",
    "config_from_dict",
    "config_to_dict",
    "ddim_decode",
    "ema_unet",
    "evaluate_classifier",
    "guided_decode",
    "heatmap",
    "init_classifier_state",
    "init_generator_state",
    "invert_to_level",
    "load_classifier",
    "load_classifier_checkpoint",
    "load_generator_checkpoint",
    "load_unet",
    "make_cond_fn",
    "make_noise_scheduler",
    "masked_bce_with_logits",
    "pos_weight_from_labels",
    "preset",
    "roc_auc",
    "roc_auc_per_class",
    "save_classifier_checkpoint",
    "save_generator_checkpoint",
    "train_classifier",
    "train_generator",
]
