"""The device and the arithmetic precision a run uses, chosen from what the hardware has."""

from __future__ import annotations

import torch

from shoal.core.config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available (use 'auto' or 'cpu')")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(name: str, device: torch.device) -> str:
    """train.precision with "auto" resolved: bfloat16 where the hardware multiplies it natively.

    Why not always bfloat16: a CPU without AVX512-BF16 or AMX emulates bfloat16 matrix products.
    On the project's Zen 5 machine, with oneDNN held to AVX-512 without BF16
    (ONEDNN_MAX_CPU_ISA=AVX512_CORE), bfloat16 products ran at about half the float32 speed, and
    held to AVX2 at 1/4 to 1/12 of it; with BF16 they ran 1.9-2.6x faster than float32.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"
