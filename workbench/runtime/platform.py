"""Platform and backend: the one place that decides a rank's device and its collective backend.

    cuda -> NCCL, npu (Ascend) -> HCCL, cpu -> gloo

torch_npu is imported only when the npu platform is chosen or detected: on a machine without
Ascend CANN importing it breaks `import torch`, so it is never imported speculatively.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["PLATFORMS", "BACKENDS", "available_platforms", "detect_platform", "default_device", "load_platform", "rank_device", "backend_for"]

PLATFORMS = ("cuda", "npu", "cpu")
BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}


def _ascend_present() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    return any(os.environ.get(v) for v in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")) or os.path.isdir("/usr/local/Ascend")


def detect_platform() -> str:
    """cuda if a GPU is visible (without initialising CUDA in this process), npu if Ascend is installed, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if _ascend_present():
        return "npu"
    return "cpu"


def default_device() -> str:
    return detect_platform()


def available_platforms() -> list[str]:
    """The device kinds this machine has, accelerator first (without initialising CUDA)."""
    found = [kind for kind, present in (("cuda", torch.cuda.is_available()), ("npu", _ascend_present())) if present]
    return found + ["cpu"]


def load_platform(kind: str) -> str:
    """Make the platform usable in this process (imports torch_npu for npu) and return its device type."""
    kind = torch.device(kind).type
    if kind not in PLATFORMS:
        raise ValueError(f"unknown device {kind!r}; accepted: {', '.join(PLATFORMS)}")
    if kind == "npu":
        import torch_npu  # noqa: F401  (registers torch.npu; only on Ascend machines)
    return kind


def backend_for(device) -> str:
    return BACKENDS[torch.device(device).type]


def rank_device(kind: str, local_rank: int) -> torch.device:
    """The device of the rank with this local (per-node) index."""
    kind = load_platform(kind)
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind)
    count = module.device_count()
    if count == 0:
        raise RuntimeError(f"device {kind!r} was asked for but none is visible")
    device = torch.device(kind, local_rank % count)
    module.set_device(device)
    return device
