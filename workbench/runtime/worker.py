"""The worker process of a `WorkerPool`: joins the process group once, then runs tasks until told to stop.

Tasks are module-level functions `task(ctx, *args, **kwargs)`; spawned processes cannot unpickle
functions defined in a notebook, so they live in importable modules.
Results go back to the parent on the CPU: the parent never touches an accelerator.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import threading
import traceback

__all__ = ["worker_main"]


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the parent goes away, even if it was killed (no orphaned workers)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us when the parent dies
    except OSError:
        pass

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            threading.Event().wait(1.0)

    threading.Thread(target=watch, daemon=True).start()


def _to_cpu(value):
    """Move tensors (also inside Results, lists, dicts) to the CPU before they cross to the parent."""
    import torch

    from .tree import map_leaves

    return map_leaves(value, lambda t: t.detach().cpu(), lambda x: isinstance(x, torch.Tensor))


def worker_main(rank: int, world_size: int, init_method: str, device_kind: str, threads: int, timeout_s: float,
                parent_pid: int, commands, results, stack_path: str | None = None) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a notebook interrupt is the parent's to handle
    if stack_path:  # the parent asks where a stuck worker is (SIGUSR1) and reads the answer from this file
        faulthandler.register(signal.SIGUSR1, file=open(stack_path, "w"), all_threads=True)  # noqa: SIM115 (open for life)
    import torch

    torch.set_num_threads(threads)
    try:
        from .launch import init_rank

        ctx = init_rank(rank, world_size, init_method, device_kind, timeout_s=timeout_s)
    except BaseException:
        results.put((-1, rank, "error", traceback.format_exc()))
        return
    results.put((-1, rank, "ready", str(ctx.device)))
    while True:
        message = commands.get()
        if message is None:
            break
        call_id, fn, args, kwargs = message
        try:
            value = _to_cpu(fn(ctx, *args, **kwargs))
            results.put((call_id, rank, "ok", value))
        except BaseException:
            results.put((call_id, rank, "error", traceback.format_exc()))
    ctx.close()
