"""The notebook worker pool and the torchrun launcher: errors, reuse, time bounds, no leftovers."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch
from helpers import DEVICE, gone, ranks_available, run_local
from rank_tasks import all_reduce_task, fail_task, hang_task, pid_task

from workbench.parallel.dims import ParallelDims
from workbench.runner import Cluster, DecodeJob
from workbench.runtime import ClusterError, RankError

pytestmark = pytest.mark.slow


def test_pool_is_reused_across_calls(clusters):
    cluster = clusters(2)
    pids = cluster.pids
    assert cluster.run(all_reduce_task, 1.0) == [3.0, 3.0]
    job = DecodeJob(weights="random", model="qwen-image", size=(64, 64, 1))
    first = cluster.decode(job, "shard")
    second = cluster.decode(job, "shard")
    assert cluster.pids == pids and [p for _, p, _ in cluster.run(pid_task)] == pids
    assert torch.equal(first.output, second.output)


def test_the_notebook_process_never_initialises_cuda():
    """A fresh process (a notebook kernel) compares serial and parallel modes through a pool on the test
    device: every decode runs in the workers, every output arrives on the CPU, and the process itself never
    initialises CUDA. On a CUDA machine (WORKBENCH_TEST_DEVICE=cuda) this is the claim of the README."""
    world = 2 if ranks_available(2) else 1
    code = textwrap.dedent(f"""
        import torch
        from workbench.runner import Cluster, DecodeJob
        with Cluster(world_size={world}, device={DEVICE!r}) as cluster:
            comparison = cluster.compare(DecodeJob(weights="random", model="qwen-image", size=(64, 64, 1)), ["tiled", "shard"])
        assert {{r.output.device.type for r in comparison.results.values()}} == {{"cpu"}}
        assert {{r.device.split(":")[0] for r in comparison.results.values()}} == {{{DEVICE.split(":")[0]!r}}}
        print("shard PSNR", comparison.quality["shard"].psnr_db, "cuda initialised:", torch.cuda.is_initialized())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cuda initialised: False" in proc.stdout, proc.stdout


def test_a_one_rank_panel_never_initialises_cuda_in_the_notebook_process():
    """Notebook 02's panel at SP degree 1 (its sweep's first point) on the test device: on a GPU its one rank
    is a worker too (on an H100 the kernel held a CUDA context of 636 MiB before: data/ci/README.md)."""
    code = textwrap.dedent(f"""
        import torch
        from workbench.ui import StrategyComparer
        panel = StrategyComparer(model="qwen-image", size="64x64", modes="full,tiled,shard", sp=1, tile_px=32,
                                 stride_px=24, weights="random", device={DEVICE!r})
        comparison = panel.run(raise_errors=True)
        panel.close()
        assert {{r.output.device.type for r in comparison.results.values()}} == {{"cpu"}}
        print("cuda initialised:", torch.cuda.is_initialized())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cuda initialised: False" in proc.stdout, proc.stdout


def test_a_failing_rank_is_raised_with_its_traceback(clusters):
    cluster = clusters(2)
    pids = cluster.pids
    t0 = time.monotonic()
    with pytest.raises(RankError) as info:
        cluster.run(fail_task, 1, "boom")
    assert info.value.rank == 1 and "RuntimeError: boom on rank 1" in str(info.value)
    assert "fail_task" in info.value.traceback and time.monotonic() - t0 < 10
    # every rank answered: gloo keeps the pool; NCCL restarts it (a collective may still be queued)
    assert (cluster.pids == pids) == (DEVICE == "cpu")
    assert cluster.run(all_reduce_task, 0.0) == [1.0, 1.0]


def test_a_rank_stuck_in_a_collective_does_not_hang_the_call(clusters):
    cluster = clusters(2)
    old = cluster.pids
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"no reply from rank\(s\) \[1\] within 2 s") as info:
        cluster.run(hang_task, 1, 60, timeout_s=2)
    assert time.monotonic() - t0 < 15
    where = "\n".join(info.value.__notes__)
    assert f"--- worker rank 1 (pid {old[1]}) ---" in where and "in hang_task" in where, "it says where rank 1 waited"
    assert gone(old), "a pool that may be stuck is stopped"
    assert cluster.run(all_reduce_task, 0.0) == [1.0, 1.0], "and restarted by the next call"


def test_a_dead_worker_is_reported(clusters):
    cluster = clusters(2)
    os.kill(cluster.pids[1], signal.SIGKILL)
    with pytest.raises(ClusterError, match=r"rank\(s\) \[1\] died"):
        cluster.run(all_reduce_task, 0.0, timeout_s=30)
    assert cluster.run(all_reduce_task, 0.0) == [1.0, 1.0]


def test_closures_are_refused_with_a_reason(clusters):
    def local(ctx):
        return 1

    with pytest.raises(ValueError, match="module-level function"):
        clusters(2).run(local)


def test_no_process_is_left_after_close_or_garbage_collection():
    with Cluster(world_size=2) as cluster:
        pids = cluster.pids
    assert gone(pids)
    cluster = Cluster(world_size=2).start()
    pids = cluster.pids
    del cluster
    gc.collect()
    assert gone(pids)


def test_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from workbench.runner import Cluster
        if __name__ == "__main__":
            cluster = Cluster(world_size=2).start()
            print(" ".join(map(str, cluster.pids)), flush=True)
            time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    parent.kill()
    parent.wait()
    assert gone(pids), "workers must not outlive a killed notebook kernel"


def test_parallel_dims_validate_degrees():
    dims = ParallelDims(world_size=8, cfg=2)
    assert dims.sp == 4 and dims.sp_ranks(5) == [4, 5, 6, 7] and dims.cfg_ranks(5) == [1, 5]
    with pytest.raises(ValueError, match="sp \\* cfg must equal world_size: sp=3 \\* cfg=2 != 8"):
        ParallelDims(world_size=8, sp=3, cfg=2)
    with pytest.raises(ValueError, match="cfg .* must be 1 or 2"):
        ParallelDims(world_size=4, cfg=4)
    with pytest.raises(ValueError, match="decode degree must divide"):
        ParallelDims(world_size=4, decode=3)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Cluster(world_size=2, device="tpu")


def test_torchrun_spmd_decode(tmp_path):
    out = tmp_path / "spmd"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561",
         "-m", "workbench", "decode", "--model", "glm-image", "--tiny", "--size", "64x96", "--mode", "shard,parallel_tiled",
         "--tile", "32", "--stride", "24", "--device", "cpu", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("shard", "parallel_tiled"))]
    assert len(rows) == 2 and all(" 2 " in r for r in rows), proc.stdout  # world 2, printed once by rank 0
    assert (out / "shard.png").is_file() and (out / "summary.json").is_file()


def test_cli_world_spawns_a_local_pool(tmp_path, capsys):
    from workbench.cli import main

    rc = main(["decode", "--model", "qwen-image", "--tiny", "--size", "64x64", "--mode", "patch,shard",
               "--world", "2", "--device", "cpu", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "shard" in text and "patch" in text
    full = run_local(DecodeJob(weights="random", model="qwen-image", size=(64, 64, 1)), "full")
    assert full.output is not None
