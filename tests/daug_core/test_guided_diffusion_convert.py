"""guided-diffusion UNet -> diffusers UNet2DModel: openai's own UNetModel (PyPI
guided-diffusion-sdk, a packaging of openai/guided-diffusion) with random weights and the
converted model predict the same eps (and variance channels) within 1e-5, class-conditional
and not; mismatched settings are refused by name."""

from __future__ import annotations

import pytest
import torch

from daug_core.ddim import predict_epsilon
from daug_core.guided_diffusion_convert import (
    ConditionedEps,
    GuidedDiffusionError,
    GuidedDiffusionUNet,
    convert_state_dict,
    convert_unet,
    unet_config,
)

unet_module = pytest.importorskip("guided_diffusion.unet")


def _reference(model: GuidedDiffusionUNet, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    reference = unet_module.UNetModel(
        image_size=model.image_size,
        in_channels=model.in_channels,
        model_channels=model.model_channels,
        out_channels=model.out_channels,
        num_res_blocks=model.num_res_blocks,
        attention_resolutions=model.attention_resolutions,
        channel_mult=model.channel_mult,
        num_classes=model.num_classes,
        num_heads=model.num_heads,
        use_scale_shift_norm=model.use_scale_shift_norm,
    ).eval()
    with torch.no_grad():  # guided-diffusion zero-initialises its output convolutions
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.1)
    return reference


SMALL = GuidedDiffusionUNet(
    image_size=32,
    model_channels=32,
    channel_mult=(1, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(4,),  # attention at 8 px, the deepest level
)


@pytest.mark.parametrize(
    "model",
    [
        SMALL,
        GuidedDiffusionUNet(
            image_size=32,
            model_channels=32,
            channel_mult=(1, 1, 2),
            num_res_blocks=1,
            attention_resolutions=(2, 4),
            num_classes=None,
            learn_sigma=False,
            use_scale_shift_norm=True,
        ),
    ],
    ids=["official-layout", "unconditional-scale-shift"],
)
def test_converted_unet_predicts_what_guided_diffusion_predicts(model):
    reference = _reference(model, seed=0)
    converted = convert_unet(model, reference.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 32, 32, generator=g)
    t = torch.tensor([0, 250, 999])
    y = torch.tensor([1, 0, 1]) if model.num_classes else None
    with torch.no_grad():
        expected = reference(x, t, y=y) if y is not None else reference(x, t)
        got = converted(x, t, class_labels=y).sample
    assert got.shape == (3, model.out_channels, 32, 32)
    assert expected.abs().mean() > 0.05  # random weights: no trivially zero output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_conditioned_eps_decodes_with_one_class_and_drops_the_variance_channels():
    reference = _reference(SMALL, seed=2)
    eps_model = ConditionedEps(
        convert_unet(SMALL, reference.state_dict()), channels=1, class_label=1
    )
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(x, torch.tensor([500, 500]), y=torch.tensor([1, 1]))[:, :1]
        got = predict_epsilon(eps_model, x, 500)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_official_generator_maps_name_for_name_at_its_real_size():
    official = GuidedDiffusionUNet()
    with torch.device("meta"):
        reference = unet_module.UNetModel(
            image_size=512,
            in_channels=1,
            model_channels=128,
            out_channels=2,
            num_res_blocks=2,
            attention_resolutions=(32,),
            channel_mult=(1, 1, 2, 2, 4, 4),
            num_classes=2,
            num_heads=1,
        )
        from diffusers import UNet2DModel

        target = UNet2DModel(**unet_config(official))
    converted = convert_state_dict(official, reference.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {
        k: v.shape for k, v in target.state_dict().items()
    }


def test_settings_that_do_not_match_the_checkpoint_are_refused():
    state = _reference(SMALL, seed=0).state_dict()
    with pytest.raises(GuidedDiffusionError, match="lacks"):
        convert_state_dict(GuidedDiffusionUNet(**{**SMALL.__dict__, "num_res_blocks": 1}), state)
    with pytest.raises(GuidedDiffusionError, match="one attention head"):
        GuidedDiffusionUNet(num_heads=4)
