"""Where and in what precision a model trains or evaluates: one settings object, resolved once.

``ComputeSettings`` is torch-free (the CLI builds its options from it); :meth:`resolve` turns it
into a :class:`Compute` holding the ``torch.device`` and the autocast/GradScaler to use. Nothing
falls back silently: ``cuda`` on a machine without CUDA is an error naming what torch sees.

Precision is mixed precision with fp32 master weights: ``bf16`` autocasts the forward passes to
bfloat16 (CUDA, and CPUs with native bf16 units); ``fp16`` autocasts to float16 and scales the
loss with a GradScaler (CUDA only). The optimiser state and the checkpoints stay float32.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daug_core.diffusion.config import Precision
from daug_core.settings import ConfigError, check_choices, described

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True, kw_only=True)
class ComputeSettings:
    """The device and the precision of a training or evaluation run."""

    device: str = described(
        "auto", "auto (CUDA when torch sees a GPU, else CPU), cpu, cuda or cuda:N"
    )
    precision: Precision = described(
        "fp32", "fp32, bf16 (autocast, fp32 master weights) or fp16 (autocast + GradScaler)"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(
                f"ComputeSettings.device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )

    def resolve(self) -> Compute:
        """The device this machine gives for ``device``; an impossible request fails here."""
        import torch

        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"device {self.device!r} asked for, but torch {torch.__version__} sees no "
                    "CUDA device (torch.cuda.is_available() is False); use --device cpu or auto"
                )
            index = device.index or 0
            if index >= torch.cuda.device_count():
                raise ConfigError(
                    f"device {self.device!r} asked for, but torch sees "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
        if self.precision == "fp16" and device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA device (GradScaler); use bf16 or fp32")
        return Compute(device=device, precision=self.precision)


def precision_dtype(precision: Precision) -> torch.dtype:
    """The torch dtype of a precision name."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True, kw_only=True)
class Compute:
    """A resolved :class:`ComputeSettings`: the device and the mixed-precision tools."""

    device: torch.device
    precision: Precision = "fp32"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return None if self.precision == "fp32" else precision_dtype(self.precision)

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward passes' autocast context (disabled for fp32)."""
        import torch

        dtype = self.dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (a no-op scaler otherwise)."""
        import torch

        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def record(self) -> dict[str, str]:
        """What to write into summaries and checkpoint records."""
        import torch

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"device": str(self.device), "device_name": name, "precision": self.precision}


def cpu_fp32() -> Compute:
    """The default of the daug_core loops: float32 on the CPU."""
    import torch

    return Compute(device=torch.device("cpu"))
