"""Peak resident memory a block of the benchmark adds (`PeakRSS`), read from Linux's /proc."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

MEMORY_METHOD = "peak RSS added by the phase: Linux VmHWM reset at its start (/proc/self/clear_refs), after gc + malloc_trim"


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory a block adds (MiB, `.mib`; None where the OS gives no resettable peak).

    Resident memory covers everything (PyTorch's allocations, oneDNN scratch, ONNX Runtime's arena), unlike
    tracemalloc or the torch profiler. Freed heap is returned to the OS first, so an earlier, larger phase does not
    leave reusable memory that would hide this phase's growth.
    """

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.start = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.ok = self.start is not None
        except OSError:
            self.ok = False
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_kib("VmHWM")
        self.mib = (peak - self.start) / 1024 if self.ok and peak is not None else None
