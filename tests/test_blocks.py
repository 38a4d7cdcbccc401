"""A decode's output left on the ranks and written as blocks (workbench.blocks): every rank writes its own
block, `assemble` joins them, and the whole equals the gathered decode bit for bit (the same computation,
only not gathered)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEVICE, ranks_available

from workbench.blocks import assemble, read_manifest, write_block
from workbench.runner import DecodeJob, LocalRunner

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"qwen-image": (64, 96, 1), "wan2.1": (64, 48, 5), "glm-image": (48, 64, 1)}


@pytest.mark.parametrize("model", sorted(SIZES))
def test_blocks_of_a_sharded_decode_assemble_to_the_gathered_one(clusters, model, tmp_path):
    cluster = clusters(2)
    job = DecodeJob(weights="random", model=model, size=SIZES[model], device=DEVICE)
    gathered = cluster.decode(job, "shard").output  # (B, C, H, W) or (B, C, F, H, W), on rank 0
    result, paths = cluster.decode_to_disk(job, tmp_path, "shard")
    assert len(paths) == 2 and result.output is None and len(result.ranks) == 2
    whole = torch.from_numpy(np.load(assemble(tmp_path)))
    expected = gathered.float() if gathered.dim() == 5 else gathered.float().unsqueeze(2)
    assert torch.equal(whole, expected)
    blocks = [np.load(p, mmap_mode="r").shape for p in paths]
    assert all(b[3] * b[4] < whole.shape[3] * whole.shape[4] for b in blocks), "no rank wrote the whole picture"


def test_one_rank_writes_the_whole_as_one_block(tmp_path):
    job = DecodeJob(weights="random", model="qwen-image", size=(32, 48, 1), device=DEVICE)
    with LocalRunner(DEVICE) as runner:
        result, paths = runner.decode_to_disk(job, tmp_path, "shard")
        full = runner.decode(job, "full").output
    assert len(paths) == 1
    whole = torch.from_numpy(np.load(assemble(tmp_path)))
    full = (full.float() if full.dim() == 5 else full.float().unsqueeze(2)).cpu()
    if DEVICE == "cpu":
        assert torch.equal(whole, full), "shard on one rank is full"
    else:  # cuDNN may pick another algorithm for the halo conv's unpadded input: float32 summation order only
        torch.testing.assert_close(whole, full, rtol=0, atol=2e-5 * full.abs().max().item())


def test_missing_or_overlapping_blocks_are_refused_by_name(tmp_path):
    shape = (1, 3, 1, 8, 8)
    write_block(tmp_path, np.zeros((1, 3, 1, 4, 8), np.float32), (0, 4), (0, 8), shape, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"blocks of rank\(s\) \[1\] of 2 are missing"):
        read_manifest(tmp_path)
    write_block(tmp_path, np.ones((1, 3, 1, 5, 8), np.float32), (3, 8), (0, 8), shape, rank=1, world_size=2)
    with pytest.raises(ValueError, match="do not tile the 8x8 picture exactly once"):
        assemble(tmp_path)
    assert not (tmp_path / "output.npy").exists(), "nothing is written"
    with pytest.raises(ValueError, match=r"has shape \(1, 3, 1, 4, 8\), its place in \(1, 3, 1, 8, 8\) needs"):
        write_block(tmp_path, np.zeros((1, 3, 1, 4, 8), np.float32), (0, 5), (0, 8), shape, rank=0, world_size=2)
    with pytest.raises(ValueError, match="no block_<rank>.json here"):
        read_manifest(tmp_path / "empty")


def test_cli_writes_blocks_and_assembles_them(tmp_path):
    if not ranks_available(2):
        pytest.skip("--world 2 on CUDA takes two GPUs")
    out = tmp_path / "blocks"
    base = [sys.executable, "-m", "workbench"]
    decode = base + ["decode", "--model", "wan2.1", "--tiny", "--weights", "random", "--size", "64x48x5",
                     "--mode", "shard", "--world", "2", "--gather", "sharded", "--out", str(out), "--device", DEVICE]
    proc = subprocess.run(decode, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "each rank wrote its block" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["block_0.json", "block_0.npy", "block_1.json", "block_1.npy"]
    assert json.loads((out / "block_1.json").read_text())["shape"] == [1, 3, 5, 64, 48]
    proc = subprocess.run(base + ["assemble", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "2 blocks ->" in proc.stdout, proc.stderr[-2000:]
    assert np.load(out / "output.npy").shape == (1, 3, 5, 64, 48)
    again = subprocess.run(decode, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 2 and "already holds the blocks of a decode" in again.stderr
