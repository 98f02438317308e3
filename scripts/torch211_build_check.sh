#!/usr/bin/env bash
# Proves csrc/ compiles, links and registers its ops against torch 2.11 (the GPU machine's torch),
# without a GPU and without downloading torch's several GB of nvidia-* wheels:
#
#   1. .venv-torch211/ (cached; rebuilt when TORCH211_VERSION changes): a venv with the torch
#      wheel installed --no-deps (~530 MB, one download), torch's small pure-Python dependencies,
#      ninja and numpy, and a symlink to the base venv's nvidia/ package directory: torch's
#      libraries find their CUDA 13 runtime libraries there through their RPATH
#      ($ORIGIN/../../nvidia/...). Triton and cuda-bindings are left out (torch imports them
#      lazily).
#   2. The working tree (tracked and untracked, not ignored files) is copied to
#      .venv-torch211/src/ with its files' mtimes, so the ninja build there stays incremental
#      across runs (only changed sources recompile); the in-place build of this tree is untouched.
#   3. setup.py build_ext --inplace there, with that torch (CUDA on by default).
#   4. Under that torch: import the built package, check every op that csrc/registration.cpp
#      defines is registered with a kernel for every dispatch key csrc/ implements it for (CUDA
#      keys only in a CUDA build), run bias_act on the CPU against a plain-PyTorch formula and
#      check a C++ error arrives as a Python exception.
#
# Ends with a "torch211 build check: PASS|FAIL ..." line; exits non-zero on failure.
#
# Environment:
#   BASE_VENV          venv whose nvidia/ libraries are reused (default .venv, what
#                      scripts/install.sh creates)
#   PYTHON             interpreter for the new venv (default python3)
#   TORCH211_VERSION   torch version to check against (default 2.11.0)
#   EFFNET_CUDA        1 (default): build the CUDA sources too; 0: C++ only
#   TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 2): passed to setup.py
#   TORCH211_FRESH=1   ignore a recorded PASS and delete the cached build directory first (a
#                      full rebuild)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
start=$(date +%s)
VENV=$ROOT/.venv-torch211
SRC=$VENV/src
BASE_VENV=${BASE_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH211_VERSION:-2.11.0}
export EFFNET_CUDA=${EFFNET_CUDA:-1}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}

fail() {
  echo "torch211 build check: FAIL ($1) after $(( $(date +%s) - start )) s"
  exit 1
}
py() { "$VENV/bin/python" "$@"; }
# pip, less the warnings about this machine's configured file:// indexes that lack a package.
pip_() {
  py -m pip "$@" 2> >(grep -v "^WARNING: Location 'file:.*' is ignored" >&2)
}

