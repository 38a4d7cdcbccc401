"""A decode's output on disk as blocks: each rank writes its own; `assemble` streams them into one array.

For outputs no single device (or host) should hold: `shard` with output="sharded" leaves every rank its
block of the picture, and each rank writes that block where it is. Later, anywhere:

    path = assemble("out/")                    # out/output.npy, (B, C, F, H, W) float32, block by block
    video = numpy.load(path, mmap_mode="r")    # memory-mapped: pages are read as they are touched

On disk, per rank r: `block_<r>.npy` (B, C, F, h, w) float32 (a bf16 or fp16 decode converts exactly) and
`block_<r>.json` (where the block sits in the whole, and the whole's shape). Needs numpy, not torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["write_block", "assemble", "read_manifest"]


def write_block(out_dir, block, rows_px: tuple[int, int], cols_px: tuple[int, int], shape: tuple, rank: int,
                world_size: int) -> Path:
    """Write this rank's block (a (B, C, F, h, w) tensor or array) at pixel rows/cols [start, stop) of the whole
    (B, C, F, H, W) `shape`; returns the block's .npy path. The .json is written last: it marks the block done."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = block.detach().float().cpu().numpy() if hasattr(block, "detach") else np.asarray(block, np.float32)
    expected = (*shape[:3], rows_px[1] - rows_px[0], cols_px[1] - cols_px[0])
    if data.shape != expected:
        raise ValueError(f"block of rank {rank} has shape {data.shape}, its place in {tuple(shape)} needs {expected}")
    path = out / f"block_{rank}.npy"
    np.save(path, data)
    meta = {"rank": rank, "world_size": world_size, "rows_px": list(rows_px), "cols_px": list(cols_px),
            "shape": list(shape), "dtype": "float32", "file": path.name}
    (out / f"block_{rank}.json").write_text(json.dumps(meta))
    return path


def read_manifest(out_dir) -> tuple[tuple, list[dict]]:
    """(the whole's shape, every block's metadata); a ValueError naming what is missing or does not fit."""
    out = Path(out_dir)
    metas = sorted((json.loads(p.read_text()) for p in out.glob("block_*.json")), key=lambda m: m["rank"])
    if not metas:
        raise ValueError(f"{out}: no block_<rank>.json here (written by a decode with sharded output)")
    shape, world = tuple(metas[0]["shape"]), metas[0]["world_size"]
    missing = sorted(set(range(world)) - {m["rank"] for m in metas})
    if missing:
        raise ValueError(f"{out}: blocks of rank(s) {missing} of {world} are missing (a rank failed or is still writing)")
    if any(tuple(m["shape"]) != shape for m in metas):
        raise ValueError(f"{out}: the blocks disagree on the whole's shape (blocks of two decodes?)")
    covered = np.zeros(shape[3:], dtype=np.uint8)
    for m in metas:
        covered[slice(*m["rows_px"]), slice(*m["cols_px"])] += 1
    if covered.min() != 1 or covered.max() != 1:
        raise ValueError(f"{out}: the blocks do not tile the {shape[3]}x{shape[4]} picture exactly once")
    return shape, metas


def assemble(out_dir, path=None) -> Path:
    """Stream the blocks into one (B, C, F, H, W) float32 .npy (default out_dir/output.npy), one block in memory
    at a time; returns its path."""
    out = Path(out_dir)
    shape, metas = read_manifest(out)
    path = Path(path) if path else out / "output.npy"
    whole = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for m in metas:
        whole[..., slice(*m["rows_px"]), slice(*m["cols_px"])] = np.load(out / m["file"], mmap_mode="r")
    whole.flush()
    del whole
    return path
