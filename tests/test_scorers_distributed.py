"""Sharded scoring: a scorer called on every rank of a 2-process CPU job (gloo; launched by torchrun, and by
`accelerate launch` with the recipes' 2-process config, the script making an `accelerate.PartialState`) returns, on
every rank, the 1-process scores within 1e-6 (el2n, grand, vog (map and streaming), tracin, influence with each
solver, projected gradients) on uneven shards (23 rows: 12 + 11), shares the datasets cache with 1-process calls, and
the helpers behave as documented."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, random_classification_dataset, run_launched, tiny_bert_config
from datasets import Dataset, load_from_disk

from hf_influence.distributed import World, gather_rows, shard_range
from hf_influence.scorers import get_scorer
from hf_influence.scorers.sharding import cache_exists

N_ROWS = 23  # 12 + 11 rows over two ranks

SCRIPT = textwrap.dedent(
    '''
    import os
    import sys

    import numpy as np
    import torch
    import torch.distributed as dist
    from datasets import Dataset, load_from_disk
    from transformers import BertForSequenceClassification

    sys.path.insert(0, sys.argv[3])  # the tests folder
    from conftest import tiny_bert_config
    from test_influence import TinyNet, collate, per_sample_loss  # the influence tests' network (6 -> 9 -> 9 -> 4)

    from hf_influence.distributed import current_world, shard_range
    from hf_influence.grads import load_projected_gradients, write_projected_gradients
    from hf_influence.scorers import get_scorer
    from hf_influence.scorers.influence import InfluenceScorer

    if sys.argv[4] == "accelerate":  # as a script under `accelerate launch` does: the state sets up the group
        from accelerate import PartialState

        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # no GPU: gloo (as the recipes do)
        PartialState()
    elif "LOCAL_RANK" in os.environ:
        dist.init_process_group("gloo")
    world = current_world()
    out, data_dir = sys.argv[1], sys.argv[2]


    def bert(seed):
        torch.manual_seed(seed)
        return BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1)).eval()


    models = [bert(0), bert(1)]
    dataset = load_from_disk(data_dir)
    results = {"world_size": world.size, "shard_rows": len(shard_range(len(dataset), world))}
    configs = {
        "el2n": ("el2n", dict(model=models)),
        "grand": ("grand", dict(model=models[0])),
        "vog": ("vog", dict(model=models, normalization="class")),
        "vog_stream": ("vog", dict(model=models, normalization=None, stream_checkpoints=True)),
        "tracin": ("tracin", dict(model=models, learning_rates=[0.5, 0.25])),
    }
    for key, (name, kwargs) in configs.items():
        results[key] = np.asarray(get_scorer(name, batch_size=4, **kwargs)(dataset)[name], dtype=np.float64)

    # shard=False: one rank alone scores the whole dataset (not a collective call: the other rank does not join)
    if world.rank == world.size - 1:
        alone = get_scorer("el2n", model=models, batch_size=4, shard=False)
        alone = alone(dataset, keep_in_memory=True, load_from_cache_file=False)  # computed, not read from the cache
        results["el2n_unsharded"] = np.asarray(alone["el2n"], dtype=np.float64)

    # projected gradients: each rank writes its rows into the one shared features.npy
    folder = write_projected_gradients(models[0], dataset, os.path.join(out, "features"), batch_size=4,
                                       dtype="float32")
    results["projected_gradients"] = np.asarray(load_projected_gradients(folder)[0], dtype=np.float64)

    # a second call on every rank is served from the cache the first call wrote (no score_batch call)
    calls = []
    again = get_scorer("el2n", model=models, batch_size=4)
    score_batch = again.score_batch
    again.score_batch = lambda batch: (calls.append(1), score_batch(batch))[1]
    second = again(dataset)
    results["second_call_batches"] = len(calls)
    results["second_call_equal"] = bool(np.array_equal(np.asarray(second["el2n"], dtype=np.float64), results["el2n"]))
    results["second_call_cache_file"] = os.path.basename(second.cache_files[-1]["filename"])


    g = torch.Generator().manual_seed(0)
    table = Dataset.from_dict({"x": torch.randn(len(dataset), 6, generator=g, dtype=torch.float64).tolist(),
                               "y": torch.randint(0, 4, (len(dataset),), generator=g).tolist()})
    torch.manual_seed(0)
    net = TinyNet().double()
    for solver in ("exact", "cg", "lissa"):
        scorer = InfluenceScorer(net, per_sample_loss, collate, scope=r"^(body\\.2|head)\\.weight$", solver=solver,
                                 depth=40, cg_tol=1e-10, hvp_batch_size=5, batch_size=4, progress=False)
        results[f"influence_{solver}"] = np.asarray(scorer(table)["influence"], dtype=np.float64)
        results[f"mean_gradient_{solver}"] = scorer.mean_gradient.numpy()
    np.savez(os.path.join(out, f"rank{world.rank}.npz"), **results)
    print("SCORING FINISHED", flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    '''
)


ACCELERATE_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu_2proc.yaml"


def _launch(tmp_path: Path, name: str, launcher: str) -> list[dict[str, np.ndarray]]:
    """Run the script on its own copy of the saved dataset (its own cache) with `launcher` (`python`, `torchrun` or
    `accelerate`, the last two with 2 processes); the results of every rank."""
    folder = tmp_path / name
    out = folder / "out"
    out.mkdir(parents=True)
    random_classification_dataset(n=N_ROWS).save_to_disk(str(folder / "data"))
    script = folder / "run.py"
    script.write_text(SCRIPT)
    args = [str(script), str(out), str(folder / "data"), str(Path(__file__).parent), launcher]
    processes = 1 if launcher == "python" else 2
    if launcher == "python":
        command = [sys.executable, *args]
    elif launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(free_port()), *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
                   "--main_process_port", str(free_port()), *args]
    run_launched(command, folder, retry_teardown_abort_of=out, finished_marker="SCORING FINISHED")
    if not out.exists():  # emptied by the one retry of a teardown abort; the rerun wrote it again
        raise AssertionError("no results")
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in range(processes)]


@pytest.fixture(scope="module")
def single_process_results(tmp_path_factory):
    (single,) = _launch(tmp_path_factory.mktemp("single"), "single", "python")
    return single


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_scores_equal_one_process_scores(tmp_path, launcher, single_process_results):
    single = single_process_results
    ranks = _launch(tmp_path, "ddp", launcher)
    assert int(single["world_size"]) == 1
    assert [int(r["world_size"]) for r in ranks] == [2, 2]
    assert [int(r["shard_rows"]) for r in ranks] == [12, 11]  # uneven shards
    keys = ["el2n", "grand", "vog", "vog_stream", "tracin", "influence_exact", "influence_cg", "influence_lissa",
            "mean_gradient_exact", "projected_gradients"]
    for key in keys:
        reference = single[key]
        assert np.isfinite(reference).all() and np.ptp(reference) > 0, key  # real, varying scores
        for rank, result in enumerate(ranks):
            error = np.abs(result[key] - reference) / np.maximum(1.0, np.abs(reference))
            assert error.max() <= 1e-6, f"{key} on rank {rank}: {error.max():.2e}"
    error = np.abs(ranks[-1]["el2n_unsharded"] - single["el2n"]) / np.maximum(1.0, np.abs(single["el2n"]))
    assert error.max() <= 1e-6 and "el2n_unsharded" not in ranks[0]
    for result in [single, *ranks]:
        assert int(result["second_call_batches"]) == 0  # a cache hit on every rank
        assert bool(result["second_call_equal"])
        assert str(result["second_call_cache_file"]).startswith("cache-")
    # the cache written by the 2-process job serves a 1-process call in this process (same fingerprint)
    torch.manual_seed(0)
    from transformers import BertForSequenceClassification

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1)).eval())
    scorer = get_scorer("el2n", model=models, batch_size=4)
    scorer.score_batch = lambda batch: pytest.fail("the 2-process cache was not used")
    cached = scorer(load_from_disk(str(tmp_path / "ddp" / "data")))
    np.testing.assert_array_equal(np.asarray(cached["el2n"], dtype=np.float64), ranks[0]["el2n"])


def test_shard_range_is_datasets_contiguous_shard_and_gather_reassembles():
    data = Dataset.from_dict({"i": list(range(N_ROWS))})
    for size in (1, 2, 3, 5, 30):
        covered = []
        for rank in range(size):
            rows = shard_range(N_ROWS, World(rank, size))
            if size <= N_ROWS:  # (datasets refuses empty shards; more ranks than rows leaves some without rows)
                assert list(rows) == data.shard(num_shards=size, index=rank, contiguous=True)["i"]
            covered.extend(rows)
        assert covered == list(range(N_ROWS))
    values = np.arange(N_ROWS, dtype=np.float32) * 2
    np.testing.assert_array_equal(gather_rows(values, range(N_ROWS), N_ROWS, World()), values)
    with pytest.raises(RuntimeError, match="exactly once"):
        gather_rows(values[:5], range(5), N_ROWS, World())


def test_cache_exists_follows_datasets_map(tmp_path):
    random_classification_dataset(n=8).save_to_disk(str(tmp_path / "data"))
    dataset = load_from_disk(str(tmp_path / "data"))
    scorer = get_scorer("el2n", model=_tiny_model(), batch_size=4)
    fingerprint = scorer.fingerprint(dataset)
    assert not cache_exists(dataset, fingerprint, {})
    scorer(dataset, num_proc=2)  # written as _<rank>_of_00002 pieces
    assert cache_exists(dataset, fingerprint, {})
    assert not cache_exists(dataset, fingerprint, {"load_from_cache_file": False})
    assert not cache_exists(dataset, fingerprint, {"keep_in_memory": True})
    in_memory = random_classification_dataset(n=8)
    assert not cache_exists(in_memory, scorer.fingerprint(in_memory), {})
    named = str(tmp_path / "scores.arrow")
    scorer(in_memory, cache_file_name=named)
    assert cache_exists(in_memory, scorer.fingerprint(in_memory), {"cache_file_name": named})


def test_num_gpus_is_checked_and_maps_one_process_per_gpu(monkeypatch):
    dataset = random_classification_dataset(n=10)
    scorer = get_scorer("el2n", model=_tiny_model(), batch_size=4, device="cpu")
    expected = scorer(dataset)["el2n"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="0 CUDA device"):
        scorer(dataset, num_gpus=1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match="CUDA is already initialised"):  # forked workers could not use it
        scorer(dataset, num_gpus=2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="either num_gpus"):
        scorer(dataset, num_gpus=2, num_proc=2)
    with pytest.raises(ValueError, match="positive integer"):
        scorer(dataset, num_gpus=0)
    # two map processes (here on CPU, as the device is pinned), the same scores as one process
    again = get_scorer("el2n", model=_tiny_model(), batch_size=4, device="cpu", column="el2n_gpus")
    np.testing.assert_allclose(again(dataset, num_gpus="all")["el2n_gpus"], expected, rtol=1e-6)


def _tiny_model():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1)).eval()
