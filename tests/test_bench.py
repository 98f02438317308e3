"""The benchmark tooling (effnet_kernels/bench/): ``python -m effnet_kernels bench`` end to end
on the CPU (tiny settings) with the ONNX Runtime and OpenVINO rows, interleaved rounds (fake
runners and a fake clock), shapes and roofline byte counts against the model and hand
computations, --load / --plot, flag errors, and the pytest-benchmark suite (collects, and one CPU
case runs and records bytes/GB/s). Timings themselves are not tested."""

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import effnet_kernels as ek
from effnet_kernels import bench
from effnet_kernels.bench import baselines, cli, intmm, runner, timing
from effnet_kernels.models.efficientnet import CONFIGS, ConvBNAct, EfficientNet
from helpers import sqnr_db

ROOT = Path(__file__).resolve().parents[1]
PKG_PARENT = str(Path(ek.__file__).resolve().parents[1])  # the effnet_kernels this test imports


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PKG_PARENT, env.get("PYTHONPATH")) if p)
    env.pop("TRITON_INTERPRET", None)  # the benchmarks never use the interpreter
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- shapes, bytes
def test_b0_depthwise_layers_match_the_stage_table():
    # FACTS.md B0 table at 224: stem → 112; (expanded C, input H, k, stride), distinct only.
    expected = [(32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 5, 2),
                (240, 28, 5, 1), (240, 28, 3, 2), (480, 14, 3, 1), (480, 14, 5, 1),
                (672, 14, 5, 1), (672, 14, 5, 2), (1152, 7, 5, 1), (1152, 7, 3, 1)]
    layers = bench.dw_layers("efficientnet_b0")
    assert [(d.c, d.h, d.k, d.stride) for d in layers] == expected
    assert all(d.w == d.h and d.ho == (d.h + d.stride - 1) // d.stride for d in layers)
    assert len(bench.dw_layers("efficientnet_b0", distinct=False)) == 16  # one per block
    b7 = bench.dw_layers("efficientnet_b7")
    assert (b7[0].c, b7[0].h) == (64, 300)  # stem 64 channels at 600/2


def test_dwconv_bytes_and_flops_by_hand():
    # B0 stage 2, first block: 96 channels, 112×112 → 56×56, 3×3 stride 2; batch 2, fp16.
    d = bench.dw_layers("efficientnet_b0")[1]
    assert (d.c, d.h, d.ho, d.k, d.stride) == (96, 112, 56, 3, 2)
    x = 2 * 96 * 112 * 112 * 2
    y = 2 * 96 * 56 * 56 * 2
    wb = (96 * 9 + 96) * 2
    pool = 2 * 96 * 4
    assert bench.dwconv_bytes(2, d.c, d.h, d.w, d.ho, d.wo, d.k, 2) == x + y + wb + pool
    assert bench.dwconv_bytes(2, d.c, d.h, d.w, d.ho, d.wo, d.k, 2, pool=False) == x + y + wb
    assert bench.dwconv_flops(2, 96, 56, 56, 3) == 2 * 9 * 2 * 96 * 56 * 56


def test_model_traffic_one_block_by_hand():
    # B0 at 64×64: compare the traffic of the whole model with the same model minus one block
    # (stage 2, block 1: 24 → 144 → 24 at 16×16, 3×3 s1, residual, SE 6), by hand.
    ms = bench.model_shapes("efficientnet_b0", 64)
    blk = ms.blocks[2]
    assert (blk.stage, blk.index, blk.in_ch, blk.mid_ch, blk.out_ch, blk.se_ch, blk.h,
            blk.residual) == (2, 1, 24, 144, 24, 6, 16, True)
    full = bench.model_traffic(ms, elem_size=2)
    without = bench.model_traffic(dataclasses.replace(ms, blocks=ms.blocks[:2] + ms.blocks[3:]),
                                  elem_size=2)
    hw = 16 * 16
    kernel = 2 * (24 * hw + 144 * hw)  # expand: read x, write the expanded map
    kernel += 2 * (144 * hw + 144 * hw)  # depthwise: read, write
    kernel += 4 * 144 * 4  # pool written, read by the SE gate, gate written, read by project
    kernel += 2 * (144 * hw + 24 * hw + 24 * hw)  # project: read, residual read, write
    assert full["act_bytes_kernel"] - without["act_bytes_kernel"] == kernel
    assert full["act_bytes_block"] - without["act_bytes_block"] == 2 * (24 * hw + 24 * hw)
    params = (144 * 24 + 144) + (144 * 9 + 144) + (2 * 6 * 144 + 6 + 144) + (24 * 144 + 24)
    assert full["weight_bytes"] - without["weight_bytes"] == 2 * params


def test_model_traffic_matches_published_anchors():
    t = bench.model_traffic("efficientnet_b0", elem_size=2)
    # FACTS.md: B0@224 fp16, one kernel per op-group: ≈ 26 MB (MiB) of activations per image.
    assert abs(t["act_bytes_kernel"] / 2**20 - 26.0) < 0.5
    assert t["act_bytes_block"] < t["act_bytes_kernel"] / 4
    # torchvision's GFLOPS (MAC-based): B0 0.386, B4 4.394, B7 37.746.
    for name, gmac in (("efficientnet_b0", 0.386), ("efficientnet_b4", 4.394),
                       ("efficientnet_b7", 37.746)):
        assert abs(bench.model_traffic(name)["macs"] / 1e9 - gmac) < 0.001, name
    floor = bench.floor_ms(t, 4, 1000.0)
    assert floor == pytest.approx((4 * t["act_bytes_kernel"] + t["weight_bytes"]) / 1e9)


def _folded_params(m) -> int:
    """Parameters of a model with every BN folded into its conv: each BN's weight and bias
    (2·C) become the conv's bias (C)."""
    bn = sum(mod.bn.num_features for mod in m.modules() if isinstance(mod, ConvBNAct))
    return sum(p.numel() for p in m.parameters()) - bn


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_and_parameter_count_match_the_model(name):
    """Every model of CONFIGS: the folded parameter count of the roofline equals the model's,
    and the block list matches the model's MBConv modules."""
    with torch.device("meta"):
        m = EfficientNet(name)
    t = bench.model_traffic(name)
    assert t["params_folded"] == _folded_params(m)
    ms = bench.model_shapes(name)
    mbconvs = [b for stage in m.blocks for b in stage]
    assert len(ms.blocks) == len(mbconvs)
    for b, mod in zip(ms.blocks, mbconvs):
        assert (b.in_ch, b.out_ch, b.kernel, b.stride, b.residual) == (
            mod.in_ch, mod.out_ch, mod.kernel, mod.stride, mod.use_residual)
        assert b.mid_ch == mod.dw.conv.out_channels
        assert b.se_ch == (mod.se.fc1.out_channels if mod.se is not None else 0)
    assert (ms.stem_ch, ms.head_ch) == (m.stem.conv.out_channels, m.head.conv.out_channels)


def test_spatial_sizes_match_a_forward():
    """The H×W of every block and of the head, at an odd size, as a real forward produces them."""
    m = ek.efficientnet_lite0().eval()
    seen = []
    hooks = [b.register_forward_hook(lambda _m, a, o: seen.append((a[0].shape[-1], o.shape[-1])))
             for stage in m.blocks for b in stage]
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 67, 67))
    for h in hooks:
        h.remove()
    ms = bench.model_shapes("efficientnet_lite0", 67)
    assert [(b.w, b.wo) for b in ms.blocks] == seen
    assert ms.head_hw == tuple(feats.shape[-2:])
    assert all(b.se_ch == 0 for b in ms.blocks)  # Lite: no SE


