"""Where a run's numbers came from: the machine (host, CPU, cores, GPU and its driver), so a
results table can say which hardware produced each row."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, sysctl on macOS), or the platform's
    processor string, or `unknown`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


@functools.cache
def gpu_driver() -> str:
    """The NVIDIA driver version as nvidia-smi reports it, or `unknown`."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out[0] if out else "unknown"


def machine(device) -> dict:
    """The summary's provenance fields for a run on `device` (a torch.device)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fields = {"host": socket.gethostname(), "cpu_model": cpu_model(), "cpu_cores": cores,
              "gpu_model": None, "gpu_driver": None, "cuda_version": None}
    if device.type == "cuda":
        fields.update(gpu_model=torch.cuda.get_device_name(device), gpu_driver=gpu_driver(),
                      cuda_version=torch.version.cuda)
    elif device.type == "mps":
        fields.update(gpu_model="Apple MPS")
    return fields
