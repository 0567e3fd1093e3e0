"""Projected per-example gradient features (LoGra-style Kronecker projection), for influence and similarity queries.

For a Linear layer with per-example weight gradient `G_i = sum_t b_it a_it^T` (`p x d`), the feature is
`P_out^T G_i P_in = sum_t (P_out^T b_it)(P_in^T a_it)^T` (`k_out x k_in`), computed from the projected layer inputs
and projected output gradients without ever forming `G_i` (Choe et al. 2024, arXiv:2405.13954, "What is Your Data
Worth to GPT?"). A selected bias is folded in by appending a constant 1 to the inputs (`d + 1` rows of `P_in`).
`P_in` and `P_out` are Gaussian with variance `1/k`, seeded from `seed` and the layer name, so features are
reproducible and comparable across checkpoints and machines. Features of all projected layers are concatenated in
model order.

Covered: `nn.Linear` and HF `Conv1D` layers holding selected parameters (LoRA factors included). Other selected
parameters (embeddings, norms, tied weights, modules without a rule) are skipped with a one-time log line.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging

from ..data import EXAMPLE_ID_COLUMN
from ..distributed import World, barrier, broadcast_object, current_world, shard_range
from ..fingerprints import dataset_fingerprint, model_fingerprint
from ..store import atomic_write_bytes
from .core import ParamSpec, collate_for_gradients, scoring_mode, select_parameters
from .hooks import HookEngine, run_frozen_backward
from .layers import HookedLayer, LinearRule, build_plan

logger = logging.get_logger(__name__)


class GradientProjector:
    """Seeded per-layer projections `P_in` (`(d [+1]) x k_in`) and `P_out` (`p x k_out`) for selected Linear layers.

    Args:
        model (`nn.Module`): the model (only its structure and shapes are used; any checkpoint of the same
            architecture gets the same projections).
        params (`None`, `str` or iterable, *optional*): parameter selection as in `per_example_grad_norms`.
        k_in (`int`, defaults to 16), k_out (`int`, defaults to 16): projected sizes per layer (capped at the layer's
            own sizes).
        seed (`int`, defaults to 0): base seed; each layer's generator is seeded with `seed` and a CRC of its name.

    Attributes:
        feature_dim (`int`): total feature size; `layers`: list of dicts (name, d_in, d_out, k_in, k_out, offset).

    Raises:
        ValueError: if no selected parameter lives in a Linear/Conv1D layer.
    """

    def __init__(self, model: nn.Module, params: ParamSpec = None, *, k_in: int = 16, k_out: int = 16,
                 seed: int = 0) -> None:
        if k_in < 1 or k_out < 1:
            raise ValueError(f"k_in and k_out must be positive, got {k_in} and {k_out}.")
        self.params, self.k_in, self.k_out, self.seed = params, k_in, k_out, seed
        layers, fallback, _ = build_plan(model, select_parameters(model, params))
        projected = [lay for lay in layers if isinstance(lay.rule, LinearRule) and lay.tied is None]
        skipped = [lay.name for lay in layers if lay not in projected] + list(fallback)
        if skipped:  # once per message: a run over several checkpoints of one architecture says it once
            logger.warning_once(
                f"Projected gradients cover Linear/Conv1D layers only; skipping {len(skipped)} selected "
                f"parameter groups ({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''})."
            )
        if not projected:
            raise ValueError(
                "No selected parameter lives in an nn.Linear or Conv1D layer, so there is nothing to project. Select "
                "Linear weights with params=<regex> (e.g. r'attention|mlp|lora_')."
            )
        self.model_layers: list[HookedLayer] = projected
        self.layers: list[dict[str, Any]] = []
        self.matrices: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_copies: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        offset = 0
        for layer in projected:
            d, p = layer.rule.in_out_features(layer.module)
            d_in = (d if layer.weight else 0) + (1 if layer.bias else 0)
            ki, ko = min(k_in, d_in), min(k_out, p)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(layer.name.encode()))
            p_in = torch.randn(d_in, ki, generator=generator) / ki**0.5
            p_out = torch.randn(p, ko, generator=generator) / ko**0.5
            self.matrices[layer.name] = (p_in, p_out)
            self.layers.append(dict(name=layer.name, d_in=d_in, d_out=p, k_in=ki, k_out=ko, offset=offset))
            offset += ki * ko
        self.feature_dim = offset

    def matrices_on(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(P_in, P_out)` of layer `name` on `device`, copied there once and kept (not once per batch)."""
        key = (name, str(device))
        cached = self._device_copies.get(key)
        if cached is None:
            cached = self._device_copies[key] = tuple(m.to(device) for m in self.matrices[name])
        return cached

    def config_dict(self) -> dict[str, Any]:
        return {"params": self.params if isinstance(self.params, (str, type(None))) else sorted(map(str, self.params)),
                "k_in": self.k_in, "k_out": self.k_out, "seed": self.seed, "feature_dim": self.feature_dim,
                "layers": self.layers}


