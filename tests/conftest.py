"""Shared fixtures: tiny random models (BERT-, Llama- and GPT-2-like), the packaged MiniLM, the shared data folder."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from hf_influence.testing_utils import SYNC_OPS, count_ops

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_bert_config(num_labels: int = 3, vocab_size: int = 97, **kwargs):
    from transformers import BertConfig

    defaults = dict(
        vocab_size=vocab_size,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=40,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        pad_token_id=0,
    )
    defaults.update(kwargs)
    return BertConfig(**defaults)


def tiny_llama_config(vocab_size: int = 101, **kwargs):
    from transformers import LlamaConfig

    defaults = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    defaults.update(kwargs)
    return LlamaConfig(**defaults)


def tiny_gpt2_config(vocab_size: int = 89, **kwargs):
    from transformers import GPT2Config

    defaults = dict(
        vocab_size=vocab_size,
        n_embd=24,
        n_layer=2,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    defaults.update(kwargs)
    return GPT2Config(**defaults)


@pytest.fixture
def tiny_bert_classifier():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def tiny_llama_lm():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture
def tiny_gpt2_lm():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_gpt2_config()).eval()


def random_classification_dataset(n: int = 22, num_labels: int = 3, vocab_size: int = 97, seed: int = 0,
                                  min_len: int = 3, max_len: int = 12):
    """A datasets.Dataset of random token sequences of mixed lengths with labels (and no ids)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "label": []}
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        rows["input_ids"].append(torch.randint(3, vocab_size, (length,), generator=g).tolist())
        rows["label"].append(int(torch.randint(0, num_labels, (1,), generator=g)))
    return Dataset.from_dict(rows)


@pytest.fixture(scope="session")
def shared_dir():
    from hf_influence.paths import shared_dir as _shared_dir

    return _shared_dir()


@pytest.fixture(scope="session")
def minilm_path():
    from hf_influence.paths import packaged_minilm_path

    return packaged_minilm_path()


@pytest.fixture(scope="session")
def smollm2_tokenizer(request):
    """The real SmolLM2-135M-Instruct tokenizer from the packaged GGUF (loading it from GGUF takes ~5-12 s).

    The first load converts it from the GGUF file; a copy saved in pytest's cache folder (keyed by the GGUF file's size
    and mtime) makes later sessions load in well under a second.
    """
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    from hf_influence.paths import packaged_smollm2_gguf

    path = packaged_smollm2_gguf()
    stat = path.stat()
    if getattr(request.config, "cache", None) is None:  # cache provider disabled (-p no:cacheprovider)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    cache = request.config.cache.mkdir(f"smollm2_tokenizer_{stat.st_size}_{int(stat.st_mtime)}")
    if (cache / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cache)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    staging = tempfile.mkdtemp(dir=cache.parent)
    tokenizer.save_pretrained(staging)
    # publish file by file, tokenizer_config.json (the marker checked above) last; concurrent sessions write the same
    for name in sorted(os.listdir(staging), key=lambda n: n == "tokenizer_config.json"):
        os.replace(os.path.join(staging, name), cache / name)
    shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def hand_signals(logits: torch.Tensor, gold: int) -> dict[str, float]:
    """One prediction's signals from their definitions, in float64 (independent of hf_influence.signals)."""
    z = logits.double()
    p = torch.softmax(z, -1)
    others = torch.cat([z[:gold], z[gold + 1 :]])
    onehot = torch.zeros_like(p)
    onehot[gold] = 1
    return {
        "loss": float(F.cross_entropy(z[None], torch.tensor([gold]))),
        "prob_gold": float(p[gold]),
        "margin": float(z[gold] - others.max()) if len(others) else math.inf,
        "correct": float(int(z.argmax()) == gold),
        "el2n": float(torch.linalg.vector_norm(p - onehot)),
        "entropy": float(-sum(pk * math.log(pk) for pk in p.tolist() if pk > 0)),
    }


def count_sync_ops(fn, ops=SYNC_OPS) -> int:
    """Number of aten ops whose result needs a device-to-host copy (on a GPU they stall the launch queue)."""
    return count_ops(fn, sync_ops=ops)[1]


#: What a gloo rank prints when a C++ worker thread is torn down at interpreter exit, after the script has finished
#: (seen about once in 30 launches on 2 CPU cores, torch 2.13; upstream: pytorch/pytorch#190489, #179291).
TEARDOWN_ABORT = "terminate called without an active exception"


def run_launched(command, cwd, retry_teardown_abort_of=None, finished_marker: str = "train_runtime"):
    """Run a (multi-process) `command` in `cwd` with one thread per process. With `retry_teardown_abort_of` (the
    run's output folder), a run whose failure is the upstream gloo teardown abort after the script had finished (it
    printed `finished_marker`) is launched once more on an emptied folder; any other failure, or the same one twice,
    fails the test."""
    import shutil
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    if (retry_teardown_abort_of is not None and result.returncode != 0 and TEARDOWN_ABORT in output
            and finished_marker in output):
        shutil.rmtree(retry_teardown_abort_of, ignore_errors=True)
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def free_port() -> int:
    """A free local TCP port for a rendezvous."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def eager_graph_steps(monkeypatch) -> None:
    """Make every `NormsGraphCache` created from now on (in this test) run its static steps eagerly instead of
    capturing CUDA graphs (`capture=False`), so that `cuda_graph=True` code paths run without a GPU."""
    from hf_influence.grads.graphs import NormsGraphCache

    original = NormsGraphCache.__init__

    def without_capture(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "capture": False})

    monkeypatch.setattr(NormsGraphCache, "__init__", without_capture)
