"""Summarise a pytest-benchmark JSON of these suites as a Markdown table.

    python benchmarks/summarize.py out.json [--baseline eager_nchw] [--impl ours_cpu]

One row per group (op × shape × batch × dtype): the median of every implementation (ms), the
GB/s and % of copy bandwidth of ``--impl``, and its speedup over ``--baseline``; at the end the
geometric mean of that speedup over all groups that have both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def summarize(doc: dict, impl: str, baseline: str) -> str:
    groups: dict[str, dict[str, dict]] = {}
    for b in doc["benchmarks"]:
        info = b.get("extra_info", {})
        groups.setdefault(b["group"] or b["name"], {})[info.get("impl", b["name"])] = {
            "ms": b["stats"]["median"] * 1e3, **info}
    impls = []
    for g in groups.values():
        impls += [i for i in g if i not in impls]
    rows = [(f"| group | {' | '.join(f'{i} ms' for i in impls)} | {impl} GB/s | "
            f"{impl} % copy BW | {impl} / {baseline} |"),
            "|---|" + "---|" * (len(impls) + 3)]
    ratios = []
    for name, g in groups.items():
        cells = [f"{g[i]['ms']:.3f}" if i in g else "-" for i in impls]
        ours, base = g.get(impl), g.get(baseline)
        sp = base["ms"] / ours["ms"] if ours and base else None
        if sp:
            ratios.append(sp)
        gbps = f"{ours['gbps']:.1f}" if ours and ours.get("gbps") else "-"
        pct = f"{ours['pct_copy_bw']:.1f}" if ours and ours.get("pct_copy_bw") else "-"
        spc = f"{sp:.2f}×" if sp else "-"
        rows.append(f"| {name} | {' | '.join(cells)} | {gbps} | {pct} | {spc} |")
    if ratios:
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        rows.append(f"\ngeomean {impl} speedup over {baseline}: {geo:.2f}× ({len(ratios)} groups)")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json")
    p.add_argument("--impl", default="ours_cpu")
    p.add_argument("--baseline", default="eager_nchw")
    p.add_argument("--filter", default="", help="only groups containing this text")
    a = p.parse_args(argv)
    with open(a.json) as f:
        doc = json.load(f)
    doc["benchmarks"] = [b for b in doc["benchmarks"] if a.filter in (b["group"] or "")]
    print(summarize(doc, a.impl, a.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