# ---------------------------------------------------------------- 0. a pass already on record
# A PASS is recorded under the user's cache (outside the checkout, so that a fresh clone on the
# same machine finds it) keyed by the hash of everything the check builds and imports: csrc/,
# effnet_kernels/ (Python), setup.py, pyproject.toml, this script, the torch version, the build
# switches and the compilers' versions.
# Same inputs, same result: the ~12-minute rebuild is skipped. TORCH211_FRESH=1 ignores it.
CACHE=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/effnet_kernels/torch211_pass
source_key() {  # the sources and the toolchain the check builds with
  { printf '%s\n' "$TORCH_VERSION" "$EFFNET_CUDA" "$TORCH_CUDA_ARCH_LIST" "$BASE_VENV"
    "$PYTHON" --version 2>&1; c++ --version 2>&1 | head -n 1; nvcc --version 2>&1 | tail -n 2
    git ls-files -z -co --exclude-standard -- csrc effnet_kernels setup.py pyproject.toml \
      scripts/torch211_build_check.sh | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-32
}
key=$(source_key)
if [ "${TORCH211_FRESH:-0}" != 1 ] && [ -f "$CACHE/$key" ]; then
  echo "torch211 build check: PASS (cached: these sources passed on $(cat "$CACHE/$key"))"
  exit 0
fi

# ---------------------------------------------------------------- 1. the torch 2.11 venv
stamp="torch==$TORCH_VERSION"
if [ "$(cat "$VENV/.ready" 2>/dev/null)" != "$stamp" ]; then
  echo "== creating $VENV ($stamp, --no-deps)"
  BASE_SP=$("$BASE_VENV/bin/python" -c \
    'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    || fail "no base venv at $BASE_VENV (set BASE_VENV)"
  [ -d "$BASE_SP/nvidia/cu13/lib" ] || fail "no CUDA 13 libraries in $BASE_SP/nvidia/cu13/lib"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || fail "venv creation with $PYTHON"
  # torch's own requirements, read from its wheel, less the CUDA wheels (reused from the base
  # venv) and triton; installed before torch so that pip has no unmet requirement to report.
  pip_ download -q --no-deps "torch==$TORCH_VERSION" -d "$VENV/wheel" \
    || fail "pip download torch==$TORCH_VERSION"
  whl=$(ls "$VENV"/wheel/torch-*.whl)
  mapfile -t deps < <(py - "$whl" <<'PY'
import email
import re
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = email.message_from_bytes(z.read(meta)).get_all("Requires-Dist") or []
for req in reqs:
    spec, _, marker = req.partition(";")
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()
    if "extra ==" in marker or re.match(r"(nvidia-|cuda-|triton)", name):
        continue
    print(spec.replace(" ", ""))
PY
)
  [ "${#deps[@]}" -gt 0 ] || fail "could not read torch's requirements from $whl"
  pip_ install -q "${deps[@]}" ninja numpy || fail "pip install ${deps[*]} ninja numpy"
  pip_ install -q --no-deps "$whl" || fail "pip install $whl"
  rm -rf "$VENV/wheel"
  SP=$(py -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -s "$BASE_SP/nvidia" "$SP/nvidia"
  echo "$stamp" > "$VENV/.ready"
fi
py -c 'import torch, sys; print("torch", torch.__version__, "CUDA", torch.version.cuda, "python",
sys.version.split()[0])' \
  || fail "torch $TORCH_VERSION does not import; rm -rf $VENV rebuilds the venv"

# ---------------------------------------------------------------- 2. copy of the working tree
[ "${TORCH211_FRESH:-0}" = 1 ] && rm -rf "$SRC"
mkdir -p "$SRC"
# Everything but the build outputs goes, so files deleted here do not linger there.
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z -co --exclude-standard \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$SRC" \
  || fail "copying the working tree"

# ---------------------------------------------------------------- 3. build
echo "== building in $SRC (EFFNET_CUDA=$EFFNET_CUDA, archs $TORCH_CUDA_ARCH_LIST," \
  "MAX_JOBS=$MAX_JOBS)"
t0=$(date +%s)
(cd "$SRC" && "$VENV/bin/python" setup.py build_ext --inplace > build.log 2>&1) \
  || { grep -E -A4 '[ :]error[ :]|fatal error|undefined (reference|symbol)' "$SRC/build.log" \
         | head -n 60; tail -n 3 "$SRC/build.log"; fail "build, see $SRC/build.log"; }
echo "build: $(( $(date +%s) - t0 )) s"

# ---------------------------------------------------------------- 4. import and run
(cd "$SRC" && "$VENV/bin/python" -W ignore - <<'PY') || fail "import / op checks"
import glob
import re

import torch

import effnet_kernels as ek

info = ek.build_info()
assert info["extension"], f"effnet_kernels._C did not import: {info['extension_error']}"
assert info["torch_version"] == torch.__version__, info
want_cuda = __import__("os").environ["EFFNET_CUDA"] == "1"
assert info["has_cuda"] == want_cuda, f"has_cuda {info['has_cuda']}, EFFNET_CUDA={want_cuda}"
print("build_info:", {k: info[k] for k in ("torch_version", "has_cuda", "cuda_version", "archs")})

# The ops csrc defines, and the dispatch keys csrc implements each for, read from the sources.
defined = re.findall(r'm\.def\(\s*"(\w+)\(', open("csrc/registration.cpp").read())
impls = {}
for path in glob.glob("csrc/**/*.c*", recursive=True):
    if path.startswith("csrc/tests/"):
        continue
    text = open(path).read()
    for key, body in re.findall(r"TORCH_LIBRARY_IMPL\(effnet,\s*(\w+),\s*m\)\s*\{(.*?)\}", text,
                                re.S):
        for op in re.findall(r'm\.impl\(\s*"(\w+)"', body):
            impls.setdefault(key, set()).add(op)
assert defined and impls.get("CPU"), f"read no ops from csrc: {defined}, {impls}"
keys = ["CPU"] + (["CUDA"] if want_cuda else [])
missing = [f"effnet::{op}" for op in defined if not hasattr(torch.ops.effnet, op)]
missing += [f"effnet::{op} [{key}]" for key in keys for op in sorted(impls.get(key, ()))
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"effnet::{op}", key)]
assert not missing, f"not registered under torch {torch.__version__}: {missing}"
for op in defined:
    print("  ", getattr(torch.ops.effnet, op).default._schema)
print("kernels:", {k: sorted(impls.get(k, ())) for k in keys})

# One CPU op against plain PyTorch, through the op and through the Python wrapper.
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 24, 7, 5, generator=g).to(memory_format=torch.channels_last)
b = torch.randn(24, generator=g)
want = torch.nn.functional.silu(x + b.view(1, -1, 1, 1))
for y in (torch.ops.effnet.bias_act(x, b, "silu"), ek.ops.bias_act(x, b, "silu", backend="cpu")):
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
try:
    torch.ops.effnet.bias_act(x, b, "nope")
except (RuntimeError, ValueError) as e:  # TORCH_CHECK / TORCH_CHECK_VALUE
    assert "nope" in str(e), e
else:
    raise AssertionError("bias_act accepted act='nope'")
print("bias_act (CPU) matches silu(x + bias); a bad act raises a Python exception")
PY

echo "torch211 build check: PASS (torch $TORCH_VERSION, EFFNET_CUDA=$EFFNET_CUDA)" \
  "in $(( $(date +%s) - start )) s"
# recorded only if the sources did not change while the check ran (the copy it built is then
# the hashed tree); a cache that cannot be written is not an error
if [ "$(source_key)" = "$key" ]; then
  mkdir -p "$CACHE" 2>/dev/null && date -u +%Y-%m-%dT%H:%MZ > "$CACHE/$key" 2>/dev/null || true
fi
