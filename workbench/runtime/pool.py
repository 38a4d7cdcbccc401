"""A persistent pool of worker processes, joined in one process group: generic, knows no application.

    with WorkerPool(world_size=4, device="cpu") as pool:
        pool.run(some_module.task, arg)          # task(ctx, arg) on every rank; the per-rank values

The process group stays alive across calls, so a notebook does not pay start-up again. Any rank's
exception is raised here with the rank and its traceback; a call that outlives `timeout_s` or a worker
that dies raises too. When a rank may be stuck (in a collective a failed peer never joined), or after
any failure on an accelerator (NCCL may still hold a queued collective that the next call would pair
with), the pool is restarted on the next call. Closing the context, garbage collection, a kernel
interrupt or interpreter exit leave no process behind. This (parent) process never initialises CUDA:
workers pick their devices and send results back on the CPU.
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import signal
import tempfile
import time
import weakref

import torch.multiprocessing as mp

from .platform import PLATFORMS
from .worker import worker_main

__all__ = ["WorkerPool", "RankError", "ClusterError"]

ERROR_GRACE_S = 5.0  # after one rank fails, how long the others get to report before the pool is restarted


class ClusterError(RuntimeError):
    """The pool could not run a call: a worker died, or the call timed out."""


class RankError(RuntimeError):
    """A task raised on a rank; the message carries the rank and its traceback."""

    def __init__(self, rank: int, traceback_text: str):
        self.rank = rank
        self.traceback = traceback_text
        last = traceback_text.strip().splitlines()[-1] if traceback_text.strip() else "?"
        super().__init__(f"rank {rank} failed: {last}\n\n--- traceback on rank {rank} ---\n{traceback_text}")


def _shutdown(procs, commands, tmpdir):
    """Stop the workers: politely, then by force. Runs on close, garbage collection and exit."""
    for q in commands:
        try:
            q.put_nowait(None)
        except Exception:
            pass
    deadline = time.monotonic() + 3
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    shutil.rmtree(tmpdir, ignore_errors=True)


class WorkerPool:
    """`world_size` spawned worker processes joined in one process group (gloo, NCCL or HCCL)."""

    def __init__(self, world_size: int = 2, device: str = "cpu", *, timeout_s: float = 1800,
                 threads_per_rank: int | None = None, start_timeout_s: float = 300):
        kind = str(device).split(":")[0]
        if kind not in PLATFORMS:
            raise ValueError(f"unknown device {device!r}; accepted: {', '.join(PLATFORMS)}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.device = kind
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.threads = threads_per_rank or max(1, (os.cpu_count() or 1) // world_size)
        self.devices: list[str] = []
        self._ids = itertools.count()
        self._procs: list = []
        self._finalizer = None
        self.starts = 0  # how many times the pool was (re)started

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> WorkerPool:
        if self.alive:
            return self
        self.close()
        ctx = mp.get_context("spawn")
        tmpdir = tempfile.mkdtemp(prefix="workbench-cluster-")
        init_method = f"file://{os.path.join(tmpdir, 'store')}"
        self._commands = [ctx.Queue() for _ in range(self.world_size)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(target=worker_main, daemon=True, name=f"workbench-rank{r}",
                        args=(r, self.world_size, init_method, self.device, self.threads, self.timeout_s,
                              os.getpid(), self._commands[r], self._results, self._stack_path(tmpdir, r)))
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._commands, tmpdir)
        self._tmpdir = tmpdir
        self.starts += 1
        ready = self._collect(-1, self.start_timeout_s, what="start-up")
        self.devices = [ready[r] for r in range(self.world_size)]
        return self

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._procs = []

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    # ---------------------------------------------------------------------------------- calls

    def run(self, fn, *args, timeout_s: float | None = None, **kwargs) -> list:
        """Run module-level `fn(ctx, *args, **kwargs)` on every rank; return the per-rank values."""
        if getattr(fn, "__module__", "__main__") == "__main__" or "<locals>" in getattr(fn, "__qualname__", ""):
            raise ValueError(f"{fn!r} must be a module-level function of an importable module "
                             "(spawned workers cannot unpickle functions defined in a notebook or a closure)")
        self.start()
        call_id = next(self._ids)
        for q in self._commands:
            q.put((call_id, fn, args, kwargs))
        values = self._collect(call_id, timeout_s or self.timeout_s, what=getattr(fn, "__name__", "call"))
        return [values[r] for r in range(self.world_size)]

    def _collect(self, call_id: int, timeout_s: float, what: str) -> dict:
        """Wait for every rank's reply; raise on an error, a dead worker, a timeout or Ctrl-C.

        After the first error the others get `ERROR_GRACE_S` to answer: if all do, no rank is stuck
        in a collective and the pool stays up; otherwise it is restarted on the next call.
        """
        replies: dict = {}
        errors: dict = {}
        stuck = False  # no reply by the deadline: the workers are asked where they are
        deadline = time.monotonic() + timeout_s
        try:
            while len(replies) + len(errors) < self.world_size:
                try:
                    cid, rank, status, value = self._results.get(timeout=0.2)
                except queue.Empty:
                    dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
                    if dead:
                        codes = {r: self._procs[r].exitcode for r in dead}
                        raise ClusterError(f"{what}: worker rank(s) {dead} died (exit codes {codes})")
                    if time.monotonic() > deadline:
                        if errors:
                            raise RankError(*min(errors.items()))
                        missing = sorted(set(range(self.world_size)) - set(replies))
                        stuck = True
                        raise ClusterError(f"{what}: no reply from rank(s) {missing} within {timeout_s:.0f} s")
                    continue
                if cid != call_id:
                    continue  # a late reply to a call that already failed
                if status == "error":
                    errors[rank] = value
                    deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)
                else:
                    replies[rank] = value
        except BaseException as e:
            if stuck or isinstance(e, KeyboardInterrupt):
                where = self._stacks()
                e.add_note(where)  # under the traceback (Python and IPython >= 8.15 show notes)
                os.write(2, f"{type(e).__name__} {e}\n{where}\n".encode())  # and on fd 2, which logs keep
            self.close()  # ranks may be stuck in a collective: restart on the next call
            raise
        if errors:
            if self.device != "cpu":
                self.close()  # NCCL/HCCL: a rank may have answered with a collective still queued
            raise RankError(*min(errors.items()))  # gloo: every rank answered, so the pool is fine
        return replies

    @staticmethod
    def _stack_path(tmpdir: str, rank: int) -> str:
        return os.path.join(tmpdir, f"stack_{rank}.txt")

    def _stacks(self) -> str:
        """Where every live worker is: each writes its threads' stacks to its file when sent SIGUSR1 (worker_main)."""
        parts = []
        for rank, p in enumerate(self._procs):
            path = self._stack_path(self._tmpdir, rank)
            if not p.is_alive() or not os.path.exists(path):
                continue
            start = os.path.getsize(path)
            os.kill(p.pid, signal.SIGUSR1)
            time.sleep(0.5)  # faulthandler writes from the signal handler, at once
            with open(path) as f:
                f.seek(start)
                parts.append(f"--- worker rank {rank} (pid {p.pid}) ---\n{f.read().strip()}")
        return "where the workers were:\n" + "\n".join(parts) if parts else "no live worker to ask where it was"

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"{type(self).__name__}(world_size={self.world_size}, device={self.device!r}, {state}, devices={self.devices})"
