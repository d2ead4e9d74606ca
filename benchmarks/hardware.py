"""What the machine can do and what a step costs: matmul peak, FLOPs per step, peak memory."""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def peak_matmul_flops(device: torch.device, seconds: float = 2.0, n: int = 2048) -> float:
    """Best dense matmul FLOP/s of `device` (fp32 on CPU, bf16 on CUDA) over ~`seconds`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _sync(device)
        start = time.perf_counter()
        for _ in range(4 if device.type == "cpu" else 20):
            torch.matmul(a, b, out=out)
        _sync(device)
        reps = 4 if device.type == "cpu" else 20
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - start))
    return best


def count_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one call of `step` (forward + backward), as torch counts."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: `max_memory_allocated` on CUDA, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def describe(device: torch.device) -> dict[str, str | int]:
    """The machine in words: CPU model, cores, threads, torch build, GPU name."""
    info: dict[str, str | int] = {
        "cpu": _cpu_name(),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