class ProjectionEngine(HookEngine):
    """The hook engine's consumer that writes each example's projected layer gradients into `features`
    `[B, projector.feature_dim]` (norms-only mode: frozen parameters, activation backward only)."""

    def __init__(self, model: nn.Module, projector: GradientProjector) -> None:
        self.projector = projector
        self._info = {info["name"]: info for info in projector.layers}
        super().__init__(model, projector.model_layers, frozen=True)

    def clear_batch(self) -> None:
        self.features: torch.Tensor | None = None

    def consume(self, layer: HookedLayer, x: torch.Tensor, grad: torch.Tensor) -> None:
        batch = grad.shape[0]
        p_in, p_out = self.projector.matrices_on(layer.name, grad.device)
        a = x.reshape(batch, -1, x.shape[-1]).float()
        b = grad.reshape(batch, -1, grad.shape[-1]).float()
        projected_in = torch.zeros(*a.shape[:2], p_in.shape[1], device=a.device)
        if layer.weight:
            projected_in = projected_in + a @ p_in[: a.shape[-1]]
        if layer.bias:
            projected_in = projected_in + p_in[-1]
        feature = torch.bmm((b @ p_out).transpose(1, 2), projected_in)  # [B, k_out, k_in]
        if self.features is None:
            self.features = torch.zeros(batch, self.projector.feature_dim, device=grad.device)
        info = self._info[layer.name]
        self.features[:, info["offset"] : info["offset"] + info["k_in"] * info["k_out"]] = feature.reshape(batch, -1)


def projected_gradients(
    model: nn.Module, batch: Mapping[str, Any], projector: GradientProjector, *, task: str = "auto"
) -> torch.Tensor:
    """Projected per-example loss gradients `[B, projector.feature_dim]` (float32) from one batched backward.

    Same loss, eval mode and frozen parameters as `per_example_grad_norms`; rows of examples without label tokens
    (causal LM) are NaN.

    Example:
        ```python
        >>> projector = GradientProjector(model, params=r"lora_", k_in=16, k_out=16, seed=0)
        >>> features = projected_gradients(model, batch, projector)  # [B, projector.feature_dim]
        ```
    """
    engine = ProjectionEngine(model, projector)
    with scoring_mode(model, freeze=True):
        _, labels, losses, valid, _ = run_frozen_backward(model, batch, engine, task)
    features = engine.features
    if features is None:
        features = torch.zeros(labels.shape[0], projector.feature_dim, device=losses.device)
    return features.masked_fill(~valid.unsqueeze(1), float("nan"))


#: Written after every batch while `write_projected_gradients` runs; removed when the folder is complete.
PROGRESS_FILE = "progress.json"


