"""Writes gpu_check.sh's summary.json (standard library only: it must work when torch does not).

    python summary.py --out OUT/summary.json --records steps.tsv --planned env,build,... \
        --commit SHA --commit-source file --dirty true --mode gpu --deadline 540 --start EPOCH \
        [--env-json env.json] [--final]

``steps.tsv`` has one line per step done so far: name, rc, seconds, timed_out (0/1), skipped
(0/1), reason, limit_s, note (tab-separated). Planned steps without a line are listed as
"pending" (the run was cut off before them, or is still going). summary.json::

    {"commit", "commit_source", "dirty", "mode", "device", "versions": {...}, "deadline_s",
     "start", "end", "elapsed_s", "finished", "failed": [step, ...],
     "steps": [{"name", "status", "rc", "seconds", "timed_out", "skipped", "reason",
                "limit_s", "note"}, ...]}

status is "ok" (rc 0), "failed", "timed_out" (rc 124 or 137: killed by its timeout),
"skipped" (with the reason) or "pending".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

VERSION_KEYS = ("python", "torch", "cuda", "cudnn", "triton", "nvcc")


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def read_steps(path: str) -> dict[str, dict]:
    steps = {}
    if not os.path.exists(path):
        return steps
    with open(path) as fh:
        for line in fh:
            f = line.rstrip("\n").split("\t")
            if len(f) < 8:
                continue
            name, rc, secs, timed_out, skipped, reason, limit, note = f[:8]
            skipped, timed_out = skipped == "1", timed_out == "1"
            status = ("skipped" if skipped else "timed_out" if timed_out else
                      "ok" if rc == "0" else "failed")
            steps[name] = {"name": name, "status": status,
                           "rc": None if skipped else int(rc), "seconds": float(secs),
                           "timed_out": timed_out, "skipped": skipped,
                           "reason": reason or None,
                           "limit_s": int(limit) if limit.isdigit() else None,
                           "note": note or None}
    return steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("out", "records", "planned", "commit", "commit-source", "dirty", "mode"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--deadline", type=int, required=True)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--env-json")
    p.add_argument("--final", action="store_true")
    a = p.parse_args(argv)
    env = {}
    if a.env_json and os.path.exists(a.env_json):
        try:
            with open(a.env_json) as fh:
                env = json.load(fh)
        except (OSError, ValueError):
            env = {}
    done = read_steps(a.records)
    planned = [s for s in a.planned.split(",") if s]
    steps = [done.get(s, {"name": s, "status": "pending", "rc": None, "seconds": 0.0,
                          "timed_out": False, "skipped": False, "reason": None,
                          "limit_s": None, "note": None}) for s in planned]
    steps += [v for k, v in done.items() if k not in planned]
    now = time.time()
    summary = {
        "commit": a.commit, "commit_source": a.commit_source,
        "dirty": {"true": True, "false": False}.get(a.dirty),
        "mode": a.mode, "device": env.get("device", "unknown"),
        "versions": {k: env.get(k) for k in VERSION_KEYS},
        "deadline_s": a.deadline, "start": _iso(a.start), "end": _iso(now),
        "elapsed_s": round(now - a.start, 1), "finished": a.final,
        "failed": [s["name"] for s in steps if s["status"] in ("failed", "timed_out")],
        "steps": steps,
    }
    tmp = a.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(summary, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
