"""Wall-time overhead of ScoringTrainer over a plain transformers.Trainer.

Fine-tunes the packaged all-MiniLM-L6-v2 as a 3-way classifier on SNLI pairs padded to a fixed length, alternating
plain and scoring runs (A, B, A, B, ...) so that drifts of a shared machine hit both alike, and prints the median of
the per-pair time ratios. Each run times the steps after `--warmup` warm-up steps up to the end of `train()`
(so the scoring run's final flush to disk is included).

Commands:

    # CPU (small, a few minutes)
    python benchmarks/trainer_overhead.py --device cpu --steps 8 --reps 5
    # CUDA (the issue's setting: batch 32, seq 128)
    python benchmarks/trainer_overhead.py --device cuda --steps 50 --reps 5 --bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from bench_models import minilm_classifier, minilm_path, tiny_bert_classifier

from hf_influence.testing_utils import OpCounter


def build_dataset(num_rows: int, seq_len: int, tokenizer):
    """SNLI pairs from the shared folder, tokenized and padded to `seq_len`; without the tokenizer or the shared data
    (e.g. on a GPU machine that has neither), random token ids and labels of the same shapes: the timing depends on
    the shapes only."""
    from datasets import Dataset

    from hf_influence.data import add_example_ids
    from hf_influence.paths import shared_data_dir

    rows = []
    try:
        with open(shared_data_dir("snli") / "train.jsonl") as handle:
            for line in handle:
                row = json.loads(line)
                if row["label"] in (0, 1, 2):
                    rows.append(row)
                if len(rows) == num_rows:
                    break
    except FileNotFoundError as error:
        print(f"(shared SNLI not found: {error})", flush=True)
    if tokenizer is None or len(rows) < num_rows:
        print("(using random token ids and labels of the same shapes)", flush=True)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, 30000, (num_rows, seq_len), generator=g)
        return add_example_ids(Dataset.from_dict({
            "input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
            "token_type_ids": torch.zeros_like(ids).tolist(),
            "label": torch.randint(0, 3, (num_rows,), generator=g).tolist()}))
    encoded = tokenizer([r["premise"] for r in rows], [r["hypothesis"] for r in rows], truncation=True,
                        max_length=seq_len, padding="max_length")
    return add_example_ids(Dataset.from_dict({**encoded, "label": [r["label"] for r in rows]}))


class _Timer:
    """Callback recording the time at which warm-up ends."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == timer.warmup:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    timer.start = time.perf_counter()
                    timer.cpu_start = time.process_time()

        self.warmup = warmup
        self.start = None
        self.cpu_start = None
        self.callback = Callback()


def fresh_model(options, model_path) -> torch.nn.Module:
    """MiniLM (`model_path`, or its architecture when None), or with `--model tiny_bert` the overhead-bound proxy."""
    return tiny_bert_classifier() if options.model == "tiny_bert" else minilm_classifier(model_path)


def run_once(scoring: bool, model_path, state_dict, dataset, options) -> tuple[float, float]:
    """Wall time and process CPU time of the timed part of one run."""
    from transformers import Trainer, TrainingArguments

    from hf_influence import ScoringConfig, ScoringTrainer

    model = fresh_model(options, model_path)
    model.load_state_dict(state_dict)
    timer = _Timer(options.warmup)
    with tempfile.TemporaryDirectory() as output_dir:
        common = dict(output_dir=output_dir, per_device_train_batch_size=options.batch_size,
                      max_steps=options.warmup + options.steps, learning_rate=1e-5, report_to=[],
                      save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                      use_cpu=options.device == "cpu", bf16=options.bf16, dataloader_num_workers=0)
        if scoring:
            trainer = ScoringTrainer(model=model, args=ScoringConfig(**common), train_dataset=dataset,
                                     callbacks=[timer.callback])
        else:
            trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=dataset,
                              callbacks=[timer.callback])
        if options.count_ops:
            with OpCounter() as counter:
                trainer.train()
            return counter.compute / trainer.state.global_step, counter.sync / trainer.state.global_step
        trainer.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - timer.start
        cpu = time.process_time() - timer.cpu_start
        if scoring:
            assert len(trainer.signal_store) == (options.warmup + options.steps) * options.batch_size
    return elapsed, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps at the start of each run")
    parser.add_argument("--reps", type=int, default=5, help="number of (plain, scoring) pairs")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--model", choices=["minilm", "tiny_bert"], default="minilm",
                        help="tiny_bert: an overhead-bound proxy (random 6x32 BERT, MiniLM's tokenizer)")
    parser.add_argument("--count-ops", action="store_true",
                        help="instead of timing, count the aten ops (kernel launches) and host syncs per step, once "
                             "for each trainer (the whole train() call, divided by its steps)")
    options = parser.parse_args(argv)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available.")

    from transformers import AutoTokenizer


    model_path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path) if model_path is not None else None
    dataset = build_dataset(options.batch_size * (options.warmup + options.steps), options.seq_len, tokenizer)
    torch.manual_seed(0)
    state_dict = fresh_model(options, model_path).state_dict()

    if options.count_ops:
        plain_ops, plain_syncs = run_once(False, model_path, state_dict, dataset, options)
        scoring_ops, scoring_syncs = run_once(True, model_path, state_dict, dataset, options)
        print(f"model={options.model} batch={options.batch_size} seq={options.seq_len} "
              f"steps={options.warmup + options.steps}")
        print(f"compute ops per step: Trainer {plain_ops:.1f}, ScoringTrainer {scoring_ops:.1f} "
              f"(ratio {scoring_ops / plain_ops:.4f}); host syncs per step: {plain_syncs:.2f} vs {scoring_syncs:.2f}")
        return

    ratios, cpu_ratios, plain_times, scoring_times = [], [], [], []
    for rep in range(options.reps):
        if rep % 2 == 0:  # A,B then B,A: neither trainer always runs first
            plain, plain_cpu = run_once(False, model_path, state_dict, dataset, options)
            scoring, scoring_cpu = run_once(True, model_path, state_dict, dataset, options)
        else:
            scoring, scoring_cpu = run_once(True, model_path, state_dict, dataset, options)
            plain, plain_cpu = run_once(False, model_path, state_dict, dataset, options)
        plain_times.append(plain)
        scoring_times.append(scoring)
        ratios.append(scoring / plain)
        cpu_ratios.append(scoring_cpu / plain_cpu)
        print(f"rep {rep}: plain {plain:.3f}s  scoring {scoring:.3f}s  wall ratio {scoring / plain:.4f}  "
              f"process-CPU ratio {scoring_cpu / plain_cpu:.4f}", flush=True)
    print(f"model={options.model} device={options.device} batch={options.batch_size} seq={options.seq_len} "
          f"steps={options.steps} "
          f"warmup={options.warmup} reps={options.reps} bf16={options.bf16}")
    print(f"median plain {statistics.median(plain_times):.3f}s, "
          f"median scoring {statistics.median(scoring_times):.3f}s")
    print(f"median wall-time ratio (ScoringTrainer / Trainer): {statistics.median(ratios):.4f}")
    # on a shared CPU the process CPU time is less sensitive to other jobs than the wall time
    print(f"median process-CPU-time ratio (ScoringTrainer / Trainer): {statistics.median(cpu_ratios):.4f}")


if __name__ == "__main__":
    main()
