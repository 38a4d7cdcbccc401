"""The parallel pipeline: stages that declare how they run across ranks, an executor, CFG parallel, and the
Qwen-Image, Qwen-Image-Edit, Wan2.1/2.2 and GLM-Image pipelines (one file each). Sequence parallelism of the
DiTs is applied from outside by `workbench.parallel.dit.parallelize_dit`.

    from workbench.pipeline import generate
    result = generate("qwen-image", tiny=True, steps=2)        # one process
    with workbench.Cluster(2) as cluster:                      # two ranks, SP=2
        result = cluster.generate("wan2.1", tiny=True, sp=2, steps=2)
    torchrun --nproc-per-node 4 -m workbench generate --pipeline qwen-image --sp 4

`result.table()`, `result.save(dir)`, `viz.plot_stage_timeline(result)`, `viz.plot_memory(result)`.
"""

from .executor import Executor, Run, Span, StageContext, broadcast_batch
from .pipelines import PIPELINES, Pipeline, build_pipeline
from .run import GenerationResult, Options, generate, make_job, run_generation
from .stages import Batch, Parallelism, Request, Stage, StageError

__all__ = [
    "Parallelism", "Stage", "Request", "Batch", "StageError", "Executor", "StageContext", "Span", "Run",
    "broadcast_batch", "Options", "GenerationResult", "make_job", "generate", "run_generation", "Pipeline",
    "PIPELINES", "build_pipeline",
]
