"""guided-diffusion UNet -> diffusers UNet2DModel: openai's own UNetModel (PyPI
guided-diffusion-sdk, a packaging of openai/guided-diffusion) with random weights and the
converted model predict the same eps (and variance channels) within 1e-5, class-conditional
and not; mismatched settings are refused by name."""

from __future__ import annotations

import pytest
import torch

from daug_core.diffusion.ddim import predict_epsilon
from daug_core.diffusion.guided_diffusion_convert import (
    ConditionedEps,
    GuidedDiffusionConfig,
    GuidedDiffusionError,
    convert_state_dict,
    convert_unet,
    unet_config,
)

unet_module = pytest.importorskip("guided_diffusion.unet")


def _reference(model: GuidedDiffusionConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    reference = unet_module.UNetModel(
        image_size=model.image_size,
        in_channels=model.in_channels,
        model_channels=model.model_channels,
        out_channels=model.out_channels,
        num_res_blocks=model.num_res_blocks,
        attention_resolutions=model.attention_resolutions,
        channel_mult=model.channel_mult,
        num_classes=model.classes,
        num_heads=model.num_heads,
        use_scale_shift_norm=model.use_scale_shift_norm,
    ).eval()
    with torch.no_grad():  # guided-diffusion zero-initialises its output convolutions
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.1)
    return reference


SMALL = GuidedDiffusionConfig(
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
        GuidedDiffusionConfig(
            image_size=32,
            model_channels=32,
            channel_mult=(1, 1, 2),
            num_res_blocks=1,
            attention_resolutions=(2, 4),
            class_cond=False,
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
    y = torch.tensor([1, 0, 1]) if model.classes else None
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
    official = GuidedDiffusionConfig()
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
        convert_state_dict(GuidedDiffusionConfig(**{**SMALL.__dict__, "num_res_blocks": 1}), state)
    with pytest.raises(GuidedDiffusionError, match="one attention head"):
        GuidedDiffusionConfig(num_heads=4)


SMALL_OPTIONS = (
    *("--image-size", "32", "--model-channels", "32", "--attention-resolutions", "4"),
    *("--channel-mult", "1", "--channel-mult", "2", "--channel-mult", "2"),
)


def test_the_cli_writes_a_generator_checkpoint_heatmaps_decode_with(tmp_path):
    """``daug convert-generator``: guided-diffusion's own .pt (raw) and a .safetensors (EMA)
    become a generator checkpoint whose ε-models predict what guided-diffusion predicts with
    y = 1; compute_heatmaps runs on it; an existing generator is kept unless --overwrite; a
    wrong layout is one error line; the checkpoint refuses to resume training."""
    from safetensors.torch import save_file

    from daug_core.checkpoints.diffusion import load_generator_checkpoint, load_unet
    from daug_core.checkpoints.layout import checkpoint_sha256
    from daug_core.diffusion.heatmaps import compute_heatmaps
    from daug_core.diffusion.targets import all_targets
    from daug_core.settings import CheckpointError
    from tests.daug_core.helpers import make_models, micro_config
    from tests.factories import run_daug

    raw, ema = _reference(SMALL, seed=4), _reference(SMALL, seed=5)
    torch.save(raw.state_dict(), tmp_path / "model100000.pt")
    save_file(ema.state_dict(), str(tmp_path / "ema.safetensors"))
    out = tmp_path / "checkpoints"
    args = ("convert-generator", str(tmp_path / "model100000.pt"), str(out), *SMALL_OPTIONS)
    done = run_daug(*args, "--ema", str(tmp_path / "ema.safetensors"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decoding with class label 1, variance channels dropped" in done.stderr

    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for reference, use_ema in ((raw, False), (ema, True)):
            eps_model = load_unet(out / "generator", use_ema=use_ema)
            expected = reference(x, torch.tensor([400, 400]), y=torch.tensor([1, 1]))[:, :1]
            got = predict_epsilon(eps_model, x, 400)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    sha = checkpoint_sha256(out / "generator")

    cfg = micro_config(steps=2, level=100)
    _, classifier, x0 = make_models(cfg, seed=7)
    result = compute_heatmaps(eps_model, classifier, x0, all_targets()[:2], cfg)
    assert result.heatmaps.shape == (3, 2, 32, 32) and torch.isfinite(result.heatmaps).all()

    again = run_daug(*args)
    assert again.returncode == 2 and "exists (--overwrite replaces it)" in again.stderr
    wrong = run_daug(*args, "--overwrite", "--num-res-blocks", "1")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert checkpoint_sha256(out / "generator") == sha  # the refused run changed nothing
    with pytest.raises(CheckpointError, match="cannot resume training"):
        load_generator_checkpoint(out / "generator")


class _Payload:
    """An object a pickle would rebuild by running code: weights_only refuses it."""


def test_weight_files_are_read_without_running_pickled_code(tmp_path):
    from daug_core.checkpoints.foreign import read_foreign_weights
    from daug_core.settings import CheckpointError

    torch.save({"w": torch.ones(2), "payload": _Payload()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: truncated or unreadable \(Weights"):
        read_foreign_weights(tmp_path / "model.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert read_foreign_weights(tmp_path / "ok.pt")["w"].tolist() == [1.0, 1.0]
    with pytest.raises(CheckpointError, match=r"expected a \.pt, \.pth, \.safetensors file"):
        (tmp_path / "model.ckpt").write_bytes(b"x")
        read_foreign_weights(tmp_path / "model.ckpt")
