"""Where a run computes: the device, and the precision on it."""

from __future__ import annotations

import contextlib

import torch


def select_device(name: str = "auto") -> torch.device:
    """CUDA when available (with TF32 matmuls), else CPU; or the device named."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (bf16 is emulated and slow on CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
