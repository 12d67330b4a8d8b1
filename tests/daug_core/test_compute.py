"""ComputeSettings: devices resolve or fail fast; the precision reaches the training loops."""

from __future__ import annotations

import pytest
import torch

from daug_core.compute import Compute, ComputeSettings
from daug_core.diffusion.generator import init_generator_state, train_generator
from daug_core.diffusion.presets import preset
from daug_core.settings import ConfigError

CPU = torch.device("cpu")

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_auto_is_the_cpu_here_and_is_recorded():
    compute = ComputeSettings().resolve()
    assert compute.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert compute.record()["precision"] == "fp32"
    assert compute.record()["device"] == str(compute.device)


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_fails_fast_naming_what_torch_sees(device):
    with pytest.raises(ConfigError, match=rf"device '{device}' asked for.*no CUDA device"):
        ComputeSettings(device=device).resolve()


@pytest.mark.parametrize("device", ["gpu", "cuda:", "CPU", "cuda:x", ""])
def test_unknown_device_spellings_are_refused(device):
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        ComputeSettings(device=device)


def test_fp16_needs_cuda_and_unknown_precisions_are_refused():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        ComputeSettings(device="cpu", precision="fp16").resolve()
    with pytest.raises(ConfigError, match=r"precision must be one of .fp32., .bf16., .fp16."):
        ComputeSettings(precision="fp8")  # type: ignore[arg-type]


def test_fp32_autocast_and_scaler_leave_training_unchanged():
    """The fp32 path through autocast and the (disabled) GradScaler gives the weights of a plain
    loop bit for bit: the demo's numbers do not move."""
    config = preset("tiny")
    images = torch.rand(4, 1, config.image_size, config.image_size) * 2 - 1
    results = []
    for _ in range(2):
        state = init_generator_state(config, generator=torch.Generator().manual_seed(0))
        train_generator(state, [images, images], until_step=2, compute=Compute(device=CPU))
        results.append(torch.cat([p.detach().flatten() for p in state.unet.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_bf16_autocast_runs_the_forward_in_bfloat16_with_float32_weights():
    config = preset("tiny")
    state = init_generator_state(config, generator=torch.Generator().manual_seed(0))
    seen: list[torch.dtype] = []
    block = state.unet.conv_in
    handle = block.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    images = torch.rand(2, 1, config.image_size, config.image_size) * 2 - 1
    train_generator(state, [images], until_step=1, compute=Compute(device=CPU, precision="bf16"))
    handle.remove()
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in state.unet.parameters())
