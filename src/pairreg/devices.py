"""Which device training and inference use: ``auto`` is the CUDA GPU when PyTorch sees one, else the CPU.

``auto`` is resolved here rather than by Lightning's own ``auto``, which would also pick Apple's MPS,
where float64 (the targets and the standardisation buffers) is not supported.
"""

from __future__ import annotations

import torch

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
