"""The contrastive presets as named configs (``tiny``, ``paper``, ``official``) and what a user
chooses for a training run: :class:`ClipTrainSettings`, a preset plus what to change (see
:mod:`daug_core.contrastive.config` for what each field means).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from daug_core.contrastive.config import (
    OFFICIAL_CLASS_PROMPTS,
    ClassLoss,
    ClipArchitecture,
    ClipModelConfig,
    ContrastiveConfig,
    ContrastivePresetName,
    ContrastiveTrainingConfig,
    HeatmapMode,
    HybridLossConfig,
    ModelSelection,
    OptimizerRecipe,
    TrainSplits,
)
from daug_core.settings import ConfigError, check_choices, described

TINY_ARCHITECTURE = ClipArchitecture(
    embed_dim=128,
    vision_width=128,
    vision_layers=4,
    vision_patch_size=8,
    vision_head_width=64,
    text_width=128,
    text_layers=4,
    text_heads=2,
)


def _tiny() -> ContrastiveConfig:
    return ContrastiveConfig(
        name="tiny",
        model=ClipModelConfig(
            model_name="daug-tiny-vit",
            image_size=64,
            context_length=77,
            architecture=TINY_ARCHITECTURE,
        ),
        # From scratch, CLIP's own recipe (Radford et al. 2021, Sec. 2.5): temperature 0.07,
        # learned. A fixed s = 100 (the official fine-tuning value) on random towers collapsed
        # every embedding to one point in the demo (train InfoNCE stuck at ln 32).
        loss=HybridLossConfig(weight=0.7, logit_scale=1 / 0.07, learn_logit_scale=True),
        training=ContrastiveTrainingConfig(
            learning_rate=1e-3,
            weight_decay=0.01,
            epochs=16,
            batch_size=32,
            warmup_steps=10,
            seed=0,
            crop_scale_min=0.85,
            rotation_degrees=5.0,
            num_workers=0,
        ),
    )


def _paper() -> ContrastiveConfig:
    return ContrastiveConfig(
        name="paper",
        model=ClipModelConfig(model_name="ViT-B-32", image_size=256, context_length=154),
        loss=HybridLossConfig(weight=0.7),
        training=ContrastiveTrainingConfig(
            learning_rate=2e-5,
            weight_decay=0.01,
            epochs=10,
            # The official run's global batch: 8 GPUs x 32, which the CLIP loss sees whole
            # (`--workers 8` splits it back into 32 per GPU).
            batch_size=256,
            warmup_steps=10,
            seed=5114,
            crop_scale_min=1.0,
            rotation_degrees=0.0,
            num_workers=4,
        ),
    )


def _official() -> ContrastiveConfig:
    """The official DAug run switch for switch (``daug/configs/conf.yaml``, ``model.py``,
    ``main.py``): ViT-B/32 with QuickGELU (OpenAI's weights, ``daug convert-clip``), its class
    prompts, trained on train + validate for 10 epochs and the last epoch selected (epochs 1, 6
    and 10 kept, the ones it tests), AdamW with torch's betas and eps."""
    paper = _paper()
    return ContrastiveConfig(
        name="official",
        model=dataclasses.replace(paper.model, quick_gelu=True),
        loss=dataclasses.replace(paper.loss, class_prompts=OFFICIAL_CLASS_PROMPTS),
        training=dataclasses.replace(
            paper.training,
            train_splits="train+validate",
            model_selection="last",
            optimizer="official",
            keep_epochs=(1, 6, 10),
        ),
    )


_PRESETS = {"tiny": _tiny, "paper": _paper, "official": _official}
CONTRASTIVE_PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def contrastive_preset(name: str) -> ContrastiveConfig:
    """The named preset (``"tiny"``, ``"paper"`` or ``"official"``)."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown contrastive preset {name!r}; known: {', '.join(CONTRASTIVE_PRESET_NAMES)}"
        ) from None


@dataclass(frozen=True, kw_only=True)
class ClipTrainSettings:
    """One contrastive training run: the preset and the values to override (None keeps the
    preset's). Validated once, by building the config it stands for (:meth:`config`)."""

    preset: ContrastivePresetName = described(
        "tiny",
        "contrastive preset: tiny (64 px ViT, CPU), paper (ViT-B/32 at 256 px) or official "
        "(paper as the official code runs it)",
    )
    heatmap_mode: HeatmapMode | None = described(
        None, "how heatmaps enter the image: none | channel | add | append (default: channel)"
    )
    weight: float | None = described(
        None, "hybrid loss w in [0, 1]: w CLIP + (1 - w) class loss (default: the preset's 0.7)"
    )
    class_loss: ClassLoss | None = described(None, "class loss: bce (official) or paired")
    epochs: int | None = described(None, "epochs (default: the preset's)")
    batch_size: int | None = described(None, "batch size (default: the preset's)")
    learning_rate: float | None = described(None, "peak learning rate (default: the preset's)")
    seed: int | None = described(None, "training seed (default: the preset's)")
    train_splits: TrainSplits | None = described(
        None, "train (default) or train+validate (the official run: no held-out selection)"
    )
    model_selection: ModelSelection | None = described(
        None, "validate: keep the best epoch on validate (default); last: the last epoch"
    )
    pretrained: str | None = described(
        None, "local open_clip checkpoint file (.pt / .safetensors) to start from"
    )
    optimizer: OptimizerRecipe | None = described(
        None, "AdamW recipe: clip (betas 0.9/0.98, eps 1e-6) or official (0.9/0.999, 1e-8)"
    )
    quick_gelu: bool | None = described(
        None,
        "QuickGELU activations, as OpenAI's CLIP weights (daug convert-clip) were trained with "
        "(default: the preset's GELU)",
    )
    keep_epochs: tuple[int, ...] = described(
        (),
        "also keep this epoch's weights as OUT/epoch-NNN for daug evaluate (repeat; default: "
        "the preset's, official: 1 6 10)",
        option="keep_epoch",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        self.config()

    def apply(self, config: ContrastiveConfig) -> ContrastiveConfig:
        """``config`` with this run's overrides (each config checks its own ranges)."""
        model = config.model
        if self.heatmap_mode is not None:
            model = dataclasses.replace(model, heatmap_mode=self.heatmap_mode)
        if self.pretrained is not None:
            model = dataclasses.replace(model, pretrained=self.pretrained)
        model = _replaced(model, quick_gelu=self.quick_gelu)
        loss = _replaced(config.loss, weight=self.weight, class_loss=self.class_loss)
        training = _replaced(
            config.training,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
            train_splits=self.train_splits,
            model_selection=self.model_selection,
            optimizer=self.optimizer,
            keep_epochs=self.keep_epochs or None,
        )
        return dataclasses.replace(config, model=model, loss=loss, training=training)

    def config(self) -> ContrastiveConfig:
        """The preset with the overrides applied."""
        return self.apply(contrastive_preset(self.preset))


def _replaced(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` with the changes that are not None."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
