"""The parallel pipeline: stages that declare how they run across ranks, an executor, sequence-parallel
DiTs, CFG parallel, and the Qwen-Image, Qwen-Image-Edit, Wan2.1/2.2 and GLM-Image pipelines.

    from workbench.pipeline import generate
    result = generate("qwen-image", tiny=True, steps=2)        # one process
    with workbench.dist.Cluster(2) as cluster:                 # two ranks, SP=2
        result = cluster.generate("wan2.1", tiny=True, sp=2, steps=2)
    torchrun --nproc-per-node 4 -m workbench generate --pipeline qwen-image --sp 4

`result.table()`, `result.save(dir)`, `viz.plot_stage_timeline(result)`, `viz.plot_memory(result)`.
"""

from .components import SPECS, PipelineSpec, get_spec
from .executor import Executor, Run, Span, StageContext, broadcast_batch, local_context
from .pipelines import PIPELINES, Pipeline, build_pipeline
from .run import GenerationResult, Options, generate, generate_task, make_job, run_generation
from .sp import parallelize_dit, unparallelize_dit
from .stages import Batch, Parallelism, Request, Stage, StageError

__all__ = [
    "Parallelism", "Stage", "Request", "Batch", "StageError", "Executor", "StageContext", "Span", "Run",
    "local_context", "broadcast_batch", "Options", "GenerationResult", "make_job", "generate", "run_generation",
    "generate_task", "Pipeline", "PIPELINES", "build_pipeline", "SPECS", "PipelineSpec", "get_spec",
    "parallelize_dit", "unparallelize_dit",
]
