"""The benchmark tooling: ``python -m effnet_kernels bench`` (:mod:`.cli`) and what the
pytest-benchmark suites in benchmarks/ share with it.

Modules: :mod:`.shapes` (layer shapes, bytes, FLOPs, memory floors), :mod:`.timing` (bursts,
copy bandwidth, CUDA-event clock), :mod:`.envinfo` (commit, CPU, versions, file names),
:mod:`.baselines` (one runner builder per backend), :mod:`.intmm` (the torch._int_mm int8
baseline), :mod:`.runner` (interleaved rounds), :mod:`.report` (table, speedups, plot).
"""

from __future__ import annotations

from .baselines import (BUILDERS, BuildContext, Runner, Unavailable, backend_name, eager_model,
                        int8_float_dtype, ours_torch_skip_reason, parse_backends)
from .cli import add_parser, cmd_bench, configure_parser, main
from .envinfo import cpu_has_bf16, cpu_name, environment, git_commit, result_filename
from .intmm import (IntMMConv1x1, fold_model_bn, int8_intmm_model, intmm_paths, int_mm_works,
                    set_inplace_act)
from .report import format_roofline, format_table, plot, speedups
from .runner import Job, Settings, interleave, plan_jobs, run
from .shapes import (ELEM_SIZE, BlockShape, DWLayer, ModelShapes, add_roofline, conv_out,
                     dw_layers, dwconv_bytes, dwconv_flops, floor_ms, model_shapes,
                     model_traffic)
from .timing import burst_ms, copy_bandwidth_gbps, cuda_event_clock

__all__ = [
    "BUILDERS", "BlockShape", "BuildContext", "DWLayer", "ELEM_SIZE", "IntMMConv1x1", "Job",
    "ModelShapes", "Runner", "Settings", "Unavailable", "add_parser", "add_roofline",
    "backend_name", "burst_ms", "cmd_bench", "configure_parser", "conv_out",
    "copy_bandwidth_gbps", "cpu_has_bf16", "cpu_name", "cuda_event_clock", "dw_layers",
    "dwconv_bytes", "dwconv_flops", "eager_model", "environment", "floor_ms", "fold_model_bn",
    "format_roofline", "format_table", "git_commit", "int8_float_dtype", "int8_intmm_model",
    "int_mm_works", "interleave", "intmm_paths", "main", "model_shapes", "model_traffic",
    "ours_torch_skip_reason", "parse_backends", "plan_jobs", "plot", "result_filename", "run",
    "set_inplace_act", "speedups",
]
