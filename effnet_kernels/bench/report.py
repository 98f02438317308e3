"""Output of a benchmark document: speedups, the table, the roofline lines, notes, and a plot.

"x <baseline>" is the img/s ratio over that baseline at the same model, resolution, batch and
dtype (``eager_fp32_nchw``: any dtype). int8 rows are also compared across dtypes with the rows
of the float dtype the int8 models use (fp16 on a GPU, fp32 on the CPU): every baseline of that
dtype and ``ours_<dtype>`` = the fastest ``ours_*`` row of that dtype; and with the int8
baseline (``int8_intmm_*``), an int8 row itself.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .baselines import int8_float_dtype

__all__ = ["check_matplotlib", "format_roofline", "format_table", "plot", "print_report",
           "speedups"]

# the rows other rows are compared with, by printed-name prefix (int8_intmm_* by kind)
_BASELINES = ("eager_fp32_nchw", "eager", "onnxruntime", "openvino")


def _baseline_kind(name: str) -> str | None:
    if name in _BASELINES:
        return name
    if re.fullmatch(r"eager_cudnn_\w+_cl", name):
        return "eager_cudnn_cl"
    if name.startswith("compile"):
        return "compile"
    if name.startswith("int8_intmm"):
        return "int8_intmm"
    return None


def _doc_int8_dtype(doc: dict) -> str:
    """The float dtype a run's int8 rows are compared with."""
    if doc.get("int8", {}).get("compare_dtype"):
        return doc["int8"]["compare_dtype"]
    cpu = doc.get("device_type") == "cpu" or str(doc.get("device", "")).startswith("CPU")
    return int8_float_dtype("cpu" if cpu else "cuda")


def _speedup(r: dict, results: list, fdt: str) -> dict:
    sp = {}
    for b in results:
        if b is r or (b["model"], b["resolution"], b["batch"]) != (r["model"], r["resolution"],
                                                                   r["batch"]):
            continue
        cross = r["dtype"] == "int8" and b["dtype"] == fdt
        ratio = r["img_per_s"] / b["img_per_s"]
        if _baseline_kind(b["backend"]) is None:
            if cross and b["backend"].startswith("ours_"):
                key = f"ours_{fdt}"  # over the fastest ours row of that dtype
                sp[key] = min(sp.get(key, math.inf), ratio)
            continue
        if b["dtype"] != r["dtype"] and b["backend"] != "eager_fp32_nchw" and not cross:
            continue
        sp[b["backend"]] = ratio
    return sp


def speedups(doc: dict) -> list[dict]:
    """Each result with ``speedup`` {baseline name: img/s ratio} (see the module docstring)."""
    fdt = _doc_int8_dtype(doc)
    return [{**r, "speedup": _speedup(r, doc["results"], fdt)} for r in doc["results"]]


def format_table(doc: dict) -> str:
    """One line per result: size, img/s, ms/batch, peak memory, % of the floor, speedups."""
    rows = speedups(doc)
    if not rows:
        return "(no results)"
    base_cols = []
    for r in doc["results"]:
        if _baseline_kind(r["backend"]) and r["backend"] not in base_cols:
            base_cols.append(r["backend"])
    for r in rows:  # the int8 rows' "ours_<float dtype>" column
        base_cols += [k for k in r["speedup"] if k not in base_cols]
    head = ["model", "res", "batch", "dtype", "backend", "img/s", "ms/batch", "peak MB",
            "% floor"] + [f"x {b}" for b in base_cols]
    lines = []
    for r in rows:
        pct = r.get("pct_of_floor_kernel")
        cells = [r["model"].replace("efficientnet_", ""), str(r["resolution"]), str(r["batch"]),
                 r["dtype"], r["backend"], f"{r['img_per_s']:.1f}", f"{r['ms_per_batch']:.3f}",
                 "-" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}",
                 "-" if pct is None else f"{pct:.1f}"]
        cells += [f"{r['speedup'][b]:.2f}" if b in r["speedup"] else "-" for b in base_cols]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < 5 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


