"""Diagnose the CUDA-graph path of `PerExampleGradNorms(cuda_graph=True)` model by model, in one run.

For each tiny model (BERT classifier, Llama LM, Llama + LoRA, GPT-2 with tied embeddings) it reports:

1. `sync`: whether the static norms step makes a host sync, run eagerly under `torch.cuda.set_sync_debug_mode("error")`
   (the first syncing call's stack is printed: a sync inside the step makes capture fail);
2. `graph`: whether capture and replay work, and the largest relative difference to the eager path over three batches
   of one signature (each batch copied into the static buffers, then replayed).

Unlike the pytest test, it goes on after a failure and prints where each one came from, so one GPU run says what to
fix. On a CPU (`--device cpu`) only the eager static step runs (a smoke test of this script).

    python benchmarks/graph_diagnose.py            # on a CUDA machine
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import tiny_bert_config, tiny_gpt2_config, tiny_llama_config  # noqa: E402

from hf_influence.grads import PerExampleGradNorms  # noqa: E402
from hf_influence.grads.graphs import StaticNormsStep  # noqa: E402


def make_batch(vocab: int, batch: int, seq: int, seed: int, task: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(3, vocab, (batch, seq), generator=g).masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if task == "cls":
        out["labels"] = torch.randint(0, 3, (batch,), generator=g)
    else:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, 0] = -100
        out["labels"] = labels
    return out


def build(name: str) -> tuple[torch.nn.Module, int, str]:
    from transformers import BertForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "bert_cls":
        return BertForSequenceClassification(tiny_bert_config()), 97, "cls"
    if name == "llama_lm":
        return LlamaForCausalLM(tiny_llama_config()), 101, "lm"
    if name == "llama_lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(LlamaForCausalLM(tiny_llama_config()),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        return model, 101, "lm"
    if name == "gpt2_tied":
        return GPT2LMHeadModel(tiny_gpt2_config()), 89, "lm"
    raise ValueError(name)


def short_trace(error: BaseException, frames: int = 8) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return "".join(lines[-frames:]).rstrip()


def diagnose(name: str, device: str, batch: int, seq: int) -> dict[str, str]:
    model, vocab, task = build(name)
    model = model.to(device).eval()
    batches = [{k: v.to(device) for k, v in make_batch(vocab, batch, seq, seed, task).items()} for seed in range(4)]
    eager = PerExampleGradNorms(model)
    result = {"model": name, "sync": "-", "graph": "-"}

    # 1. the static step, eagerly, with syncs turned into errors
    probe = PerExampleGradNorms(model, cuda_graph=True)
    probe._graphs.capture = False
    probe(batches[0])  # first batch: eager reference, picks the mask causality
    inputs = {k: v for k, v in batches[1].items() if k != "labels"}
    step = StaticNormsStep(probe.eager_step, inputs, batches[1]["labels"], probe._graphs.causal, capture=False)
    try:
        if device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("error")
        step.step()
        result["sync"] = "none"
    except Exception as error:  # noqa: BLE001 - a diagnosis reports whatever went wrong
        result["sync"] = "SYNC"
        print(f"--- {name}: a host sync inside the static step:\n{short_trace(error, 14)}\n")
    finally:
        if device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("default")

    # 2. capture and replay against the eager path
    if not device.startswith("cuda"):
        return result
    try:
        fast = PerExampleGradNorms(model, cuda_graph=True)
        worst = 0.0
        for b in batches:
            ours, ref = fast(b, squared=True), eager(b, squared=True)
            worst = max(worst, float(((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max()))
        captured = [s for s in fast._graphs.steps.values() if s.graph is not None]
        result["graph"] = f"ok, max rel diff {worst:.1e}, {len(captured)} graph(s)" if captured else "NOT CAPTURED"
    except Exception as error:  # noqa: BLE001
        result["graph"] = f"FAILED: {type(error).__name__}"
        print(f"--- {name}: capture/replay failed:\n{short_trace(error, 14)}\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="bert_cls,llama_lm,llama_lora,gpt2_tied")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=16)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, device {args.device}")
    rows = [diagnose(name, args.device, args.batch_size, args.seq_len) for name in args.models.split(",")]
    print("| model | host sync in the step | capture + replay |\n|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['sync']} | {row['graph']} |")
    bad = [r for r in rows if r["sync"] == "SYNC" or r["graph"].startswith(("FAILED", "NOT"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