# ----------------------------------------------------------------------------- the CLI
TINY = ["--device", "cpu", "--models", "b0", "--resolution", "32", "--min-time", "0.02",
        "--min-reps", "1", "--threads", "1", "--copy-bytes", str(8 << 20)]


def _bench_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "effnet_kernels", "bench", *args],
                          capture_output=True, text=True, timeout=timeout, env=_env(),
                          check=False)


@pytest.mark.slow
def test_cli_bench_end_to_end_with_the_cpu_peers(tmp_path):
    """Tiny CPU run: eager, ONNX Runtime, OpenVINO and ours at fp32 and bf16, 3 rounds."""
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    cmd = [*TINY, "--batch", "1,2", "--dtype", "fp32,bf16", "--rounds", "3", "--backends",
           "eager,onnxruntime,openvino,ours_cpu", "--json", str(out)]
    if _has("matplotlib"):
        cmd += ["--plot", str(png)]
    r = _bench_cli(*cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    for key in ("device", "commit", "torch", "cuda", "triton", "date", "results", "roofline",
                "copy_gbps", "onnxruntime", "openvino", "rounds"):
        assert key in doc, key
    assert doc["device"].startswith("CPU") and doc["copy_gbps"] > 0 and doc["threads"] == 1
    rows = {(x["backend"], x["dtype"], x["batch"]): x for x in doc["results"]}
    for x in doc["results"]:
        assert (x["model"], x["resolution"]) == ("efficientnet_b0", 32)
        assert x["img_per_s"] * x["ms_per_batch"] == pytest.approx(1000 * x["batch"])
        assert len(x["round_ms"]) == x["rounds"] == 3  # every raw round kept
        assert x["ms_per_batch"] == statistics.median(x["round_ms"])
        assert x["reps"] == 3 * x["calls_per_round"]
        assert 0 < x["pct_of_floor_block"] < x["pct_of_floor_kernel"]  # the block floor is lower
    for b in (1, 2):
        for name, dt in (("eager", "fp32"), ("ours_cpu", "fp32"), ("eager", "bf16"),
                         ("ours_cpu", "bf16")):
            assert (name, dt, b) in rows, (name, dt, b)
    skipped = {(s["backend"], s["dtype"]): s["reason"] for s in doc["skipped"]}
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        if _has(module):  # measured, with the threads and settings it ran with
            assert (name, "fp32", 2) in rows
            assert "=1" in rows[(name, "fp32", 2)]["note"]  # the threads: 1
        else:
            assert "not installed" in skipped[(name, "fp32")]
    assert "fp32 and int8 only" in skipped[("onnxruntime", "bf16")]
    if _has("openvino"):
        assert "INFERENCE_PRECISION_HINT=f32" in rows[("openvino", "fp32", 1)]["note"]
        bf16_note = rows[("openvino", "bf16", 1)]["note"]  # (f32 where the CPU has no bf16)
        assert "INFERENCE_PRECISION_HINT=bf16" in bf16_note or "(asked bf16: " in bf16_note
        assert "PERFORMANCE_HINT=LATENCY" in rows[("openvino", "bf16", 1)]["note"]
        assert "INFERENCE_NUM_THREADS=1" in rows[("openvino", "fp32", 1)]["note"]
    if _has("onnxruntime"):
        assert "intra_op_num_threads=1" in rows[("onnxruntime", "fp32", 1)]["note"]
    assert {x["dtype"] for x in doc["roofline"]} == {"fp32", "bf16"}
    t = bench.model_traffic("efficientnet_b0", 32, 4)
    (roof,) = [x for x in doc["roofline"] if x["dtype"] == "fp32"]
    assert roof["act_mb_per_img_kernel"] == pytest.approx(t["act_bytes_kernel"] / 1e6)
    assert "img/s" in r.stdout and "roofline efficientnet_b0@32" in r.stdout
    assert "interleaved rounds" in r.stdout
    if png.exists():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_peers_are_reported_not_installed(monkeypatch):
    """Without onnxruntime / openvino their rows say "not installed" and the run goes on."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import → ImportError
    monkeypatch.setitem(sys.modules, "openvino", None)
    args = _args("--backends", "onnxruntime,openvino,eager", "--batch", "1,2", "--dtype", "fp32")
    doc = bench.run(args)
    assert {x["backend"] for x in doc["results"]} == {"eager"}
    skipped = [s for s in doc["skipped"] if s["backend"] in ("onnxruntime", "openvino")]
    assert sorted(s["backend"] for s in skipped) == ["onnxruntime", "openvino"]  # once each
    assert all("not installed" in s["reason"] for s in skipped)
    assert doc["onnxruntime"] is None and doc["openvino"] is None


def _args(*argv):
    """Parsed bench flags with the defaults filled in (tiny CPU settings)."""
    p = cli.configure_parser(argparse.ArgumentParser())
    args = p.parse_args([*TINY, "--quiet", "--rounds", "2", "--dtype", "fp32", *argv])
    cli.finish_args(args)
    return args


def _has(mod):
    return importlib.util.find_spec(mod) is not None


def test_cli_unknown_backend_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cpu", "--backends", "eager,tensorrt"])
    assert "unknown backend 'tensorrt'" in str(e.value)
    with pytest.raises(SystemExit):
        bench.main(["--models", "efficientnet_b9"])
    assert "unknown model" in capsys.readouterr().err


def test_plot_without_matplotlib_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    doc = tmp_path / "d.json"
    doc.write_text(json.dumps({"results": []}))
    with pytest.raises(SystemExit) as e:
        bench.main(["--load", str(doc), "--plot", str(tmp_path / "x.png")])
    assert "needs matplotlib" in str(e.value)
    assert not (tmp_path / "x.png").exists()


def test_progress_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = runner._progress(2, quiet=False)
    bar.set_description_str("b0 eager")
    bar.update(1)
    bar.set_description_str("b0 compile")
    bar.close()
    err = capsys.readouterr().err
    assert "[1/2] b0 eager" in err and "[2/2] b0 compile" in err


def _row(backend, dtype, batch, img_s):
    return {"model": "efficientnet_b0", "resolution": 224, "batch": batch, "dtype": dtype,
            "backend": backend, "img_per_s": img_s, "ms_per_batch": batch / img_s * 1e3,
            "peak_mem_mb": 100.0}


def test_speedups_and_table_of_a_gpu_run():
    doc = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "commit": "abc1234",
           "date": "2026-01-02", "copy_gbps": 3000.0, "results": [
               _row("eager_fp32_nchw", "fp32", 256, 1000.0),
               _row("eager_cudnn_fp16_cl", "fp16", 256, 4000.0),
               _row("compile_default", "fp16", 256, 5000.0),
               _row("ours_cuda", "fp16", 256, 10000.0),
               _row("eager_cudnn_bf16_cl", "bf16", 256, 2000.0),
               _row("ours_cuda", "bf16", 256, 8000.0),
               _row("eager_fp32_nchw", "fp32", 1, 100.0)]}
    rows = {(r["backend"], r["dtype"], r["batch"]): r["speedup"] for r in bench.speedups(doc)}
    assert rows[("ours_cuda", "fp16", 256)] == {"eager_fp32_nchw": 10.0,
                                                "eager_cudnn_fp16_cl": 2.5,
                                                "compile_default": 2.0}
    # bf16 is compared with the bf16 cuDNN baseline and the fp32 eager one, never with fp16
    assert rows[("ours_cuda", "bf16", 256)] == {"eager_fp32_nchw": 8.0, "eager_cudnn_bf16_cl": 4.0}
    assert rows[("eager_fp32_nchw", "fp32", 1)] == {}
    bench.add_roofline(doc)
    table = bench.format_table(doc)
    assert "x eager_cudnn_fp16_cl" in table.splitlines()[0]
    assert len(table.splitlines()) == 2 + len(doc["results"])
    assert "% of the op-group floor" in bench.format_roofline(doc)
    assert bench.result_filename(doc) == "2026-01-02-h100-80gb-hbm3-abc1234.json"
    assert bench.result_filename({**doc, "device_type": "cpu", "cpu_count": 2}) == \
        "2026-01-02-cpu2-abc1234.json"


def test_cuda_event_clock_units():
    """pytest-benchmark computes ``end - start``: GPU seconds from start's event to end's."""

    class FakeEvent:
        def __init__(self, ms):
            self.ms, self.synced = ms, False

        def synchronize(self):
            self.synced = True

        def elapsed_time(self, end):  # torch.cuda.Event: milliseconds from self to end
            return end.ms - self.ms

    start, end = timing._EventStamp(FakeEvent(1.0)), timing._EventStamp(FakeEvent(3.5))
    assert end - start == pytest.approx(2.5e-3)
    assert end.event.synced


def test_backend_names():
    assert bench.backend_name("eager_cudnn_cl", "fp16", False, "cuda") == "eager_cudnn_fp16_cl"
    assert bench.backend_name("compile", "fp16", True, "cuda") == "compile_default"
    assert bench.backend_name("compile", "fp16", False, "cuda") == "compile_max_autotune"
    assert bench.parse_backends("eager_cudnn_fp16_cl,compile_default", "cuda", True) == \
        ["eager_cudnn_cl", "compile"]
    assert "compile" not in bench.parse_backends(None, "cpu", quick=True)
    assert "compile" in bench.parse_backends(None, "cpu", quick=False)


# ----------------------------------------------------------------------------- pytest-benchmark
def _pytest(*args, **env):
    # -P: import the effnet_kernels this test imported (PYTHONPATH), not the source tree in cwd
    return subprocess.run([sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", *args],
                          capture_output=True, text=True, timeout=180, cwd=ROOT, env=_env(**env),
                          check=False)


@pytest.mark.slow
def test_benchmark_suite_collects():
    r = _pytest("benchmarks", "--collect-only", "-q", EFFNET_BENCH_CPU="1")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    for f in ("bench_dwconv.py", "bench_bias_act.py", "bench_models.py"):
        assert any(f in i for i in ids), f
    cpu_dw = [i for i in ids if "test_dwconv_cpu[b0-" in i]
    assert len(cpu_dw) == 12 * 3  # B0's 12 depthwise shapes × (ours_cpu, eager_nchw, eager_cl)
    assert "benchmarks/bench_dwconv.py::test_dwconv_cpu[b0-C96_112x112_k3s2-n1-fp32-ours_cpu]" \
        in ids


@pytest.mark.slow
def test_benchmark_case_records_bytes_and_bandwidth(tmp_path):
    out = tmp_path / "b.json"
    r = _pytest("benchmarks/bench_dwconv.py", "--benchmark-only", f"--benchmark-json={out}",
                "-k", "test_dwconv_cpu and C1152_7x7_k3s1 and (eager_cl or ours_cpu)", "-q",
                EFFNET_BENCH_CPU="1", EFFNET_BENCH_ROUNDS="2")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    benches = doc["benchmarks"]
    assert 1 <= len(benches) <= 2
    for b in benches:
        info = b["extra_info"]
        assert info["bytes"] == bench.dwconv_bytes(1, 1152, 7, 7, 7, 7, 3, 4)
        assert info["flops"] == bench.dwconv_flops(1, 1152, 7, 7, 3)
        assert info["gbps"] == pytest.approx(info["bytes"] / b["stats"]["median"] / 1e9)
        assert info["pct_copy_bw"] > 0 and info["copy_gbps"] > 0
        assert b["group"] == "dwconv cpu b0 C1152_7x7_k3s1 n1 fp32"
    assert doc["machine_info"]["effnet_kernels"]["copy_gbps"]["cpu"] > 0


# ----------------------------------------------------------------------------- int8
@pytest.mark.slow
def test_cli_bench_int8_on_the_cpu(tmp_path):
    """``--dtype int8``: ours (the integer reference on the CPU) and the torch._int_mm baseline,
    plus the fp32 rows they are compared with, which were not asked for."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "effnet_kernels", "bench", "--device", "cpu", "--models", "b0",
           "--resolution", "64", "--batch", "1", "--dtype", "int8", "--quick", "--min-time", "0",
           "--min-reps", "1", "--threads", "1", "--copy-bytes", str(8 << 20), "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path,
                       env=_env(), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    rows = {(x["backend"], x["dtype"]): x for x in doc["results"]}
    assert ("eager", "fp32") in rows and ("ours_cpu", "fp32") in rows  # the companions
    assert doc["int8"]["baseline"] == "int8_intmm_fp32" and doc["int8"]["compare_dtype"] == "fp32"
    assert "_int_mm" in doc["int8"]["baseline_method"]
    int8 = {b for (b, dt) in rows if dt == "int8"}
    skipped = {s["backend"] for s in doc["skipped"] if s.get("dtype") == "int8"}
    for name in ("ours_torch_ref", "int8_intmm_fp32"):  # measured, or skipped with a reason
        assert name in int8 or name in skipped, (name, doc["skipped"])
    assert "int8_intmm_fp32" in int8  # torch._int_mm runs on the CPU (torch ≥ 2.x)
    base = rows[("int8_intmm_fp32", "int8")]
    assert "via torch._int_mm" in base["note"] and "0 fell back" in base["note"]
    if "ours_torch_ref" in int8:
        assert "integer reference" in rows[("ours_torch_ref", "int8")]["note"]
    sp = {(x["backend"], x["dtype"]): x["speedup"] for x in bench.speedups(doc)}
    for name in int8:  # int8 rows are compared with the fp32 rows (eager, fastest ours)
        assert {"eager", "ours_fp32"} <= set(sp[(name, "int8")]), sp[(name, "int8")]
    assert "ours_fp32" not in sp[("ours_cpu", "fp32")]
    roof = {x["dtype"]: x for x in doc["roofline"]}
    t = bench.model_traffic("efficientnet_b0", 64, 1)
    assert roof["int8"]["act_mb_per_img_kernel"] == pytest.approx(t["act_bytes_kernel"] / 1e6)
    assert "x ours_fp32" in r.stdout and "int8_intmm_fp32" in r.stdout


def _with_data_bn(m, res: int, seed: int = 0):
    from effnet_kernels.data import bn_stats_from_random_data

    return bn_stats_from_random_data(m, res, batches=2, seed=seed)


def test_int8_intmm_baseline_matches_the_float_model():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = _with_data_bn(ek.efficientnet_b0(), 64)
    f = bench.fold_model_bn(m)
    q = bench.int8_intmm_model(m, torch.float32, "cpu")
    convs = [mod.conv for mod in q.modules() if hasattr(mod, "conv")
             and hasattr(mod.conv, "weight_q")]
    assert len(convs) == 16 + 15 + 1  # B0: 16 projects, 15 expands, the head
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    # each int8 1x1 layer against the float conv, on the same input: int8 GEMM, layout, scales
    ins = []
    fconvs = [mod.conv for mod in f.modules() if hasattr(mod, "conv") and
              isinstance(mod.conv, torch.nn.Conv2d) and mod.conv.kernel_size == (1, 1)]
    hooks = [c.register_forward_hook(lambda _m, a, o: ins.append((a[0], o))) for c in fconvs]
    with torch.no_grad():
        ref = f(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for conv, (a, o) in zip(convs, ins):
            y = conv(a.contiguous(memory_format=torch.channels_last))
            assert conv.last_path == "int_mm"
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert sqnr_db(o, y) > 25, (conv, sqnr_db(o, y))  # 27-40 dB measured
        y = q(x.contiguous(memory_format=torch.channels_last))
    assert bench.intmm_paths(q) == {"int_mm": 32, "conv2d": 0}
    # end to end: a random network amplifies the int8 noise by ~3 dB per stage (12 dB at the
    # logits here; ek.quantize's own int8 model gets less on the same model), so the logits
    # are checked by direction, the early features by SQNR
    assert F.cosine_similarity(ref.flatten(), y.flatten(), dim=0) > 0.95
    with torch.no_grad():
        h_f = f.blocks[:2](f.stem(x))
        h_q = q.blocks[:2](q.stem(x.contiguous(memory_format=torch.channels_last)))
    assert sqnr_db(h_f, h_q) > 20


def test_int8_intmm_fallback_rules(monkeypatch):
    import torch

    conv = torch.nn.Conv2d(16, 24, 1)
    mod = intmm.IntMMConv1x1(conv)
    monkeypatch.setitem(intmm._INT_MM_OK, "cuda", True)
    cuda = torch.device("cuda")
    assert mod._int_mm_ok(17, cuda) and not mod._int_mm_ok(16, cuda)  # cuBLASLt: M > 16
    odd = intmm.IntMMConv1x1(torch.nn.Conv2d(16, 20, 1))  # N not a multiple of 8
    assert not odd._int_mm_ok(64, cuda)
    # no _int_mm on the device: the float conv, exactly
    monkeypatch.setitem(intmm._INT_MM_OK, "cpu", False)
    x = torch.randn(1, 16, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(mod(x), conv(x))
    assert mod.last_path == "conv2d"


def test_speedups_of_int8_rows():
    doc = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "commit": "abc1234",
           "date": "2026-01-02", "copy_gbps": 3000.0, "results": [
               _row("eager_fp32_nchw", "fp32", 256, 1000.0),
               _row("eager_cudnn_fp16_cl", "fp16", 256, 4000.0),
               _row("ours_cuda", "fp16", 256, 8000.0),
               _row("ours_triton", "fp16", 256, 10000.0),
               _row("ours_cuda", "int8", 256, 16000.0),
               _row("int8_intmm_cudnn_fp16", "int8", 256, 5000.0),
               _row("ours_cuda", "int8", 1, 100.0)]}
    rows = {(r["backend"], r["dtype"], r["batch"]): r["speedup"] for r in bench.speedups(doc)}
    assert rows[("ours_cuda", "int8", 256)] == {
        "eager_fp32_nchw": 16.0, "eager_cudnn_fp16_cl": 4.0, "ours_fp16": 1.6,  # fastest ours
        "int8_intmm_cudnn_fp16": 3.2}
    assert rows[("int8_intmm_cudnn_fp16", "int8", 256)] == {
        "eager_fp32_nchw": 5.0, "eager_cudnn_fp16_cl": 1.25, "ours_fp16": 0.5}
    # float rows never see the int8 ones, nor another batch
    assert rows[("ours_cuda", "fp16", 256)] == {"eager_fp32_nchw": 8.0,
                                                "eager_cudnn_fp16_cl": 2.0}
    assert rows[("ours_cuda", "int8", 1)] == {}
    bench.add_roofline(doc)
    head = bench.format_table(doc).splitlines()[0]
    assert "x ours_fp16" in head and "x int8_intmm_cudnn_fp16" in head
    assert {f["dtype"] for f in doc["roofline"]} == {"fp32", "fp16", "int8"}


def test_int8_backend_names_and_ours_torch_policy():
    assert bench.backend_name("int8_intmm", "int8", False, "cuda") == "int8_intmm_cudnn_fp16"
    assert bench.backend_name("int8_intmm", "int8", True, "cpu") == "int8_intmm_fp32"
    assert bench.backend_name("ours_torch", "int8", True, "cpu") == "ours_torch_ref"
    assert bench.parse_backends("int8_intmm_cudnn_fp16,ours_cuda", "cuda", False) == \
        ["int8_intmm", "ours_cuda"]
    assert bench.parse_backends("ours_torch_ref,int8_intmm_fp32", "cpu", True) == \
        ["ours_torch", "int8_intmm"]
    assert {"ours_torch", "int8_intmm"} <= set(bench.parse_backends(None, "cpu", True))
    # the integer reference: by default up to 4 GMAC a batch (B0@224: batch 10, not 11)
    assert bench.ours_torch_skip_reason("efficientnet_b0", 224, 10) is None
    assert "ours_torch_ref in --backends" in bench.ours_torch_skip_reason("efficientnet_b0",
                                                                           224, 11)
    assert bench.ours_torch_skip_reason("efficientnet_b4", 380, 1) is not None


# ----------------------------------------------------------------------------- interleaving
class _FakeEntry:
    def __init__(self, name):
        self.name, self.round_ms, self.error = name, [], None


def test_interleave_times_every_runner_once_per_round():
    entries = [_FakeEntry(n) for n in "ABC"]
    order = []

    def burst(e):
        order.append(e.name)
        if e.name == "B" and len(e.round_ms) == 1:
            raise RuntimeError("boom\nmore")  # B fails in its second round
        return float(len(order))

    runner.interleave(entries, 4, burst)
    # round 0: A B C; round 1 starts at B (fails); later rounds without B
    assert order == ["A", "B", "C", "B", "C", "A", "C", "A", "A", "C"]
    a, b, c = entries
    assert a.round_ms == [1.0, 6.0, 8.0, 9.0] and len(c.round_ms) == 4
    assert b.round_ms == [2.0] and b.error == "RuntimeError: boom"


def test_run_builds_every_runner_first_then_alternates(monkeypatch):
    """Through ``bench.run`` with fake runners and a fake clock: all runners of a (model,
    batch, dtype) are built before any round, each round times each runner once, and the
    row is the median of its rounds (all kept)."""
    log = []

    def fake_builder(tag):
        def build(ctx):
            log.append(("build", tag, ctx.batch))
            return bench.Runner(lambda x: log.append(("call", tag, ctx.batch)), ctx.x, 2)
        return build

    monkeypatch.setitem(bench.BUILDERS, "eager", fake_builder("eager"))
    monkeypatch.setitem(bench.BUILDERS, "ours_cpu", fake_builder("ours"))
    clock = iter(range(1, 10_000))

    def fake_burst(fn, x, n, device):
        for _ in range(n):
            fn(x)
        log.append(("burst",))
        return float(next(clock))

    monkeypatch.setattr(runner, "burst_ms", fake_burst)
    doc = bench.run(_args("--backends", "eager,ours_cpu", "--batch", "1,2", "--rounds", "3"))
    b1 = log[:log.index(("build", "eager", 2))]  # the batch-1 group
    bursts, calls = [], []  # (position in the log, runners called in that burst)
    for i, e in enumerate(b1):
        if e[0] == "call":
            calls.append(e[1])
        elif e[0] == "burst":
            bursts.append((i, set(calls)))
            calls = []
    last_build = max(i for i, e in enumerate(b1) if e[0] == "build")
    assert [t for i, t in bursts if i < last_build] == [{"eager"}] * 2  # eager's 2 warm-ups
    after = [t for i, t in bursts if i > last_build]
    assert after[:2] == [{"ours"}] * 2  # ours' warm-ups, then the rounds, rotating
    assert after[2:] == [{"eager"}, {"ours"}, {"ours"}, {"eager"}, {"eager"}, {"ours"}]
    rows = {(r["backend"], r["batch"]): r for r in doc["results"]}
    assert set(rows) == {("eager", 1), ("ours_cpu", 1), ("eager", 2), ("ours_cpu", 2)}
    # fake clock: bursts 1-4 are warm-ups, then e5 o6 | o7 e8 | e9 o10
    assert rows[("eager", 1)]["round_ms"] == [5.0, 8.0, 9.0]
    assert rows[("ours_cpu", 1)]["round_ms"] == [6.0, 7.0, 10.0]
    assert (rows[("eager", 1)]["ms_per_batch"], rows[("ours_cpu", 1)]["ms_per_batch"]) == (8, 7)
    for r in rows.values():
        assert r["reps"] == 3 * r["calls_per_round"]


def test_calls_per_round_spread_time_and_reps():
    s = runner.Settings(rounds=5, min_time=0.5, min_reps=20, quick=True)
    assert runner._calls_per_round(10.0, s) == 10  # 0.5 s / 5 rounds / 10 ms
    assert runner._calls_per_round(1000.0, s) == 4  # reps: 20 / 5
    assert runner._calls_per_round(1e-9, s) == runner.MAX_CALLS_PER_ROUND


# ----------------------------------------------------------------------------- flags, --load
RESULTS = ROOT / "benchmarks" / "results" / "2026-11-28-cpu2-89b7164851-dirty.json"


def test_load_prints_a_committed_result_and_plots(tmp_path, capsys):
    png = tmp_path / "p.png"
    argv = ["--load", str(RESULTS)] + (["--plot", str(png)] if _has("matplotlib") else [])
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    doc = json.loads(RESULTS.read_text())
    assert "x eager" in out and len([ln for ln in out.splitlines() if ln.startswith("b0 ")]) == \
        sum(r["model"] == "efficientnet_b0" for r in doc["results"])
    assert "roofline efficientnet_b0@224" in out
    if _has("matplotlib"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "must be ≥ 1"),
    (["--batch", "1,x"], "expected a whole number"),
    (["--min-time", "-1"], "finite number ≥ 0"),
    (["--dtype", "fp8"], "dtype must be"),
    (["--models", "efficientnet_b9"], "unknown model"),
])
def test_bad_flags_are_clear_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--device", "meta"], "--device must be cuda or cpu"),
    (["--device", "nonsense"], "--device"),
    (["--device", "cpu", "--backends", "eager,tensorrt"], "unknown backend 'tensorrt'"),
    (["--load", "/nonexistent/x.json"], "cannot read"),
])
def test_bad_values_are_clear_errors(argv, message):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert message in str(e.value)


def test_load_of_a_file_that_is_not_a_result(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("[1, 2]")
    with pytest.raises(SystemExit) as e:
        bench.main(["--load", str(f)])
    assert "not a bench result" in str(e.value)


def test_quick_defaults_per_device(monkeypatch):
    p = cli.configure_parser(argparse.ArgumentParser())
    a = p.parse_args(["--device", "cpu", "--quick"])
    cli.finish_args(a)
    assert (a.models, a.batch, a.dtype) == (["efficientnet_b0", "efficientnet_lite0"], [1, 8],
                                            ["fp32"])
    assert "compile" not in bench.parse_backends(a.backends, "cpu", a.quick)
    assert {"onnxruntime", "openvino"} <= set(bench.parse_backends(a.backends, "cpu", a.quick))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    g = p.parse_args(["--device", "cuda", "--quick"])
    cli.finish_args(g)  # the GPU quick set as before
    assert (g.models, g.batch, g.dtype) == (["efficientnet_b0", "efficientnet_b4"], [1, 256],
                                            ["fp16"])
