"""guided-diffusion classifier -> EncoderClassifier: openai's own EncoderUNetModel (PyPI
guided-diffusion-sdk, a packaging of openai/guided-diffusion) with random weights and the
converted module give the same logits within 1e-5, with attention pooling (the official
layout: scale-shift norm, residual down-sampling, several heads per attention block) and
with adaptive pooling (plain norm, convolutional down-sampling); the official 512 px
classifier maps shape for shape; mismatched settings are refused by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from daug_core.diffusion.classifier.guided_diffusion import (
    EncoderClassifier,
    GuidedDiffusionClassifierConfig,
    GuidedDiffusionClassifierError,
    convert_classifier,
    convert_classifier_state_dict,
)

unet_module = pytest.importorskip("guided_diffusion.unet")


def _reference(
    model: GuidedDiffusionClassifierConfig,
    seed: int,
    attention_resolutions: tuple[int, ...] | None = None,
) -> torch.nn.Module:
    torch.manual_seed(seed)
    reference = unet_module.EncoderUNetModel(
        image_size=model.image_size,
        in_channels=model.in_channels,
        model_channels=model.model_channels,
        out_channels=model.out_channels,
        num_res_blocks=model.num_res_blocks,
        attention_resolutions=attention_resolutions or model.attention_resolutions,
        channel_mult=model.channel_mult,
        num_head_channels=model.num_head_channels,
        use_scale_shift_norm=model.use_scale_shift_norm,
        resblock_updown=model.resblock_updown,
        pool=model.pool,
    ).eval()
    with torch.no_grad():  # guided-diffusion zero-initialises its output convolutions
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.1)
    return reference


SMALL = GuidedDiffusionClassifierConfig(
    image_size=32,
    model_channels=32,
    channel_mult=(1, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(2, 4),  # attention at 16 and 8 px, 2 heads of 32 channels
    num_head_channels=32,
)


@pytest.mark.parametrize(
    "model",
    [
        SMALL,
        dataclasses.replace(
            SMALL,
            num_head_channels=16,  # 4 heads
            pool="adaptive",
            resblock_updown=False,
            use_scale_shift_norm=False,
        ),
    ],
    ids=["official-layout", "adaptive-conv-down-plain-norm"],
)
def test_converted_classifier_gives_the_logits_guided_diffusion_gives(model):
    reference = _reference(model, seed=0)
    converted = convert_classifier(model, reference.state_dict())
    assert not converted.training
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 32, 32, generator=g)
    t = torch.tensor([0, 250, 999])
    with torch.no_grad():
        expected = reference(x, t)
        got = converted(x, t)
    assert got.shape == (3, model.out_channels)
    assert expected.abs().mean() > 0.05  # random weights: no trivially zero output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_converted_state_dict_is_writable_as_safetensors(tmp_path):
    """Cut and transposed tensors are copies, not views sharing the checkpoint's storage."""
    from safetensors.torch import load_file, save_file

    reference = _reference(SMALL, seed=3)
    save_file(convert_classifier_state_dict(SMALL, reference.state_dict()), tmp_path / "c.st")
    module = EncoderClassifier(SMALL).eval()
    module.load_state_dict(load_file(tmp_path / "c.st"), strict=True)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(module(x, 500), reference(x, torch.tensor([500, 500])))


