"""Scoring wall time with 1 vs 2 processes (one thread each), side by side: the sharded scorers of issue 14.

Each scorer is called on an in-memory dataset (no `datasets` cache) of random token sequences by a small random BERT
classifier, once by a plain `python` process and once by every rank of a 2-process `torch.distributed.run` job
(gloo, CPU). A timed call starts and ends at a barrier, so it includes the gather of the column. The runs alternate
(1, 2, 1, 2, ...) so that the load of a shared machine hits both alike; the table gives the median time of each, the
speed-up (1-process time / 2-process time) of the medians and the median of the per-pair speed-ups. The scores of
both are compared (max relative difference).

Command (the figures in benchmarks/RESULTS.md):

    OMP_NUM_THREADS=1 python benchmarks/distributed_scoring.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCORERS = ("el2n", "grand", "vog", "tracin", "influence")


def build(args):
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=2000, hidden_size=args.hidden, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=4 * args.hidden, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(BertForSequenceClassification(config).eval())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 2000, (args.rows, args.seq_len), generator=g)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "label": torch.randint(0, 3, (args.rows,),
                                                                                   generator=g).tolist()})
    return models, dataset


def per_sample_loss(model, batch):
    import torch

    logits = model(input_ids=batch["input_ids"]).logits
    return torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")


def collate(rows):
    import torch

    return {"input_ids": torch.tensor([r["input_ids"] for r in rows]),
            "labels": torch.tensor([r["label"] for r in rows])}


def make_scorer(name, models, args):
    from hf_influence.scorers import get_scorer
    from hf_influence.scorers.influence import InfluenceScorer

    if name == "influence":  # mean gradient + exact Hessian of the classifier weight (3 x hidden), then J u
        return InfluenceScorer(models[0], per_sample_loss, collate, scope=r"^classifier\.weight$", solver="exact",
                               batch_size=args.batch_size, hvp_batch_size=args.batch_size, progress=False)
    kwargs = {"el2n": dict(model=models[:2]), "grand": dict(model=models[0]),
              "vog": dict(model=models, normalization="class"),
              "tracin": dict(model=models[:2], learning_rates=1.0)}[name]
    return get_scorer(name, batch_size=args.batch_size, **kwargs)


def worker(args) -> None:
    import torch.distributed as dist

    from hf_influence.distributed import barrier, current_world

    if "LOCAL_RANK" in os.environ:
        dist.init_process_group("gloo")
    world = current_world()
    models, dataset = build(args)
    result = {"world_size": world.size}
    for name in SCORERS:
        scorer = make_scorer(name, models, args)
        barrier(world)
        start = time.perf_counter()
        scored = scorer(dataset)
        barrier(world)
        result[name] = {"seconds": time.perf_counter() - start, "scores": list(map(float, scored[scorer.column]))}
    if world.is_main:
        Path(args.out).write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(args, processes: int, out: str) -> dict:
    script = [__file__, "--worker", "--out", out, "--rows", str(args.rows), "--seq_len", str(args.seq_len),
              "--hidden", str(args.hidden), "--batch_size", str(args.batch_size)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(29500 + os.getpid() % 1000), *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 and not os.path.exists(out):
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{args.rows} rows x {args.seq_len} tokens, BERT hidden {args.hidden} x 2 layers, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, one thread per process, load average {os.getloadavg()[0]:.1f}", flush=True)
    times = {1: {name: [] for name in SCORERS}, 2: {name: [] for name in SCORERS}}
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for processes in (1, 2):
                result = launch(args, processes, os.path.join(tmp, f"{processes}_{rep}.json"))
                assert result["world_size"] == processes, result["world_size"]
                for name in SCORERS:
                    times[processes][name].append(result[name]["seconds"])
                    scores[processes, name] = np.asarray(result[name]["scores"])
                print(f"  rep {rep}: {processes} process(es): "
                      + ", ".join(f"{n} {result[n]['seconds']:.1f}s" for n in SCORERS), flush=True)
    print("\n| scorer | 1 process (s) | 2 processes (s) | speed-up (medians) | speed-up (median of pairs) | "
          "max rel. diff of scores |")
    print("|---|---|---|---|---|---|")
    for name in SCORERS:
        one, two = statistics.median(times[1][name]), statistics.median(times[2][name])
        paired = statistics.median(a / b for a, b in zip(times[1][name], times[2][name]))
        a, b = scores[1, name], scores[2, name]
        diff = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))
        print(f"| {name} | {one:.2f} | {two:.2f} | {one / two:.2f}x | {paired:.2f}x | {diff:.1e} |")
    print(f"(load average at the end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
