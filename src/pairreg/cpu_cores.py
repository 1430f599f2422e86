"""The CPU cores this process may run on (torch-free: the study scripts and `bench --jobs` import it)."""

from __future__ import annotations

import os


def usable_cores() -> list[int] | None:
    """The CPU cores this process may run on, or None where the OS cannot pin processes (macOS, Windows)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
