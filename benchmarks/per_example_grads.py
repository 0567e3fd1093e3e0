"""Per-example gradient norms: time and peak memory of our ghost norms against a plain step, a naive loop and vmap.

Models: the packaged all-MiniLM-L6-v2 (``AutoModelForSequenceClassification``, 3 labels, all parameters trainable)
and a tiny Llama with LoRA adapters (causal LM, adapters trainable). Methods, measured side by side in one run with
interleaved (round-robin) repetitions; medians reported as ratios to the plain step:

- ``plain``: one forward + backward of the summed per-example losses (a training step, eval mode, weight grads).
- ``norms_only``: a ``PerExampleGradNorms`` built once and called per batch, as the scorers do (parameters frozen,
  no weight-gradient products, no ``.grad``).
- ``norms_oneshot``: ``per_example_grad_norms`` (the same, plus building the hook plan on every call).
- ``norms_graph`` (CUDA only): ``PerExampleGradNorms(..., cuda_graph=True)``, the same step replayed as a CUDA graph
  (captured once before timing).
- ``collector``: a plain step wrapped in ``GhostNormCollector`` (in-training GraNd: norms from the training backward).
- ``naive``: one forward + backward per example at batch size 1.
- ``vmap``: ``torch.func.vmap(grad(...))`` over ``functional_call`` (``--vmap-chunk`` examples at a time) + norms.

``tiny_bert`` (a 6-layer BERT of width 32, random weights) run at a small batch (``--batch-size 4 --seq-len 16``) is an
overhead-bound proxy: its compute is negligible, so its ratios measure what each method adds in Python and per-op
dispatch, the regime of a launch-bound GPU step. Each table also gives the number of compute (non-view) aten ops per
call, a hardware-independent count of kernel launches, and of ops that force a device-to-host sync.

Peak memory is the increase over the pre-call level during one call: ``torch.cuda.max_memory_allocated`` on CUDA; on
CPU the process RSS sampled every millisecond in a child process started with ``MALLOC_MMAP_THRESHOLD_=65536`` (so
freed tensors return to the OS and RSS follows live memory; coarser than the CUDA figure). All methods' norms are
cross-checked (max relative difference to norms_only printed).

Usage::

    python benchmarks/per_example_grads.py                       # CPU, batch 32, seq 128, 5 repetitions
    python benchmarks/per_example_grads.py --reps 3 --models minilm
    python benchmarks/per_example_grads.py --device cuda --reps 10
    python benchmarks/per_example_grads.py --models tiny_bert --batch-size 4 --seq-len 16 --reps 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch
from bench_models import minilm_classifier, minilm_path, tiny_bert_classifier

from hf_influence.grads import (
    GhostNormCollector,
    PerExampleGradNorms,
    per_example_grad_norms,
    per_example_losses,
    select_parameters,
)
from hf_influence.grads.core import prepare_batch, scoring_mode
from hf_influence.grads.fallback import fallback_sq_norms
from hf_influence.testing_utils import count_ops


def build_minilm(device: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], str]:
    """The packaged MiniLM as a 3-way classifier (its architecture with random weights where the package is absent;
    exactness is checked against the other methods either way)."""
    from transformers import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    return minilm_classifier(minilm_path()).to(device), {}, "sequence_classification"


def build_tiny_bert(device: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], str]:
    torch.manual_seed(0)
    return tiny_bert_classifier().to(device), {}, "sequence_classification"


def build_llama_lora(device: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], str]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                         pad_token_id=0, tie_word_embeddings=False)
    model = get_peft_model(LlamaForCausalLM(config),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model.to(device), {}, "causal_lm"


BUILDERS = {"minilm": build_minilm, "llama_lora": build_llama_lora, "tiny_bert": build_tiny_bert}


def make_batch(model: torch.nn.Module, task: str, batch_size: int, seq_len: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "sequence_classification":
        batch["token_type_ids"] = torch.zeros_like(ids)
        batch["labels"] = torch.randint(0, 3, (batch_size,), generator=g)
    else:
        batch["labels"] = ids.clone()
    return {k: v.to(device) for k, v in batch.items()}


def plain_step(model, batch, task):
    inputs, labels = prepare_batch(model, batch)
    losses, _ = per_example_losses(model(**inputs).logits, labels, task)
    losses.sum().backward()
    model.zero_grad(set_to_none=True)


def collector_step(model, batch, task):
    inputs, labels = prepare_batch(model, batch)
    with GhostNormCollector(model) as collector:
        losses, _ = per_example_losses(model(**inputs).logits, labels, task)
        losses.sum().backward()
    model.zero_grad(set_to_none=True)
    return collector.squared_norms().sqrt()


def naive_loop(model, batch, task):
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(batch["input_ids"].shape[0]):
        inputs, labels = prepare_batch(model, {k: v[i : i + 1] for k, v in batch.items()})
        loss, _ = per_example_losses(model(**inputs).logits, labels, task)
        grads = torch.autograd.grad(loss.sum(), params)
        out.append(torch.sqrt(sum(g.float().square().sum() for g in grads)))
    return torch.stack(out)


def vmap_norms(model, batch, task, chunk):
    params = select_parameters(model)
    inputs, labels = prepare_batch(model, batch)
    with scoring_mode(model, freeze=True), torch.no_grad():
        losses, _ = per_example_losses(model(**inputs).logits, labels, task)
    with scoring_mode(model, freeze=True):
        return fallback_sq_norms(model, params, inputs, labels, task, losses, chunk_size=chunk).sqrt()


class PeakMemory:
    """Peak increase of CUDA allocated memory, or of the process RSS sampled every millisecond on CPU (bytes)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self._stop = False
            self._max = self.base

            def sample() -> None:
                while not self._stop:
                    self._max = max(self._max, self._rss())
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop = True
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self.base


