"""What this machine can do, detected at run time (CPU models vary between machines), and how many processes a
config's trainer asks for."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from mmfusion.config import Config


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported(accelerator: str) -> bool:
    """bf16 pays on GPUs that have it, and on CPUs with AMX or AVX512-BF16 (elsewhere it is emulated and slow)."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    return "bf16-mixed" if bf16_supported(accelerator) else "32-true"


def apply_threads(threads: int | None) -> int:
    """Set this process's intra-op CPU threads (`trainer.threads`; None leaves torch's default) -> the count in use."""
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def describe() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"CPU: {cpu_name()} ({torch.get_num_threads()} threads, bf16 {'yes' if bf16_supported('cpu') else 'no'}); {gpu}"


def devices_per_node(cfg: Config) -> int:
    return cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1


def world_size(cfg: Config) -> int:
    """Processes in the job: devices per node x nodes."""
    return devices_per_node(cfg) * cfg.trainer.num_nodes