def write_projected_gradients(
    model: nn.Module,
    dataset: Any,
    path: str | os.PathLike,
    *,
    projector: GradientProjector | None = None,
    params: ParamSpec = None,
    k_in: int = 16,
    k_out: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    dtype: str = "float16",
    task: str = "auto",
    tokenizer: Any = None,
    pad_token_id: int | None = None,
    label_column: str = "label",
    example_id_column: str = EXAMPLE_ID_COLUMN,
    resume: bool = True,
    shard: bool | None = None,
) -> Path:
    """Write projected per-example gradients of a tokenized dataset to `path/features.npy` in chunks, with metadata.

    Files: `features.npy` (a `.npy` memmap `[N, feature_dim]` in `dtype`, written batch by batch so memory stays one
    batch), `example_ids.npy` (int64, the `example_id_column` or row positions when absent) and `meta.json`
    (projector configuration, layer offsets, dtype, task, number of rows, and the signature of the run). Load with
    `load_projected_gradients`.

    Nothing is lost on a crash: after every batch the rows written so far are flushed and counted in
    `progress.json`. Called again on the same folder with the same model weights, dataset, projector, dtype, task
    and label column, the call continues after the last flushed batch; if the folder is already complete, it returns
    at once. Any difference in those starts the folder over.

    Args:
        model (`nn.Module`): the model (in any mode; it is put in eval mode with frozen parameters during the call).
        dataset (`datasets.Dataset`): rows with `input_ids` (+ optional `attention_mask`, `token_type_ids`) and the
            gold label in `label_column` (classification) or a `labels` column (causal LM; without it the input ids
            are the labels).
        path (`str` or `PathLike`): output folder (created).
        projector (`GradientProjector`, *optional*): reuse one projector for several checkpoints; otherwise built
            from `params`, `k_in`, `k_out`, `seed`.
        batch_size (`int`, defaults to 16): rows per backward.
        dtype (`str`, defaults to `"float16"`): `"float16"` or `"float32"` storage.
        task (`str`, defaults to `"auto"`): as in `per_example_grad_norms`.
        tokenizer, pad_token_id: padding id source (else the model config's pad id, else 0).
        resume (`bool`, defaults to `True`): continue (or skip) a matching interrupted (or finished) run in `path`;
            `False` always starts over.
        shard (`bool`, *optional*): inside an `accelerate launch` / `torchrun` job (default `None`: whenever a
            process group of several processes is initialised) each rank computes the rows of its contiguous shard
            and writes them into the shared `features.npy` (one node, one file system); rank 0 creates the folder's
            files and finishes it. A collective call: call it on every rank, with the same `path`. A finished folder
            is skipped as in one process, but an interrupted multi-process run starts over (progress is counted per
            process only in a single-process run). `False`: this process writes every row.

    Returns:
        `Path`: the output folder.
    """
    from tqdm.auto import tqdm

    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    if len(dataset) == 0:
        raise ValueError("Cannot write projected gradients of an empty dataset.")
    projector = projector or GradientProjector(model, params, k_in=k_in, k_out=k_out, seed=seed)
    out_dir = Path(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_rows = len(dataset)
    signature = {"projector": projector.config_dict(), "dtype": dtype, "task": task, "label_column": label_column,
                 "num_rows": num_rows, "dataset_fingerprint": dataset_fingerprint(dataset),
                 "model_fingerprint": model_fingerprint(model)}
    signature = json.loads(json.dumps(signature))  # as it reads back from disk (tuples become lists)
    world = current_world() if shard is not False else World()
    start = _rows_already_written(out_dir, signature) if resume and world.is_main else 0
    if world.is_distributed:  # rank 0 decides; an unfinished folder is started over by all ranks together
        start = broadcast_object(start, world)
        start = num_rows if start == num_rows else 0
    if start == num_rows:
        logger.info(f"{out_dir} already holds these projected gradients; nothing to do (resume=False rewrites).")
        return out_dir
    shape = (num_rows, projector.feature_dim)
    if world.is_main:
        (out_dir / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until the end
        features = np.lib.format.open_memmap(out_dir / "features.npy", mode="r+" if start else "w+", dtype=dtype,
                                             shape=shape)
    barrier(world)  # the file exists at its full size before the other ranks open it
    if not world.is_main:
        features = np.lib.format.open_memmap(out_dir / "features.npy", mode="r+")
    rows = shard_range(num_rows, world)
    if start:
        logger.info(f"Continuing the projected gradients in {out_dir} after row {start} of {num_rows}.")
    if pad_token_id is None and tokenizer is None:
        pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    desc = "Projected gradients" + (f" [rank {world.rank}/{world.size}]" if world.is_distributed else "")
    for begin in tqdm(range(rows.start + start, rows.stop, batch_size), desc=desc, unit="batch"):
        batch = collate_for_gradients(dataset[begin : min(begin + batch_size, rows.stop)], tokenizer=tokenizer,
                                      pad_token_id=pad_token_id or 0, label_column=label_column)
        values = projected_gradients(model, batch, projector, task=task)
        features[begin : begin + values.shape[0]] = values.cpu().numpy().astype(dtype)
        features.flush()
        if not world.is_distributed:
            _write_json(out_dir / PROGRESS_FILE, {**signature, "rows_done": begin + values.shape[0]})
    del features
    barrier(world)  # every rank's rows are on disk
    if world.is_main:
        _finish_folder(out_dir, dataset, projector, model, signature, example_id_column)
    barrier(world)  # the folder is complete when any rank returns
    return out_dir


def _finish_folder(out_dir: Path, dataset: Any, projector: GradientProjector, model: nn.Module,
                   signature: dict[str, Any], example_id_column: str) -> None:
    """Write `example_ids.npy` and `meta.json` (which marks the folder complete) and drop the progress file."""
    num_rows, dtype, task = signature["num_rows"], signature["dtype"], signature["task"]
    if example_id_column in dataset.column_names:
        ids = np.asarray(list(dataset[example_id_column]), dtype=np.int64)
    else:
        ids = np.arange(num_rows, dtype=np.int64)
    np.save(out_dir / "example_ids.npy", ids)
    meta = {"projector": projector.config_dict(), "dtype": dtype, "task": task, "num_rows": num_rows,
            "example_id_column": example_id_column if example_id_column in dataset.column_names else None,
            "model_class": type(model).__name__, "signature": signature}
    _write_json(out_dir / "meta.json", meta)
    (out_dir / PROGRESS_FILE).unlink(missing_ok=True)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (a crash leaves the old file or the new one, never half of one)."""
    atomic_write_bytes(str(path), json.dumps(payload, indent=2).encode())


def _rows_already_written(folder: Path, signature: dict[str, Any]) -> int:
    """Rows of `folder` that a run with `signature` can keep: all of them for a finished matching run, the flushed
    ones for an interrupted matching run, else 0."""
    if not (folder / "features.npy").is_file():
        return 0
    meta_file, progress_file = folder / "meta.json", folder / PROGRESS_FILE
    if meta_file.is_file() and not progress_file.is_file():
        finished = json.loads(meta_file.read_text()).get("signature")
        return signature["num_rows"] if finished == signature else 0
    if progress_file.is_file():
        progress = json.loads(progress_file.read_text())
        done = progress.pop("rows_done", 0)
        if progress == signature:
            return int(done)
        logger.info(f"{folder} holds an interrupted run with other settings, model or data; starting over.")
    return 0


def load_projected_gradients(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """`(features memmap [N, D], example_ids [N], meta)` written by `write_projected_gradients`."""
    folder = Path(path)
    return (np.load(folder / "features.npy", mmap_mode="r"), np.load(folder / "example_ids.npy"),
            json.loads((folder / "meta.json").read_text()))