def build_methods(name: str, args: argparse.Namespace) -> tuple[dict[str, Callable], str, int]:
    model, _, task = BUILDERS[name](args.device)
    model.eval()  # dropout off for every method (the per-example gradients are then well defined)
    batch = make_batch(model, task, args.batch_size, args.seq_len, args.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    grad_norms = PerExampleGradNorms(model, task=task)
    methods: dict[str, Callable] = {
        "plain": lambda: plain_step(model, batch, task),
        "norms_only": lambda: grad_norms(batch),
        "norms_oneshot": lambda: per_example_grad_norms(model, batch, task=task),
        "collector": lambda: collector_step(model, batch, task),
    }
    if args.device.startswith("cuda"):
        try:
            graph_norms = PerExampleGradNorms(model, task=task, cuda_graph=True)
            graph_norms(batch)  # eager reference on the first batch, then capture on the second
            graph_norms(batch)
            methods["norms_graph"] = lambda: graph_norms(batch)
        except Exception as error:  # noqa: BLE001 - report and time the other methods anyway
            print(f"norms_graph left out: {type(error).__name__}: {error} (see benchmarks/graph_diagnose.py)")
    if not args.skip_naive:
        methods["naive"] = lambda: naive_loop(model, batch, task)
    if not args.skip_vmap:
        methods["vmap"] = lambda: vmap_norms(model, batch, task, args.vmap_chunk)
    return methods, task, trainable


def measure_memory(methods: dict[str, Callable], device: str) -> dict[str, int]:
    for fn in methods.values():  # warm-up: lazy allocations and caches
        fn()
    memory = {}
    for method, fn in methods.items():
        with PeakMemory(device) as peak:
            fn()
        memory[method] = peak.peak
    return memory


def memory_in_child(name: str, args: argparse.Namespace) -> dict[str, int]:
    """CPU peak memory measured in a fresh process whose large allocations are mmapped (RSS = live memory)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    argv = [sys.executable, __file__, "--memory-json", "--models", name, "--device", args.device,
            "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--threads", str(args.threads),
            "--vmap-chunk", str(args.vmap_chunk)] + (["--skip-naive"] if args.skip_naive else []) + (
            ["--skip-vmap"] if args.skip_vmap else [])
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_model(name: str, args: argparse.Namespace) -> str:
    methods, task, trainable = build_methods(name, args)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    results = {}
    for method, fn in methods.items():  # warm-up + cross-check of the norms
        value = fn()
        if value is not None:
            results[method] = value.detach().float().cpu()
    reference = results["norms_only"]
    ops = {method: count_ops(fn) for method, fn in methods.items() if method not in ("naive", "vmap")}
    agreement = {m: ((v - reference).abs() / reference).max().item() for m, v in results.items() if m != "norms_only"}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.reps):  # interleaved repetitions
        for method, fn in methods.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[method].append(time.perf_counter() - start)
    memory = measure_memory(methods, args.device) if args.device.startswith("cuda") else memory_in_child(name, args)
    plain_t, plain_m = statistics.median(times["plain"]), max(memory["plain"], 1)
    lines = [
        f"### {name} ({task}, {trainable / 1e6:.2f}M trainable params, batch {args.batch_size}, seq {args.seq_len}, "
        f"{args.device}, {args.reps} reps, {torch.get_num_threads()} threads)",
        "",
        "| method | median time (ms) | x plain fwd+bwd | peak mem increase (MB) | x plain step "
        "| max rel diff vs norms_only | compute ops / call | sync ops / call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        t = statistics.median(times[method])
        diff = "-" if method in ("plain", "norms_only") else f"{agreement.get(method, float('nan')):.1e}"
        compute, syncs = ops.get(method, ("-", "-"))
        lines.append(f"| {method} | {t * 1e3:.2f} | {t / plain_t:.2f} | {memory[method] / 2**20:.1f} | "
                     f"{memory[method] / plain_m:.2f} | {diff} | {compute} | {syncs} |")
    norms_t = statistics.median(times["norms_only"])
    ratios = [f"norms_only is {statistics.median(times[o]) / norms_t:.2f}x faster than {o}"
              for o in ("naive", "vmap") if o in times]
    lines += ["", "; ".join(ratios), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--models", default="minilm,llama_lora", help=f"comma-separated: {', '.join(BUILDERS)}")
    parser.add_argument("--vmap-chunk", type=int, default=8)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-vmap", action="store_true")
    parser.add_argument("--memory-json", action="store_true", help=argparse.SUPPRESS)  # internal: CPU memory child
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    for name in names:
        if name not in BUILDERS:
            raise SystemExit(f"Unknown model {name!r}; choose from {', '.join(BUILDERS)}.")
    if args.memory_json:
        print(json.dumps(measure_memory(build_methods(names[0], args)[0], args.device)))
        return
    for name in names:
        print(run_model(name, args), flush=True)


if __name__ == "__main__":
    main()
