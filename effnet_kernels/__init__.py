"""effnet_kernels: fused CUDA / Triton / CPU kernels for EfficientNet inference in PyTorch.

    import effnet_kernels as ek
    m = ek.efficientnet_b0()                 # or ek.create_model("efficientnet_lite0"), ...
    m = ek.from_torchvision(tv_model)        # ek.from_timm(...), ek.from_efficientnet_pytorch(...)
    m = ek.create_model("efficientnet", phi=1.5)  # a compound-scaled point (or width_mult=...)
    f = ek.optimize(m)                       # frozen fused inference model
    t = ek.optimize_for_training(m)          # trainable, memory-efficient, over m's parameters
    q = ek.quantize(f, calibration_batches)  # INT8 inference model
    r = ek.scale_to_budget(budget_ms=5)      # the largest model within 5 ms here, measured
    ek.build_info()                          # how the compiled core was built
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops, reference  # noqa: E402
from .convert import (  # noqa: E402
    fold_bn,
    from_efficientnet_pytorch,
    from_timm,
    from_torchvision,
)
from .models import (  # noqa: E402
    create_model,
    efficientnet_b0,
    efficientnet_b1,
    efficientnet_b2,
    efficientnet_b3,
    efficientnet_b4,
    efficientnet_b5,
    efficientnet_b6,
    efficientnet_b7,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
    efficientnet_lite3,
    efficientnet_lite4,
    list_models,
)
from .optimize import optimize  # noqa: E402
from .quant import load_quantized, quantize  # noqa: E402
from .scaling import Candidate, ScaleResult, scale_to_budget  # noqa: E402
from .training import optimize_for_training  # noqa: E402


def build_info() -> dict:
    """How the compiled core was built, and what this process can use.

    Keys: version, extension (bool), extension_error, has_cuda, cuda_version, archs,
    torch_version (compiled against), torch_runtime, backends (per device type).
    """
    import torch

    info = {"version": __version__, "extension": ops.extension_available(),
            "extension_error": ops.extension_error(), "has_cuda": False, "cuda_version": "",
            "archs": "", "torch_version": ""}
    if ops._C is not None:
        info.update(ops._C.build_info())
    info["torch_runtime"] = torch.__version__
    info["backends"] = {"cpu": ops.available_backends("cpu")}
    if torch.cuda.is_available():
        info["backends"]["cuda"] = ops.available_backends("cuda")
    return info


__all__ = [
    "build_info", "ops", "reference", "fold_bn", "from_efficientnet_pytorch", "from_timm",
    "from_torchvision", "optimize", "optimize_for_training", "quantize", "load_quantized",
    "create_model", "list_models", "scale_to_budget", "ScaleResult", "Candidate",
    *[f"efficientnet_b{i}" for i in range(8)], *[f"efficientnet_lite{i}" for i in range(5)],
]