def test_the_official_classifier_maps_name_for_name_at_its_real_size():
    official = GuidedDiffusionClassifierConfig()
    with torch.device("meta"):
        # The official --classifier_attention_resolutions 32,16,8: rate 64 (8 px) is no level
        # of six, so the same network as the defaults' (16, 32).
        reference = _reference(official, seed=0, attention_resolutions=(16, 32, 64))
        target = EncoderClassifier(official)
    converted = convert_classifier_state_dict(official, reference.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {
        k: v.shape for k, v in target.state_dict().items()
    }
    assert sum(v.numel() for v in converted.values()) == sum(
        p.numel() for p in reference.parameters()
    )
    assert target.attention_pool.num_heads == 2  # 128 channels, 64 per head


def test_settings_that_do_not_match_the_checkpoint_are_refused():
    state = _reference(SMALL, seed=0).state_dict()
    with pytest.raises(GuidedDiffusionClassifierError, match=r"lacks 'input_blocks\.3\.1\.norm"):
        convert_classifier_state_dict(dataclasses.replace(SMALL, num_res_blocks=1), state)
    with pytest.raises(GuidedDiffusionClassifierError, match=r"not mapped, e\.g\. \['input_blocks"):
        convert_classifier_state_dict(dataclasses.replace(SMALL, attention_resolutions=(4,)), state)
    with pytest.raises(GuidedDiffusionClassifierError, match=r"'out\.2\.positional_embedding'"):
        convert_classifier_state_dict(dataclasses.replace(SMALL, image_size=64), state)
    with pytest.raises(GuidedDiffusionClassifierError, match=r"'conv_in\.weight' of shape"):
        convert_classifier_state_dict(dataclasses.replace(SMALL, in_channels=3), state)
    assert len(state) == len(_reference(SMALL, seed=0).state_dict())  # the input is untouched


def test_layouts_the_module_cannot_express_are_refused():
    with pytest.raises(GuidedDiffusionClassifierError, match="pool='spatial' is not mapped"):
        GuidedDiffusionClassifierConfig(pool="spatial")  # type: ignore[arg-type]
    with pytest.raises(GuidedDiffusionClassifierError, match="num_head_channels=48"):
        dataclasses.replace(SMALL, num_head_channels=48)
    with pytest.raises(GuidedDiffusionClassifierError, match="32 groups"):
        dataclasses.replace(SMALL, model_channels=24)
    with pytest.raises(GuidedDiffusionClassifierError, match="downsample rates"):
        dataclasses.replace(SMALL, attention_resolutions=(3,))


def test_converted_official_models_feed_a_heatmap_worker(tmp_path):
    """A converted generator and ``daug convert-classifier`` (the official training
    script's ``{"state_dict": ...}`` file) write a checkpoint folder a heatmap worker loads and
    computes heatmaps with, under the official translation switches; the classifier's logits
    equal openai's; an existing classifier/ is kept unless --overwrite; resuming is refused."""
    from daug_core.checkpoints.diffusion import (
        convert_guided_diffusion,
        load_classifier,
        load_classifier_checkpoint,
    )
    from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionConfig
    from daug_core.settings import CheckpointError
    from flows.runtime.actors import HeatmapWorker, WorkerSpec
    from tests.daug_core.helpers import micro_config
    from tests.factories import run_daug

    generator = GuidedDiffusionConfig(
        image_size=32, model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(4,)
    )
    torch.manual_seed(0)
    unet = unet_module.UNetModel(
        image_size=32,
        in_channels=1,
        model_channels=32,
        out_channels=2,
        num_res_blocks=2,
        attention_resolutions=(4,),
        channel_mult=(1, 2, 2),
        num_classes=2,
    )
    torch.save(unet.state_dict(), tmp_path / "model.pt")
    classifier = _reference(SMALL, seed=1)
    torch.save({"state_dict": classifier.state_dict(), "step": 3}, tmp_path / "classifier.pt")
    out = tmp_path / "checkpoints"
    convert_guided_diffusion(generator, tmp_path / "model.pt", out / "generator")  # its CLI:
    # tests/daug_core/diffusion/test_guided_diffusion_convert.py
    classifier_args = [
        *("--image-size", "32", "--model-channels", "32", "--num-res-blocks", "2"),
        *("--attention-resolutions", "2", "--attention-resolutions", "4"),
        *("--channel-mult", "1", "--channel-mult", "2", "--channel-mult", "2"),
        *("--num-head-channels", "32"),
    ]
    args = ("convert-classifier", str(tmp_path / "classifier.pt"), str(out), *classifier_args)
    done = run_daug(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "attention pooling, classes No Finding, Cardiomediastinal" in done.stderr

    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(
            load_classifier(out / "classifier")(x, t), classifier(x, t), atol=1e-5, rtol=1e-5
        )

    config = micro_config(mode="official", input_range="minmax", steps=2, level=100)
    targets = ("+No Finding", "+Pleural", "-Pleural")
    threads = torch.get_num_threads()
    try:
        spec = WorkerSpec(
            generator_dir=str(out / "generator"),
            classifier_dir=str(out / "classifier"),
            config=dataclasses.replace(
                config, translation=dataclasses.replace(config.translation, generator_ema=False)
            ),
            targets=targets,
        )
        images = np.random.default_rng(3).uniform(0.1, 0.9, (2, 32, 32)).astype(np.float32)
        heatmaps = HeatmapWorker(spec).compute(images).heatmaps
    finally:
        torch.set_num_threads(threads)
    assert heatmaps.shape == (2, 3, 32, 32) and torch.isfinite(heatmaps).all()
    assert heatmaps.abs().max() > 0

    again = run_daug(*args)
    assert again.returncode == 2 and "exists (--overwrite replaces it)" in again.stderr
    with pytest.raises(CheckpointError, match="cannot resume training"):
        load_classifier_checkpoint(out / "classifier")
