"""Builds effnet_kernels._C with torch's cpp_extension (ninja).

The C++ sources always; the CUDA sources (csrc/**/*.cu) whenever torch is a CUDA build and nvcc
is found, GPU or not (that is how CI proves the CUDA code compiles). Switches:

  EFFNET_CUDA=0|1        force the CUDA part off / on (default: auto)
  TORCH_CUDA_ARCH_LIST   default "8.0;8.6;8.9;9.0"
  MAX_JOBS               parallel compile jobs (ninja)

Install with ``pip install --no-build-isolation .`` so the extension is built against the torch
already installed (it must be the torch you run with).
"""

import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = re.search(
    r'^version\s*=\s*"([^"]+)"', open(os.path.join(ROOT, "pyproject.toml")).read(), re.M
).group(1)


def _find_cuda_home():
    """A CUDA toolkit root holding bin/nvcc and include/cuda_runtime.h, or None.

    torch guesses CUDA_HOME from the nvcc on PATH; when that nvcc is a wrapper script in
    /usr/local/bin the guess (/usr/local) has no headers, so look at the usual places first.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isfile(
            os.path.join(c, "include", "cuda_runtime.h")
        ):
            return c
    return None


cuda_home = _find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read by cpp_extension at import time

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

want = os.environ.get("EFFNET_CUDA", "auto").strip().lower()
if want not in ("auto", "0", "1"):
    sys.exit(f"EFFNET_CUDA must be 0, 1 or unset, got {want!r}")
torch_has_cuda = torch.version.cuda is not None
if want == "1" and not (torch_has_cuda and cuda_home):
    sys.exit(
        "EFFNET_CUDA=1 but "
        + ("torch is a CPU-only build" if not torch_has_cuda else "no CUDA toolkit (nvcc) was found")
    )
with_cuda = want == "1" or (want == "auto" and torch_has_cuda and cuda_home is not None)

os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;8.9;9.0")
archs = os.environ["TORCH_CUDA_ARCH_LIST"]

cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
cpp_sources = [s for s in cpp_sources if not s.startswith("csrc/tests/")]
cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))

define_macros = [
    ("EFFNET_VERSION", f'"{VERSION}"'),
    ("EFFNET_TORCH_VERSION", f'"{torch.__version__}"'),
]
# -fopenmp: at::parallel_for is inline OpenMP code; without it the CPU kernels run on one thread.
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math"]
nvcc_flags = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]

if with_cuda:
    define_macros += [("EFFNET_WITH_CUDA", None), ("EFFNET_CUDA_ARCHS", f'"{archs}"')]
    ext = CUDAExtension(
        "effnet_kernels._C",
        cpp_sources + cu_sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )
    print(f"effnet_kernels: building the C++ and CUDA extension (CUDA {torch.version.cuda} at "
          f"{cuda_home}, archs {archs})")
else:
    why = (
        "EFFNET_CUDA=0" if want == "0"
        else "torch is a CPU-only build" if not torch_has_cuda
        else "no CUDA toolkit (nvcc) was found"
    )
    ext = CppExtension(
        "effnet_kernels._C",
        cpp_sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
    print(f"effnet_kernels: building the CPU-only extension ({why})")

setup(
    version=VERSION,
    packages=find_packages(include=["effnet_kernels", "effnet_kernels.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
