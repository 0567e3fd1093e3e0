"""SignalStore memory and summary time at SNLI scale, before and after the dense store (issue 14), side by side.

Workload (defaults): 550,000 examples x 10 epochs of presentations (one chunk per epoch), plus the paper's dense
cadence (the whole training set every 50 steps for 2 epochs at batch 128: 172 evaluations, 94.6 million dense rows,
one chunk per evaluation). Each example has its own chance of being correct, so forgetting events happen.

For each implementation (`before` = `hf_influence/store.py` at `--baseline`, by default the commit this branch started
from; `after` = this working tree), two fresh processes are timed:

- `record`: a writing store (`SignalStore(path, write=True)`) appends every chunk, as `ScoringTrainer` does while
  training ("appends only": time and peak memory up to here); then `store.summary()` (the summary at the end of
  training, in the same process);
- `summary`: `SignalStore.load(path).summary()` on the folder written by `record` (the analysis afterwards).

Each prints its wall time and peak resident memory (`ru_maxrss`); the summaries of both implementations are compared
(`forgetting` equal, other columns to 1e-9). Command (the figures in benchmarks/RESULTS.md):

    OMP_NUM_THREADS=1 python benchmarks/store_scale.py
    OMP_NUM_THREADS=1 python benchmarks/store_scale.py --evals 22   # 1/8 of the dense cadence
    OMP_NUM_THREADS=1 python benchmarks/store_scale.py --evals 43   # 1/4
    OMP_NUM_THREADS=1 python benchmarks/store_scale.py --impls after  # full cadence: the 'before' store needs ~20 GB
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def load_store_module(which: str, baseline_file: str | None):
    """`hf_influence.store` of this tree (`after`) or the baseline file (`before`, imported under another name)."""
    if which == "after":
        import hf_influence.store as module

        return module
    spec = importlib.util.spec_from_file_location("hf_influence._baseline_store", baseline_file)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "hf_influence"  # its `from .signals import ...` resolves to this tree's signals
    spec.loader.exec_module(module)
    return module


def chunks(examples: int, epochs: int, evals: int, seed: int = 0):
    """(kind, frame) in recording order: each epoch's presentations, then the dense evaluations of that epoch."""
    rng = np.random.default_rng(seed)
    ids = np.arange(examples, dtype=np.int64)
    skill = rng.random(examples)  # per-example probability of being correct
    steps_per_epoch = -(-examples // 128)
    eval_steps = [50 * k for k in range(1, evals + 1)]
    for epoch in range(epochs):
        order = rng.permutation(examples)
        step = epoch * steps_per_epoch + np.arange(examples) // 128  # position in the shuffled epoch
        frame = pd.DataFrame({"example_id": ids[order], "epoch": epoch, "step": step})
        frame["correct"] = (rng.random(examples) < skill[order]).astype(np.float32)
        for name in ("prob_gold", "margin", "loss", "el2n", "entropy"):
            frame[name] = rng.random(examples, dtype=np.float32)
        yield "presentations", frame
        for step in [s for s in eval_steps if epoch * steps_per_epoch < s <= (epoch + 1) * steps_per_epoch]:
            dense = pd.DataFrame({"example_id": ids, "epoch": epoch, "step": step})
            dense["correct"] = (rng.random(examples) < skill).astype(np.float32)
            for name in ("prob_gold", "margin", "loss", "el2n", "entropy"):
                dense[name] = rng.random(examples, dtype=np.float32)
            yield "dense", dense


def worker(args) -> None:
    store_module = load_store_module(args.impl, args.baseline_file)
    start = time.perf_counter()
    if args.phase == "record":
        store = store_module.SignalStore(args.path, {"num_examples": args.examples})
        store.initialize()
        dense_rows = 0
        for kind, frame in chunks(args.examples, args.epochs, args.evals):
            store.append(frame, kind)
            dense_rows += len(frame) if kind == "dense" else 0
        recorded = time.perf_counter() - start
        recording_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary = store.summary()
        result = {"record_s": recorded, "record_peak_rss_mb": recording_rss, "dense_rows": dense_rows}
    else:
        store = store_module.SignalStore.load(args.path)
        summary = store.summary()
        result = {}
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary.to_parquet(args.out)
    print("RESULT " + json.dumps(result), flush=True)


def run(args, impl: str, phase: str, path: str, out: str) -> dict:
    command = [sys.executable, __file__, "--worker", impl, phase, "--path", path, "--out", out,
               "--examples", str(args.examples), "--epochs", str(args.epochs), "--evals", str(args.evals)]
    if args.baseline_file:
        command += ["--baseline_file", args.baseline_file]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=550_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--evals", type=int, default=172, help="dense evaluations (every 50 steps)")
    parser.add_argument("--baseline", default=None, help="git revision of the 'before' store.py (default: the "
                        "merge base of HEAD and main)")
    parser.add_argument("--impls", nargs="+", default=["before", "after"], choices=["before", "after"],
                        help="which implementations to run (the 'before' store needs about 20 GB at full scale)")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--baseline_file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.impl, args.phase = args.worker
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="store_scale_") as tmp:
        revision = args.baseline or subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, text=True,
                                                   capture_output=True, check=True).stdout.strip()
        args.baseline_file = os.path.join(tmp, "baseline_store.py")
        source = subprocess.run(["git", "show", f"{revision}:hf_influence/store.py"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout
        Path(args.baseline_file).write_text(source)
        print(f"{args.examples} examples x {args.epochs} epochs, {args.evals} dense evaluations "
              f"({args.examples * args.evals / 1e6:.1f} M dense rows); before = store.py at {revision[:10]}, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        results, summaries = {}, {}
        for impl in args.impls:
            path = os.path.join(tmp, f"store_{impl}")
            for phase in ("record", "summary"):
                out = os.path.join(tmp, f"{impl}_{phase}.parquet")
                results[impl, phase] = run(args, impl, phase, path, out)
                print(f"  {impl:6s} {phase:7s} {results[impl, phase]}", flush=True)
                if os.path.exists(out):
                    summaries[impl, phase] = pd.read_parquet(out)
        print("\n| phase | before: time (s) | before: peak RSS (MB) | after: time (s) | after: peak RSS (MB) | "
              "memory before/after |")
        print("|---|---|---|---|---|---|")
        b, a = results.get(("before", "record"), {}), results.get(("after", "record"), {})
        if "record_s" in b and "record_s" in a:
            print(f"| appends only (training) | {b['record_s']:.1f} | {b['record_peak_rss_mb']:.0f} | "
                  f"{a['record_s']:.1f} | {a['record_peak_rss_mb']:.0f} | "
                  f"{b['record_peak_rss_mb'] / a['record_peak_rss_mb']:.1f}x |")
        for phase in ("record", "summary"):
            b, a = results.get(("before", phase), {"error": "not run"}), results.get(("after", phase), {"error": "-"})
            if "error" in b or "error" in a:
                print(f"| {phase} | {b} | | {a} | | |")
                continue
            print(f"| {phase} | {b['seconds']:.1f} | {b['peak_rss_mb']:.0f} | {a['seconds']:.1f} | "
                  f"{a['peak_rss_mb']:.0f} | {b['peak_rss_mb'] / a['peak_rss_mb']:.1f}x |")
        reference = summaries.get(("before", "summary"))
        for key, summary in summaries.items():
            if reference is None or key == ("before", "summary"):
                continue
            same_forgetting = summary["forgetting"].equals(reference["forgetting"])
            other = summary.drop(columns="forgetting").sub(reference.drop(columns="forgetting")).abs().max().max()
            print(f"summary {key[0]}/{key[1]} vs before/summary: forgetting equal: {same_forgetting}, "
                  f"other columns max |diff| {other:.1e}")


if __name__ == "__main__":
    main()
