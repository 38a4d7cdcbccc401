"""A small custom-op layer: one op, one implementation per platform, registered once with torch.library.

    class Double(CustomOp):
        name, schema = "double", "(Tensor x) -> Tensor"
        def forward_native(self, x): return x * 2      # PyTorch, any device; also the default fake
        def forward_cuda(self, x): ...                # Triton; defaults to forward_native
        def forward_npu(self, x): ...                 # torch_npu fused ops; defaults to forward_native

    double = Double().register()                      # torch.ops.workbench.double

Each platform's implementation is chosen once, at registration: cuda -> forward_cuda when Triton is
importable (else forward_native), npu -> forward_npu, any other device -> forward_native. A call runs the
implementation of its first tensor argument's device. Nothing platform-specific is imported before a
tensor of that platform arrives, so torch_npu is never imported here, and Triton only on a CUDA call.

torch.library gives each op a schema and a fake implementation (shapes and dtypes only), so
torch.compile(fullgraph=True) captures a call as one graph node, whichever implementation runs under it.
The ops are for inference: there is no autograd formula, and a backward through one raises.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

__all__ = ["NAMESPACE", "CustomOp", "KernelOp", "triton_available"]

NAMESPACE = "workbench"


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


class CustomOp:
    name: str  # registered as torch.ops.workbench.<name>
    schema: str  # torch.library schema without the name, e.g. "(Tensor x, float eps) -> Tensor"
    mutates_args: tuple[str, ...] = ()  # arguments written in place, marked (a!) in the schema

    def forward_native(self, *args):
        raise NotImplementedError

    def forward_cuda(self, *args):
        return self.forward_native(*args)

    def forward_npu(self, *args):
        return self.forward_native(*args)

    def fake(self, *args):
        """Outputs with the right shapes, dtypes and strides; by default the native implementation run on
        fake tensors (fine for ops whose native form has no data-dependent shapes)."""
        return self.forward_native(*args)

    def implementations(self) -> dict:
        """The implementation per device type, chosen once; device types not listed run forward_native."""
        return {"cuda": self.forward_cuda if triton_available() else self.forward_native, "npu": self.forward_npu}

    def register(self):
        """Register as torch.ops.workbench.<name>; returns the op overload (callable like a function)."""
        implementations = self.implementations()

        def run(*args):
            return implementations.get(args[0].device.type, self.forward_native)(*args)

        op = torch.library.custom_op(f"{NAMESPACE}::{self.name}", run, mutates_args=self.mutates_args,
                                     schema=self.schema)
        op.register_fake(self.fake)
        return getattr(getattr(torch.ops, NAMESPACE), self.name).default


class KernelOp(CustomOp):
    """An op over a Triton kernel file and its reference: native runs `<name>_reference` of `reference` (a module
    of PyTorch references), cuda runs the launcher `<name>` of `workbench.kernels.<kernels>`, imported on the
    first CUDA call."""

    kernels: str  # the kernel file's module name under workbench.kernels

    def __init__(self, name: str, schema: str, reference):
        self.name, self.schema = name, schema
        self.reference = getattr(reference, f"{name}_reference")

    def forward_native(self, *args):
        return self.reference(*args)

    def forward_cuda(self, *args):
        return getattr(importlib.import_module(f"workbench.kernels.{self.kernels}"), self.name)(*args)
