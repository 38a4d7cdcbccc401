"""Kernels: Triton implementations in `kernels/<name>.py`, each with its PyTorch reference in `<name>_ref.py`.

The references import anywhere; the Triton modules need triton (the `cuda` extra) and run on CUDA tensors,
or on CPU tensors under TRITON_INTERPRET=1. Use them through `workbench.ops`, which picks per platform.
"""
