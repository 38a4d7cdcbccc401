"""The memory model `auto` relies on, checked against allocator peaks measured on an H200.

The estimates are traced on the meta device (no GPU needed) for the exact configurations of the
committed GPU runs; each measured peak must stay below its estimate, which carries a 1.5x margin,
and not be so far below that the margin is wasted.
"""

import json
from pathlib import Path

import pytest
import torch

from workbench.decode.auto import estimate_bytes
from workbench.decode.frames import FrameDecoder
from workbench.models import get_preset, latent_shape

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"
RUNS = sorted(BENCH.glob("decode_h200_sp[124].json"))


def measured_rows():
    for path in RUNS:
        for row in json.loads(path.read_text())["rows"]:
            if row.get("peak_allocated_bytes") and row["mode"] != "auto":
                yield row


@pytest.mark.skipif(not RUNS, reason="no recorded GPU runs")
def test_measured_peaks_lie_within_the_estimates():
    import diffusers

    models = {}
    ratios = []
    for row in measured_rows():
        if row["model"] not in models:
            preset = get_preset(row["model"])
            with torch.device("meta"):
                vae = getattr(diffusers, preset.vae_class)(**preset.config)
            models[row["model"]] = torch.nn.Module.to(vae, getattr(torch, row["dtype"]))
        vae = models[row["model"]]
        fd = FrameDecoder(vae)
        z5 = fd.as_5d(torch.empty(latent_shape(row["model"], *row["size"]), device="meta")).shape
        params = {k: v for k, v in row["params"].items() if k in ("tile_px", "stride_px", "halo_latent")}
        estimate = estimate_bytes(vae, fd, tuple(z5), row["mode"], row["world_size"], **params)
        ratios.append((max(row["peak_allocated_bytes"]) / estimate, row["model"], row["size"], row["mode"]))
    assert len(ratios) >= 30
    worst, best = max(ratios), min(ratios)
    assert worst[0] <= 1.0, f"measured above the estimate: {worst}"
    assert best[0] >= 0.5, f"the estimate is more than twice the measured peak: {best}"
