"""Graph-capture guard for the decode-side ops the shard strategy adds (halo convs, global GroupNorm,
gathered-K/V attention): on one rank the sharded decoder must compile as one graph, equal to eager.

With several ranks the halo exchange uses point-to-point sends, which dynamo does not trace; that
path runs eagerly (see the README's notes on compile).
"""

import pytest
import torch
import torch._dynamo

from workbench.parallel.comm import Comm
from workbench.parallel.vae.frames import FrameDecoder
from workbench.parallel.vae.plan import plan_shards
from workbench.parallel.vae.shard import ShardComm, sharded
from workbench.runner import DecodeJob, load_model


@pytest.mark.parametrize("model", ["glm-image", "qwen-image"])
def test_sharded_decoder_has_no_graph_breaks(model):
    job = DecodeJob(weights="random", model=model, size=(64, 64, 1))
    vae = load_model(job)
    fd = FrameDecoder(vae)
    x = fd.prepare(fd.as_5d(job.latents()))
    comm = ShardComm(plan_shards(x.shape[2:], scale=fd.spatial_ratio, world_size=1), Comm.alone())

    def step(x):
        if fd.causal:
            return vae.decoder(x, feat_cache=fd.new_cache(x.shape[2]), feat_idx=[0])
        return vae.decoder(x[:, :, 0])

    with torch.no_grad(), sharded(vae, comm):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(step)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
        eager = step(x)
        compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)  # same ops, traced: identical up to fp32 noise
