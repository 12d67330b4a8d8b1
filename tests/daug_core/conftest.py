"""Test settings for the diffusion core: offline hub; one torch thread while these tests run
(the machine has 2 cores shared with other work, and oversubscribed OpenMP threads spin)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
