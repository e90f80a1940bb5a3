"""Run the benchmark suite: ``python -m benchmarks [--quick] [--only W1,W5]``.

Writes benchmarks/RESULTS.md, benchmarks/results.json and benchmarks/w1_scaling.png
(full runs only, unless --out is given)."""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from pathlib import Path

from benchmarks.common import Recorder

WORKLOADS = {
    "W1": "benchmarks.w1_commit",
    "W2": "benchmarks.w2_open_old",
    "W3": "benchmarks.w34_throughput",
    "W5": "benchmarks.w5_dedupe",
    "W6": "benchmarks.w6_log",
    "W7": "benchmarks.w7_history",
}
HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute; for CI")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W5")
    parser.add_argument(
        "--out", type=Path, help="folder for RESULTS.md etc. (default: benchmarks/ on full runs)"
    )
    args = parser.parse_args()
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    only = ["W3" if w == "W4" else w for w in only]  # W3 and W4 run together
    rec = Recorder()
    t0 = time.perf_counter()
    failed = []
    for name in only:
        print(f"== {name}", flush=True)
        try:
            importlib.import_module(WORKLOADS[name]).run(rec, args.quick)
        except Exception:  # report it, and run the other workloads
            traceback.print_exc()
            failed.append(name)
    elapsed = time.perf_counter() - t0
    from benchmarks.report import evaluate, write_report

    verdicts = evaluate(rec)
    for v in verdicts:
        print(f"{'PASS' if v.passed else 'FAIL'}  {v.text}")
    out = args.out or (None if args.quick else HERE)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_report(rec, verdicts, out, quick=args.quick, elapsed=elapsed)
        (out / "results.json").write_text(json.dumps([r.to_json() for r in rec.results], indent=1))
    print(f"finished in {elapsed:.0f} s")
    if failed:
        raise SystemExit(f"workloads that crashed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
