"""The diffusion presets as named configs (``tiny``, ``paper``, ``official``) and what a user
chooses for a training run: :class:`DiffusionTrainSettings`, a preset plus step counts.

One code path serves every preset; they differ only in numbers (see
:mod:`daug_core.diffusion.config`
for what each field means).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from daug_core.diffusion.config import (
    ClassifierConfig,
    DiffusionConfig,
    GeneratorConfig,
    InferenceConfig,
    NoiseScheduleConfig,
    PresetName,
    TrainingConfig,
    TranslationConfig,
)
from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionClassifierConfig
from daug_core.settings import ConfigError, check_choices, described


def _tiny() -> DiffusionConfig:
    size = 64
    return DiffusionConfig(
        name="tiny",
        schedule=NoiseScheduleConfig(),
        generator=GeneratorConfig(
            image_size=size,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            attention_head_dim=32,
            norm_num_groups=8,
        ),
        classifier=ClassifierConfig(
            image_size=size,
            block_out_channels=(32, 64, 128, 160),
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * 4,
            attention_head_dim=32,
            norm_num_groups=8,
        ),
        # Chosen by measurement (README "Heatmap quality"; `daug heatmap-quality` sweeps them):
        # on 64 px phantoms the paper's L = 500, s = 100 with minmax gave pointing game 0.21 and
        # pixel AUROC 0.52 (s = 100 rewrote the whole image); L = 300, s = 10, raw difference
        # and a 1.5 px blur give 0.97 / 0.95 with the 3,000-step models. Ten steps without
        # refinements score as well as 20 steps or refined inversion, at half the time or less.
        translation=TranslationConfig(
            level=300,
            steps=10,
            mode="softmax",
            scale=10.0,
            inversion_refinements=0,
            difference="raw",
            smoothing_sigma=1.5,
        ),
        generator_training=TrainingConfig(
            batch_size=8,
            # 300 steps reconstruct the phantoms but the heatmaps find lesions only with a
            # generator trained 3,000 steps (pointing game 0.69 -> 0.97 at L = 300).
            num_steps=3000,
            learning_rate=2e-4,
            weight_decay=0.0,
            grad_clip_norm=1.0,
            checkpoint_every=200,
            ema_decay=0.995,
        ),
        classifier_training=TrainingConfig(
            batch_size=16,
            num_steps=3000,
            # Measured on the 300-study demo store (271 train images, 600 steps, AUC at t = 0
            # on 42 held-out images): lr 1e-3 underfits (train 0.66, held-out 0.60); 3e-4 gives
            # 0.79 / 0.75 and, with 1,200 steps, 0.89 / 0.76; 1e-4 gives 0.82 / 0.75. Mean
            # validate AUC over t in {0..500}: 0.73 at 600 steps, 0.76 at 1,500, 0.81 at
            # 3,000; guidance needs the confident one (No Finding AUC 0.81 -> 1.00 at t = 0).
            learning_rate=3e-4,
            weight_decay=0.05,
            grad_clip_norm=1.0,
            checkpoint_every=200,
            max_noise_timestep=500,
        ),
        inference=InferenceConfig(max_batch=64),
    )


def _paper() -> DiffusionConfig:
    size = 512
    # guided-diffusion at 512 px: channel_mult (0.5, 1, 1, 2, 2, 4, 4) x num_channels; the chest
    # X-ray flags use num_channels=128, num_res_blocks=2, attention at 16 px (+ the middle block).
    gen_channels = (64, 128, 128, 256, 256, 512, 512)
    # Classifier flags: width 32 (here 32 at full resolution so GroupNorm(32) divides it),
    # attention at 32, 16 and 8 px.
    clf_channels = (32, 64, 64, 128, 128, 256, 256)
    return DiffusionConfig(
        name="paper",
        schedule=NoiseScheduleConfig(),
        generator=GeneratorConfig(
            image_size=size,
            block_out_channels=gen_channels,
            layers_per_block=2,
            down_block_types=("DownBlock2D",) * 5 + ("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 5,
            attention_head_dim=64,
            norm_num_groups=32,
        ),
        classifier=ClassifierConfig(
            image_size=size,
            block_out_channels=clf_channels,
            layers_per_block=2,
            down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3,
            attention_head_dim=64,
            norm_num_groups=32,
        ),
        translation=TranslationConfig(
            level=500, steps=500, mode="softmax", scale=100.0, inversion_refinements=0
        ),
        inference=InferenceConfig(max_batch=8),
        generator_training=TrainingConfig(
            batch_size=10,
            num_steps=150_000,
            learning_rate=1e-4,
            weight_decay=0.0,
            grad_clip_norm=1.0,
            checkpoint_every=5000,
            ema_decay=0.9999,
        ),
        classifier_training=TrainingConfig(
            batch_size=10,
            num_steps=50_000,
            learning_rate=3e-4,
            weight_decay=0.05,
            grad_clip_norm=1.0,
            checkpoint_every=5000,
            max_noise_timestep=999,
        ),
    )


def _official() -> DiffusionConfig:
    """The official DAug code's translation switch for switch (``classifier_sample_known.py``,
    ``train_ddpm.sh``): its guidance targets, ``clip_denoised``, the raw (non-EMA) generator
    weights, images min-max scaled to [0, 1] (training and decoding), 500 DDIM steps each way
    to L = 500, s = 100, the minmax heatmap; its generator layout (channel mult
    (1, 1, 2, 2, 4, 4) x 128, 2 res-blocks, one attention head at 16 px) and its classifier's
    learning rate and weight decay (1e-4, 0) and its network: guided-diffusion's depth-4
    ``EncoderUNetModel`` with attention pooling (``ClassifierConfig.encoder``). Not matched by
    the generator we train (diffusers' UNet2DModel, unconditional): the class conditioning and
    learned variance; ``daug convert-generator`` brings the official checkpoint with them."""
    paper = _paper()
    return dataclasses.replace(
        paper,
        name="official",
        generator=dataclasses.replace(
            paper.generator,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            down_block_types=("DownBlock2D",) * 5 + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * 5,
            attention_head_dim=512,  # one head of all 512 channels, as num_heads=1
        ),
        translation=dataclasses.replace(
            paper.translation,
            mode="official",
            clip_denoised=True,
            generator_ema=False,
            input_range="minmax",
        ),
        classifier=dataclasses.replace(
            paper.classifier,
            encoder=GuidedDiffusionClassifierConfig(
                image_size=paper.classifier.image_size, class_names=paper.classifier.class_names
            ),
        ),
        classifier_training=dataclasses.replace(
            paper.classifier_training, learning_rate=1e-4, weight_decay=0.0, lr_schedule="linear"
        ),
    )


_PRESETS = {"tiny": _tiny, "paper": _paper, "official": _official}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def preset(name: str) -> DiffusionConfig:
    """The named preset (``"tiny"``, ``"paper"`` or ``"official"``)."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESET_NAMES)}") from None


@dataclass(frozen=True, kw_only=True)
class DiffusionTrainSettings:
    """One training run of the generator and the noise-aware classifier: the preset and the
    step counts to train to (None: the preset's)."""

    preset: PresetName = described(
        "tiny",
        "diffusion preset: tiny (64 px, CPU), paper (512 px) or official (paper as the official "
        "code runs it)",
    )
    seed: int = described(0, "seeds weights, noise and batches (a resumed run continues alike)")
    generator_steps: int | None = described(
        None, "total generator steps to train to (default: the preset's)"
    )
    classifier_steps: int | None = described(
        None, "total classifier steps to train to (default: the preset's)"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("generator_steps", "classifier_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"DiffusionTrainSettings.{name} must be >= 1, got {value}")

    def config(self) -> DiffusionConfig:
        """The preset with the step counts applied."""
        config = preset(self.preset)
        generator, classifier = config.generator_training, config.classifier_training
        if self.generator_steps is not None:
            generator = dataclasses.replace(generator, num_steps=self.generator_steps)
        if self.classifier_steps is not None:
            classifier = dataclasses.replace(classifier, num_steps=self.classifier_steps)
        return dataclasses.replace(
            config, generator_training=generator, classifier_training=classifier
        )