def format_roofline(doc: dict) -> str:
    """The memory floors per model and dtype, and how close the best row of each size gets."""
    out = []
    bw = doc.get("copy_gbps")
    for f in doc.get("roofline", []):
        line = (f"roofline {f['model']}@{f['resolution']} {f['dtype']}: "
                f"{f['act_mb_per_img_kernel']:.1f} MB/img (one kernel per op-group), "
                f"{f['act_mb_per_img_block']:.1f} MB/img (one kernel per block), "
                f"+ {f['weight_mb']:.1f} MB weights/forward, {f['gflops_per_img']:.2f} GFLOP/img")
        if bw:
            line += (f"; at {bw:.0f} GB/s copy: floor {f['floor_ms_per_img_kernel']:.4f} / "
                     f"{f['floor_ms_per_img_block']:.4f} ms/img + {f['floor_ms_weights']:.4f} "
                     "ms/forward for the weights")
        out.append(line)
    best: dict = {}
    for r in doc["results"]:
        k = (r["model"], r["batch"], r["dtype"])
        if r.get("floor_ms_kernel") and (k not in best
                                         or r["ms_per_batch"] < best[k]["ms_per_batch"]):
            best[k] = r
    for (model, batch, dt), r in sorted(best.items()):
        out.append(f"  {model} b{batch} {dt}: best {r['backend']} {r['ms_per_batch']:.3f} ms = "
                   f"{r['pct_of_floor_kernel']:.1f}% of the op-group floor "
                   f"({r['floor_ms_kernel']:.3f} ms), {r['pct_of_floor_block']:.1f}% of the "
                   f"block floor ({r['floor_ms_block']:.3f} ms)")
    return "\n".join(out)


def print_report(doc: dict) -> None:
    """The table, the rooflines, the notes, what was not available and what failed."""
    print()
    print(f"{doc.get('device')} · commit {doc.get('commit')} · torch {doc.get('torch')} · "
          f"CUDA {doc.get('cuda')} · triton {doc.get('triton')} · {doc.get('date')} "
          f"({_timing_words(doc)}; speedup = img/s ratio)")
    print(format_table(doc))
    print(format_roofline(doc))
    notes = dict.fromkeys((r["backend"], r["note"]) for r in doc["results"] if r.get("note"))
    for backend, note in notes:
        print(f"note: {backend}: {note}")
    if doc.get("int8"):
        print(f"int8 baseline {doc['int8']['baseline']}: {doc['int8']['baseline_method']}")
    for s in doc.get("skipped", []):
        print(f"not available: {s.get('backend')} {s.get('dtype', '')}: {s['reason']}")
    for e in doc.get("errors", []):
        print(f"FAILED: {e['model']} b{e['batch']} {e['dtype']} {e['backend']}: {e['error']}")


def _timing_words(doc: dict) -> str:
    if doc.get("rounds"):
        return f"median of {doc['rounds']} interleaved rounds"
    return "medians"


def check_matplotlib() -> None:
    """SystemExit with the fix when matplotlib is missing (checked before measuring)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise SystemExit("bench: --plot needs matplotlib, which is not installed "
                         "(pip install matplotlib), or drop --plot") from e


def _series(r: dict) -> str:
    """Plot label: the backend, plus the dtype where the name does not already say it."""
    named = r["backend"].startswith(("eager_fp32", "eager_cudnn", "int8_intmm"))
    return r["backend"] if named else f"{r['backend']} {r['dtype']}"


def _panel(ax, rows: list, title: str) -> None:
    batches = sorted({r["batch"] for r in rows})
    series = list(dict.fromkeys(_series(r) for r in rows))
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        ys = []
        for b in batches:
            m = [r["img_per_s"] for r in rows if r["batch"] == b and _series(r) == s]
            ys.append(m[0] if m else 0.0)
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(batches))]
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("images / s")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=7)


def plot(doc: dict, path: str | Path) -> None:
    """Grouped bars, one panel per (model, resolution): img/s per backend at each batch (log y)."""
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    panels = sorted({(r["model"], r["resolution"]) for r in res})
    if not panels:
        raise SystemExit("bench: nothing to plot (no results)")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (model, rr) in zip(axes[0], panels):
        _panel(ax, [r for r in res if r["model"] == model and r["resolution"] == rr],
               f"{model} @ {rr}")
    fig.suptitle(f"{doc.get('device')} · commit {doc.get('commit')} · {doc.get('date')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
