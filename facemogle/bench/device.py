"""Device bookkeeping of the benchmark: environment record, timing, peak memory, autocast.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from facemogle.core.machine import cpu_name


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device name and library versions for the result file."""
    info: dict[str, Any] = {"type": device.type, "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "loadavg": list(os.getloadavg())}  # CPU timings on a shared host
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), memory_bytes=props.total_memory,
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(),
                          "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                          "cudnn": torch.backends.cuda.cudnn_sdp_enabled()})
    else:
        info["name"] = cpu_name()
    versions = {p: _version(p) for p in ("torch", "diffusers", "transformers", "peft",
                                         "accelerate", "prodigyopt")}
    versions["python"] = platform.python_version()
    return {"device": info, "versions": versions}


class Clock:
    """Timestamps without host syncs: CUDA events on a GPU (read after one synchronize at the
    end), `perf_counter` on a CPU, where every op has finished when it returns."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def host_rss() -> int | None:
    """This process's resident bytes now (Linux /proc; None elsewhere)."""
    return _proc_status_bytes("VmRSS")


def host_peak_rss() -> int | None:
    """This process's peak resident bytes since it started or since `reset_host_peak`."""
    return _proc_status_bytes("VmHWM")


def reset_host_peak() -> None:
    """Set the peak resident mark to the current resident size (Linux: clear_refs 5); where the
    system refuses, the mark keeps counting from the process's start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _proc_status_bytes(field: str) -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"{field}:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else None


def reset_memory(device: torch.device) -> None:
    reset_host_peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, int | None]:
    """Device peaks since `reset_memory` (None off CUDA) and the host's peak resident bytes
    (since `reset_memory` on Linux; see `reset_host_peak`)."""
    host = {"peak_host_rss_bytes": host_peak_rss()}
    if device.type != "cuda":
        return {"peak_allocated_bytes": None, "peak_reserved_bytes": None, **host}
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device), **host}


def release_memory(device: torch.device) -> None:
    """Return freed (e.g. after an out-of-memory error) device memory to the allocator."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast as the trainer runs it (`accelerator.autocast()`); off for float32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


class StepContext:
    """What `facemogle.training.step.train_step` uses of an accelerator, for one process without
    accelerate's global state: autocast at the benchmark's dtype (as `Accelerator(
    mixed_precision=...)` runs it), plain backward, clipping on every step."""

    sync_gradients = True

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype

    def autocast(self):
        return autocast(self.device, self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
