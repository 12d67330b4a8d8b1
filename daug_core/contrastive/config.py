"""Typed, frozen configuration of DAug's contrastive image-text model, with presets ``tiny`` and
``paper``.

The model is an open_clip CLIP whose image input carries the precomputed diffusion heatmaps
(DAug, arXiv 2412.04828, Sec. 3.2 "channel augmentation"); it is trained with the hybrid loss
L = w · L_CLIP(image, report) + (1 − w) · L_class (Sec. 3.3), where L_class compares the image
with one text prompt per CheXpert label.

``paper`` follows the official run (github.com/drjinying/DAug, ``daug/configs/conf.yaml``):
ViT-B/32 at 256 px, text context 154 tokens, a fixed logit scale of 100 (``logit_scale: 4.602``
stored as its log there), w = 0.7 for classification (0.8 for retrieval,
``configs/abl/retrieval_*.yaml``), AdamW lr 2e-5, weight decay 0.01, 10 epochs, batch 32, cosine
schedule with 10 warm-up steps, no augmentation. ``tiny`` is a ~7.6 M-parameter ViT at 64 px that
trains on a 2-core CPU in seconds; same code path, other numbers.

Configs round-trip through JSON (:func:`contrastive_config_to_dict` /
:func:`contrastive_config_from_dict`) so they can be stored next to checkpoints.
:class:`ClipTrainSettings` is what a user chooses for one training run (the preset and what to
override), carried whole from the CLI or a deployment to the trainer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from daug_core.labels import CHEXPERT_LABELS
from daug_core.settings import ConfigError, check_choices, dataclass_from_dict

# One prompt per label, in CHEXPERT_LABELS order ("A chest x-ray image of <finding>.", a healthy
# sentence for No Finding; docs/metrics.md "Class prompts"). The official code writes
# "chest-xray" and "other pleural diseases"; the wording here is the project's own.
DEFAULT_CLASS_PROMPTS: tuple[str, ...] = (
    "A chest x-ray image of atelectasis.",
    "A chest x-ray image of cardiomegaly.",
    "A chest x-ray image of consolidation.",
    "A chest x-ray image of edema.",
    "A chest x-ray image of enlarged cardiomediastinum.",
    "A chest x-ray image of fracture.",
    "A chest x-ray image of lung lesion.",
    "A chest x-ray image of lung opacity.",
    "A chest x-ray image with no findings.",
    "A chest x-ray image of pleural effusion.",
    "A chest x-ray image of other pleural abnormalities.",
    "A chest x-ray image of pneumonia.",
    "A chest x-ray image of pneumothorax.",
    "A chest x-ray image of support devices.",
)

# The official code's prompts (``main.py``, ``label_bce: true``), verbatim (some without the
# final full stop), reordered from its class order into CHEXPERT_LABELS order.
OFFICIAL_CLASS_PROMPTS: tuple[str, ...] = (
    "A chest-xray image of atelectasis",
    "A chest-xray image of cardiomegaly.",
    "A chest-xray image of consolidation",
    "A chest-xray image of edema",
    "A chest-xray image of enlarged cardiomediastinum.",
    "A chest-xray image of rib fracture",
    "A chest-xray image of lung lesion.",
    "A chest-xray image of lung opacity",
    "A healthy chest-xray image with no findings.",
    "A chest-xray image of pleural effusion",
    "A chest-xray image of other pleural diseases",
    "A chest-xray image of pneumonia",
    "A chest-xray image of pneumothorax",
    "A chest-xray image of support devices",
)

# The negative half of each (negative, positive) pair of the paired-softmax variant (official
# ``label_bce: false``); for No Finding the negative is an abnormal image.
DEFAULT_NEGATIVE_PROMPTS: tuple[str, ...] = (
    "A chest x-ray image with no atelectasis.",
    "A chest x-ray image with no cardiomegaly.",
    "A chest x-ray image with no consolidation.",
    "A chest x-ray image with no edema.",
    "A chest x-ray image with no enlarged cardiomediastinum.",
    "A chest x-ray image with no fracture.",
    "A chest x-ray image with no lung lesion.",
    "A chest x-ray image with no lung opacity.",
    "A chest x-ray image with abnormal findings.",
    "A chest x-ray image with no pleural effusion.",
    "A chest x-ray image with no other pleural abnormalities.",
    "A chest x-ray image with no pneumonia.",
    "A chest x-ray image with no pneumothorax.",
    "A chest x-ray image with no support devices.",
)

HeatmapMode = Literal["none", "channel", "add", "append"]
ClassLoss = Literal["bce", "paired"]
LearningRateSchedule = Literal["cosine", "constant"]
# What the model trains on, and which epoch is kept: ours (train split, the best epoch on
# validate) or the official DAug run's (train + validate, no model selection: the last epoch).
TrainSplits = Literal["train", "train+validate"]
ModelSelection = Literal["validate", "last"]
# AdamW recipe: CLIP's (betas 0.9/0.98, eps 1e-6, no decay on biases, norms, 1-d parameters and
# the logit scale) or the official DAug code's (torch defaults: betas 0.9/0.999, eps 1e-8).
OptimizerRecipe = Literal["clip", "official"]
ContrastivePresetName = Literal["tiny", "paper", "official"]

# Local checkpoint files open_clip's ``load_checkpoint`` reads (torch pickle or safetensors).
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True, kw_only=True)
class ClipArchitecture:
    """A custom open_clip architecture (a ViT image tower and a causal text transformer),
    registered with ``open_clip.add_model_config`` under :attr:`ClipModelConfig.model_name` when
    the model is built. Field names follow open_clip's ``vision_cfg`` / ``text_cfg``."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_patch_size: int
    vision_head_width: int
    text_width: int
    text_layers: int
    text_heads: int
    vocab_size: int = 49408  # open_clip's bundled BPE tokenizer

    def __post_init__(self) -> None:
        for name in (
            "embed_dim",
            "vision_width",
            "vision_layers",
            "vision_patch_size",
            "vision_head_width",
            "text_width",
            "text_layers",
            "text_heads",
            "vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ClipArchitecture.{name} must be a positive int, got {value!r}")
        if self.vision_width % self.vision_head_width:
            raise ConfigError(
                f"ClipArchitecture.vision_head_width={self.vision_head_width} must divide "
                f"vision_width={self.vision_width}"
            )
        if self.text_width % self.text_heads:
            raise ConfigError(
                f"ClipArchitecture.text_heads={self.text_heads} must divide "
                f"text_width={self.text_width}"
            )

    def open_clip_config(self, image_size: int, context_length: int) -> dict[str, Any]:
        """The architecture as an open_clip model-config dict (the JSON it registers)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": image_size,
                "layers": self.vision_layers,
                "width": self.vision_width,
                "patch_size": self.vision_patch_size,
                "head_width": self.vision_head_width,
            },
            "text_cfg": {
                "context_length": context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
        }


@dataclass(frozen=True, kw_only=True)
class ClipModelConfig:
    """Which open_clip model, at which input sizes, and how the heatmaps enter it.

    - ``model_name``: a built-in open_clip architecture (``"ViT-B-32"``) when ``architecture`` is
      None, otherwise the name the custom ``architecture`` is registered under.
    - ``image_size`` / ``context_length``: forced on the model (open_clip's ``force_image_size`` /
      ``force_context_length``); pretrained position embeddings are interpolated to them.
    - ``pretrained``: None (random initialisation) or a LOCAL open_clip checkpoint file
      (``.pt``/``.pth``/``.bin``/``.safetensors``). Named hub tags (``"openai"``,
      ``"laion2b_s34b_b79k"``) are refused here: the project runs offline and a hub lookup would
      hang; download the weights elsewhere and give the file.
    - ``heatmap_mode``: ``none`` (grey image as 3 channels), ``channel`` (the ``channel_target``
      heatmap replaces channel 0, the official DAug mode), ``add`` (a second image tower sees the
      ``channel_target`` heatmap; the two embeddings are averaged), ``append`` (image plus all K
      heatmaps as 1 + K input channels). See :mod:`daug_core.contrastive.model`.
    - ``channel_target``: the stored heatmap target used by ``channel`` and ``add``
      (official: the counterfactual towards "No Finding").
    - ``rescale_heatmaps``: min-max each heatmap channel per image to [0, 1] inside the model, as
      the official dataset does before feeding it (stored heatmaps are |Δ| of [0, 1] images and
      rarely reach 1).
    - ``quick_gelu``: x·σ(1.702x) activations (open_clip's ``force_quick_gelu``), what OpenAI's
      CLIP weights and the official run use; converted Hugging Face weights
      (:mod:`daug_core.contrastive.convert`) need it.
    """

    model_name: str
    image_size: int
    context_length: int
    architecture: ClipArchitecture | None = None
    pretrained: str | None = None
    heatmap_mode: HeatmapMode = "channel"
    channel_target: str = "+No Finding"
    rescale_heatmaps: bool = True
    quick_gelu: bool = False

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.model_name:
            raise ConfigError("ClipModelConfig.model_name must be non-empty")
        if self.image_size < 1:
            raise ConfigError(f"ClipModelConfig.image_size must be >= 1, got {self.image_size}")
        if self.context_length < 2:
            raise ConfigError(
                f"ClipModelConfig.context_length must be >= 2, got {self.context_length}"
            )
        if self.architecture is not None and self.image_size % self.architecture.vision_patch_size:
            raise ConfigError(
                f"ClipModelConfig.image_size={self.image_size} is not a multiple of the patch "
                f"size {self.architecture.vision_patch_size}"
            )
        if not self.channel_target:
            raise ConfigError("ClipModelConfig.channel_target must be non-empty")
        if self.pretrained is not None:
            check_local_checkpoint_name(self.pretrained)


def check_local_checkpoint_name(pretrained: str) -> None:
    """Raise :class:`ConfigError` unless ``pretrained`` names a local checkpoint file by suffix.

    Only the name is checked here (a stored config stays loadable on a machine without the file);
    the builder checks that the file exists.
    """
    if PurePath(pretrained).suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ConfigError(
            f"ClipModelConfig.pretrained={pretrained!r} is not a local checkpoint file: named "
            f"open_clip hub tags (e.g. 'openai', 'laion2b_s34b_b79k') need a download and this "
            f"project runs offline. Download the weights elsewhere and give the file path "
            f"(suffix one of {', '.join(CHECKPOINT_SUFFIXES)})."
        )


@dataclass(frozen=True, kw_only=True)
class HybridLossConfig:
    """L = w · L_CLIP + (1 − w) · L_class (DAug Sec. 3.3; official ``model.py``).

    - ``weight`` w: 0.7 is the official classification setting; the paper's retrieval runs use
      0.8 (``configs/abl/retrieval_*.yaml``).
    - ``class_loss``: ``bce`` (official ``label_bce: true``): sigmoid of the scaled cosine to each
      class prompt, binary cross-entropy per label; ``paired``: per label a softmax over the
      (negative, positive) prompt pair, cross-entropy against the label.
    - ``logit_scale``: the scale s multiplying cosines (not its log). The official run fixes it at
      100 (``exp(4.602)``); ``learn_logit_scale`` makes it a trained parameter (open_clip style,
      log-parametrised). The parameter lives in the model (:class:`HeatmapClip.logit_scale`),
      as in open_clip, so checkpoints and evaluation carry it.
    - ``class_logit_bias`` b: added to the scaled class cosines before the sigmoid. The official
      code has none (0.0). With s = 100 the sigmoid saturates for |cos| > 0.05; a negative bias
      (SigLIP initialises it at −10) centres the logits when most labels are negative.
    - ``class_names`` / ``class_prompts`` / ``negative_prompts``: one entry per label, same order
      as the label columns the caller passes (default: the 14 CheXpert labels).
    """

    weight: float = 0.7
    class_loss: ClassLoss = "bce"
    logit_scale: float = 100.0
    learn_logit_scale: bool = False
    class_logit_bias: float = 0.0
    class_names: tuple[str, ...] = CHEXPERT_LABELS
    class_prompts: tuple[str, ...] = DEFAULT_CLASS_PROMPTS
    negative_prompts: tuple[str, ...] = DEFAULT_NEGATIVE_PROMPTS

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"HybridLossConfig.weight must be in [0, 1], got {self.weight}")
        if not self.logit_scale > 0.0:
            raise ConfigError(
                f"HybridLossConfig.logit_scale must be > 0 (the scale, not its log), "
                f"got {self.logit_scale}"
            )
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(
                f"HybridLossConfig.class_names must be unique and non-empty: {self.class_names}"
            )
        if len(self.class_prompts) != len(self.class_names):
            raise ConfigError(
                f"HybridLossConfig.class_prompts has {len(self.class_prompts)} prompts for "
                f"{len(self.class_names)} classes"
            )
        if self.class_loss == "paired" and len(self.negative_prompts) != len(self.class_names):
            raise ConfigError(
                f"HybridLossConfig.negative_prompts has {len(self.negative_prompts)} prompts for "
                f"{len(self.class_names)} classes (class_loss='paired' needs one per class)"
            )
        if any(not p.strip() for p in self.class_prompts + self.negative_prompts):
            raise ConfigError("HybridLossConfig prompts must be non-empty strings")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True, kw_only=True)
class ContrastiveTrainingConfig:
    """Optimiser and loop numbers. AdamW (official: weight decay off for biases and LayerNorm),
    ``warmup_steps`` linear warm-up then ``lr_schedule``. Augmentation is applied jointly to the
    image and its heatmaps by the data pipeline: random-resized-crop with area scale in
    [``crop_scale_min``, 1] and rotation in ±``rotation_degrees``; ``crop_scale_min = 1`` and
    ``rotation_degrees = 0`` turn it off (the official code resizes only). ``keep_epochs``
    (1-based) are also kept as their own checkpoints, to be evaluated like the selected one
    (the official run tests after epochs 1, 6 and 10: its epoch 0, every 5th and the last);
    epochs past the run's end are never reached."""

    learning_rate: float
    weight_decay: float
    epochs: int
    batch_size: int
    warmup_steps: int
    seed: int
    crop_scale_min: float
    rotation_degrees: float
    num_workers: int
    lr_schedule: LearningRateSchedule = "cosine"
    train_splits: TrainSplits = "train"
    model_selection: ModelSelection = "validate"
    optimizer: OptimizerRecipe = "clip"
    keep_epochs: tuple[int, ...] = ()

    @property
    def train_split_names(self) -> tuple[str, ...]:
        return tuple(self.train_splits.split("+"))

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.learning_rate > 0.0:
            raise ConfigError(
                f"ContrastiveTrainingConfig.learning_rate must be > 0, got {self.learning_rate}"
            )
        if self.weight_decay < 0.0:
            raise ConfigError(
                f"ContrastiveTrainingConfig.weight_decay must be >= 0, got {self.weight_decay}"
            )
        # Batch >= 2: InfoNCE with one pair has no negatives (its loss is identically 0).
        for name, low in (
            ("epochs", 1),
            ("batch_size", 2),
            ("warmup_steps", 0),
            ("num_workers", 0),
        ):
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"ContrastiveTrainingConfig.{name} must be >= {low}, got {value}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ConfigError(
                f"ContrastiveTrainingConfig.crop_scale_min must be in (0, 1], "
                f"got {self.crop_scale_min}"
            )
        if not 0.0 <= self.rotation_degrees < 180.0:
            raise ConfigError(
                f"ContrastiveTrainingConfig.rotation_degrees must be in [0, 180), "
                f"got {self.rotation_degrees}"
            )
        if any(e < 1 for e in self.keep_epochs) or sorted(set(self.keep_epochs)) != list(
            self.keep_epochs
        ):
            raise ConfigError(
                "ContrastiveTrainingConfig.keep_epochs must be increasing epoch numbers >= 1, "
                f"got {self.keep_epochs}"
            )
        if "validate" in self.train_split_names and self.model_selection == "validate":
            raise ConfigError(
                "training on train+validate leaves no held-out split to select an epoch on: "
                "use model_selection 'last' (the official DAug run)"
            )


@dataclass(frozen=True, kw_only=True)
class ContrastiveConfig:
    """Everything the contrastive trainer needs, per preset."""

    name: str
    model: ClipModelConfig
    loss: HybridLossConfig
    training: ContrastiveTrainingConfig
    format_version: int = field(default=1)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("ContrastiveConfig.name must be non-empty")
        if self.format_version != 1:
            raise ConfigError(
                f"ContrastiveConfig.format_version {self.format_version} is not supported (1)"
            )


def contrastive_config_to_dict(config: ContrastiveConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def contrastive_config_from_dict(data: dict[str, Any]) -> ContrastiveConfig:
    """Inverse of :func:`contrastive_config_to_dict`; unknown keys raise :class:`ConfigError`."""
    config: ContrastiveConfig = dataclass_from_dict(ContrastiveConfig, data)
    return config
