"""Where a run computes and in which precision: `--device` and `--amp` of every command."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from tinyvit.errors import TinyvitError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto': this process's GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinyvitError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for --amp: 'auto' is bf16 on GPUs that have it, fp16 on older ones, off on CPU
    (CPU autocast is slower than fp32 on most CPUs)."""
    if amp not in AMP_CHOICES:
        raise TinyvitError(f"--amp {amp!r}; expected one of {', '.join(AMP_CHOICES)}")
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
