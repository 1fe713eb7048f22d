"""System figures of a training process, logged with its metrics (the dashboard's
"system" group): CPU and memory of the process always; on CUDA, the memory its caching
allocator holds, and the GPU's utilisation and power from NVML where the driver has them.

Read at a metrics flush (every `log_every` steps) once EVERY_S has passed since the last
reading: a reading is a few system calls and NVML queries (0.4 ms on an H200 host) and never
a CUDA synchronisation, so its cost stays under 0.05 % of the run however short the steps
are. Without CUDA, NVML or a power sensor, the figures that need them are left out rather
than guessed.
"""

from __future__ import annotations

import contextlib
import time

import psutil
import torch

try:
    import pynvml
except ImportError:  # nvidia-ml-py is optional where no NVIDIA driver can exist
    pynvml = None

EVERY_S = 1.0  # seconds between readings, at least


def _nvml_handle(device: torch.device):
    """NVML's handle of `device` (matched by UUID, which CUDA_VISIBLE_DEVICES does not
    renumber), or None when there is no CUDA device or no NVML."""
    if device.type != "cuda" or pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-")
                                                else f"GPU-{uuid}")
    except (pynvml.NVMLError, AttributeError, RuntimeError):
        return None


def device_figures() -> list[dict[str, float]]:
    """Every GPU that NVML sees (in a container: the ones it was given), each with its
    `index`, `util_percent`, `memory_used_bytes` and, where the board reports it,
    `power_w`; [] without NVML (no driver, or nvidia-ml-py not installed)."""
    if pynvml is None:
        return []
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                   for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:
        return []
    return [{"index": float(index)} | _figures(handle) for index, handle in enumerate(handles)]


def _figures(handle) -> dict[str, float]:
    """`util_percent`, `memory_used_bytes` and `power_w` of one GPU, each where NVML has it."""
    figures = {}
    with contextlib.suppress(pynvml.NVMLError):
        figures["util_percent"] = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        figures["memory_used_bytes"] = float(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    with contextlib.suppress(pynvml.NVMLError):  # milliwatts; not every board has it
        figures["power_w"] = pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3
    return figures


class SystemStats:
    """`read()` -> {name: value} of this process and its device, since the last read
    (`due()` once `every_s` has passed):
    `system_cpu_percent` (of one core, so up to 100 × threads), `system_rss_mb`, and on
    CUDA `system_gpu_memory_mb` (reserved by this process), `system_gpu_util_percent` and
    `system_gpu_power_w` (the whole device's, from NVML)."""

    def __init__(self, device: torch.device, every_s: float | None = None) -> None:
        self.device = device
        self.every_s = EVERY_S if every_s is None else every_s
        self.last = time.monotonic()
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first reading then covers the time since now
        self.nvml = _nvml_handle(device)

    def due(self) -> bool:
        """Whether `every_s` has passed since the last reading (or since the start)."""
        return time.monotonic() - self.last >= self.every_s

    def read(self) -> dict[str, float]:
        self.last = time.monotonic()
        values = {"system_cpu_percent": self.process.cpu_percent(None),
                  "system_rss_mb": self.process.memory_info().rss / 2**20}
        if self.device.type == "cuda":
            values["system_gpu_memory_mb"] = torch.cuda.memory_reserved(self.device) / 2**20
        if self.nvml is not None:
            device = _figures(self.nvml)
            values |= {f"system_gpu_{name}": device[name] for name in ("util_percent", "power_w")
                       if name in device}
        return values
