"""2-process CPU data parallel run (gloo): the same set of (example_id, epoch) records as a 1-process run, each once,
although DDP's even_batches repeats samples to fill the last batch (22 examples, 2 x batch 4), with the same signals
and per-example gradient norms."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, run_launched

SCRIPT = textwrap.dedent(
    '''
    import sys

    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from hf_influence import ScoringConfig, ScoringTrainer, add_example_ids


    def collate(features):
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, : len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["label"] for f in features])}


    g = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "label": []}
    for _ in range(22):
        rows["input_ids"].append(torch.randint(3, 97, (int(torch.randint(3, 12, (1,), generator=g)),),
                                               generator=g).tolist())
        rows["label"].append(int(torch.randint(0, 3, (1,), generator=g)))
    dataset = add_example_ids(Dataset.from_dict(rows))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=97, hidden_size=24, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    args = ScoringConfig(output_dir=sys.argv[1], per_device_train_batch_size=4, num_train_epochs=2,
                         learning_rate=0.0, report_to=[], logging_strategy="no", save_strategy="steps", save_steps=2,
                         use_cpu=True, disable_tqdm=True, dense_eval_steps=2, record_grad_norm=True)
    trainer = ScoringTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    trainer.train()
    if trainer.is_world_process_zero():
        trainer.signal_store.records().to_csv(sys.argv[1] + "/records.csv", index=False)
        trainer.signal_store.dense_records().to_csv(sys.argv[1] + "/dense.csv", index=False)
    if torch.distributed.is_initialized():  # tear down gloo before exit (an abrupt exit can abort a rank)
        import gc

        del trainer, model  # DDP's reducer holds the group and its last work objects: release them while Python lives
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    '''
)


ACCELERATE_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu_2proc.yaml"


@pytest.fixture(scope="module")
def single_process_records(tmp_path_factory):
    """The 1-process reference run (shared by both launchers)."""
    folder = tmp_path_factory.mktemp("single")
    script = folder / "run.py"
    script.write_text(SCRIPT)
    run_launched([sys.executable, str(script), str(folder / "out")], folder)
    return pd.read_csv(folder / "out" / "records.csv")


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_record_each_example_once_per_epoch(tmp_path, launcher, single_process_records):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    port = free_port()
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    else:  # `accelerate launch` with the recipes' 2-process CPU config (torchrun launcher, gloo on CPU)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
                   "--main_process_port", str(port)]
    run_launched([*command, str(script), str(tmp_path / "ddp")], tmp_path, retry_teardown_abort_of=tmp_path / "ddp")
    from hf_influence.store import SignalStore

    assert SignalStore.load(tmp_path / "ddp" / "signals").metadata["config"]["world_size"] == 2
    single = single_process_records
    ddp = pd.read_csv(tmp_path / "ddp" / "records.csv")
    key = ["example_id", "epoch"]
    assert not ddp.duplicated(key).any(), "a sample repeated by even_batches was recorded twice"
    assert sorted(map(tuple, ddp[key].to_numpy())) == sorted(map(tuple, single[key].to_numpy()))
    assert sorted(map(tuple, single[key].to_numpy())) == [(i, e) for i in range(22) for e in range(2)]
    # learning_rate=0: each example's signals are the same whichever process saw it
    merged = single.merge(ddp, on=key, suffixes=("_1", "_2"))
    assert (merged["loss_1"] - merged["loss_2"]).abs().max() < 1e-5
    # ... and so are their own-loss gradient norms (DDP's per-process loss scaling is read off the loss itself)
    assert merged["grad_norm_1"].notna().all() and merged["grad_norm_2"].notna().all()
    assert ((merged["grad_norm_1"] - merged["grad_norm_2"]).abs() / merged["grad_norm_1"]).max() < 1e-4
    # dense evaluations: every example once per evaluation (2 processes x batch 4 = 3 steps per epoch)
    dense = pd.read_csv(tmp_path / "ddp" / "dense.csv")
    assert not dense.duplicated(["example_id", "step"]).any()
    assert (dense.groupby("step").example_id.nunique() == 22).all()
