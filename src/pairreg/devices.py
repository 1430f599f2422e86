"""Which device training and inference use: ``auto`` is the CUDA GPU when PyTorch sees one, else the CPU.

``auto`` is resolved here rather than by Lightning's own ``auto``, which would also pick Apple's MPS,
where float64 (the targets and the standardisation buffers) is not supported.
"""

from __future__ import annotations

import os

import torch

from .cpu_cores import usable_cores

ACCELERATORS = ("auto", "cpu", "gpu")


class DeviceError(ValueError):
    """A device was asked for that this machine does not have."""


def lightning_accelerator(accelerator: str = "auto") -> str:
    """``"gpu"`` or ``"cpu"``, the Lightning accelerator for the config key ``accelerator``."""
    if accelerator not in ACCELERATORS:
        raise DeviceError(f"accelerator: {accelerator!r} is not one of {list(ACCELERATORS)}")
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise DeviceError(f"accelerator=gpu but PyTorch sees no CUDA GPU (torch {torch.__version__}, built for "
                          f"CUDA {torch.version.cuda or 'none: a CPU-only build'}); use accelerator=auto or cpu")
    return accelerator


def torch_device(accelerator: str = "auto") -> torch.device:
    """The torch device for ``accelerator``: ``cuda`` (the current GPU) or ``cpu``."""
    return torch.device("cuda" if lightning_accelerator(accelerator) == "gpu" else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are; inputs are moved there before a forward pass."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def shared_cpu_warning(threads: int, cpus: int | None = None, load: float | None = None,
                       machine_cpus: int | None = None) -> str | None:
    """A warning when ``threads`` torch threads are about to share CPUs that other processes keep busy.

    torch's intra-op threads meet at a barrier after every operation, so one thread descheduled by another
    process stalls them all: on this project's 2-core machine, force training with 2 threads while another
    2-thread job ran made 1.3 steps/s instead of ~12 (docs/results.md). ``cpus`` defaults to the CPUs this
    process may use, ``machine_cpus`` to all the machine's CPUs, ``load`` to the 1-minute load average
    (runnable processes on the whole machine, ours not yet among them). The load average cannot say which
    cores are busy, so a process pinned to some of them (``taskset``, ``bench --jobs``) counts the load as
    filling the other cores first: a worker on free cores beside busy pinned ones is not warned.
    """
    if threads <= 1:
        return None
    if cpus is None:
        cpus = len(usable_cores() or []) or os.cpu_count() or 1
    if machine_cpus is None:
        machine_cpus = os.cpu_count() or cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return None
    load_on_ours = max(0.0, load - max(0, machine_cpus - cpus))
    if load_on_ours + threads <= cpus + 0.5:
        return None
    where = f"{cpus} CPU(s)" if machine_cpus <= cpus else f"{cpus} of {machine_cpus} CPU(s)"
    return (f"threads={threads} on {where} already running ~{load:.1f} busy processes (1-minute load): "
            "torch's threads wait for each other when they share cores, which can make training 10x slower; "
            "set threads=1, or run on free cores (taskset)")
