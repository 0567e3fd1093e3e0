"""Saving and pushing scored datasets: local round trips through both loaders, card and provenance content, and a
push through a local stand-in for the Hub HTTP API (everything up to the HTTP layer is the real code)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import random_classification_dataset
from huggingface_hub import DatasetCard
from matplotlib.image import imread

import hf_influence
from hf_influence.hub import push_model_card, push_scored_dataset, resolve_token, save_model_card, save_scored_dataset

# ---------------------------------------------------------------------------------------------------------------------
# A local stand-in for the Hub HTTP API (127.0.0.1 only). It implements the endpoints huggingface_hub and
# datasets.push_to_hub call for dataset and model repos: create repo, repo info, YAML validation, preupload ("regular"
# base64 uploads for text files, the basic LFS batch protocol for binary ones), commit (NDJSON), tree listing,
# paths-info and file resolve. State is in memory; clients reach it through HF_ENDPOINT (set in a subprocess, before
# huggingface_hub/datasets read it at import time).
# ---------------------------------------------------------------------------------------------------------------------

REPO = r"(?P<repo>[^/]+/[^/.]+)"
KIND = r"(?P<kind>datasets|models)"
TEXT_SUFFIXES = (".md", ".json", ".yaml", ".txt", ".gitattributes")


class _Handler(BaseHTTPRequestHandler):
    server: HubStandin

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _not_found(self, code: str) -> None:
        self._send(404, {"error": code}, headers={"X-Error-Code": code, "X-Error-Message": code})

    def _route(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        self.server.requests.append((self.command, path, self.headers.get("Authorization")))
        body = self._body() if self.command in ("POST", "PUT") else b""
        state = self.server

        if self.command == "POST" and path == "/api/repos/create":
            spec = json.loads(body or b"{}")
            repo_id = f"{spec.get('organization') or 'user'}/{spec['name']}"
            kind = f"{spec.get('type') or 'model'}s"
            new = {"files": {}, "sha": "0" * 40, "private": bool(spec.get("private"))}
            state.repos.setdefault(f"{kind}/{repo_id}", new)
            prefix = "datasets/" if kind == "datasets" else ""
            return self._send(200, {"url": f"{state.endpoint}/{prefix}{repo_id}", "name": repo_id})

        m = re.fullmatch(rf"/api/{KIND}/{REPO}(?:/revision/(?P<rev>.+))?", path)
        if m and self.command == "GET":
            repo = state.repo(m)
            if repo is None:
                return self._not_found("RepoNotFound")
            siblings = [{"rfilename": p} for p in sorted(repo["files"])]
            return self._send(
                200, {"id": m["repo"], "sha": repo["sha"], "private": repo["private"], "siblings": siblings}
            )

        m = re.fullmatch(rf"/api/{KIND}/{REPO}/preupload/(?P<rev>.+)", path)
        if m and self.command == "POST":
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "regular" if f["path"].endswith(TEXT_SUFFIXES) else "lfs"}
                for f in files
            ]
            for mode in modes:
                mode["shouldIgnore"] = False
            return self._send(200, {"files": modes})

        m = re.fullmatch(rf"/api/{KIND}/{REPO}/commit/(?P<rev>.+)", path)
        if m and self.command == "POST":
            repo = state.repo(m)
            if repo is None:
                return self._not_found("RepoNotFound")
            message, changed = "", []
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value.get("summary", "")
                elif key == "file":
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
                    changed.append(value["path"])
                elif key == "lfsFile":
                    if value["oid"] not in state.lfs:
                        return self._send(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    repo["files"][value["path"]] = state.lfs[value["oid"]]
                    changed.append(value["path"])
                elif key in ("deletedFile", "deletedFolder"):
                    for p in [p for p in repo["files"] if p == value["path"] or p.startswith(value["path"] + "/")]:
                        del repo["files"][p]
                    changed.append("-" + value["path"])
                else:
                    return self._send(400, {"error": f"stand-in does not support commit key {key!r}"})
            repo["sha"] = hashlib.sha1(f"{repo['sha']}{message}{changed}".encode()).hexdigest()
            state.commits.append({"repo": f"{m['kind']}/{m['repo']}", "message": message, "paths": changed})
            url = f"{state.endpoint}/{m['kind']}/{m['repo']}/commit/{repo['sha']}"
            return self._send(200, {"commitUrl": url, "commitOid": repo["sha"], "pullRequestUrl": None})

        m = re.fullmatch(rf"(?:/datasets)?/{REPO}\.git/info/lfs/objects/batch", path)
        if m and self.command == "POST":
            objects = json.loads(body)["objects"]
            actions = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "actions": {"upload": {"href": f"{state.endpoint}/lfs/{o['oid']}"}},
                }
                for o in objects
            ]
            return self._send(200, {"transfer": "basic", "objects": actions})

        m = re.fullmatch(r"/lfs/(?P<oid>[0-9a-f]{64})", path)
        if m and self.command == "PUT":
            if hashlib.sha256(body).hexdigest() != m["oid"]:
                return self._send(400, {"error": "sha256 of the uploaded bytes does not match the oid"})
            state.lfs[m["oid"]] = body
            return self._send(200, {})

        m = re.fullmatch(rf"/api/{KIND}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", path)
        if m and self.command == "GET":
            repo = state.repo(m)
            if repo is None:
                return self._not_found("RepoNotFound")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            sub = (m["sub"] or "").strip("/")
            if sub and not any(p.startswith(sub + "/") for p in repo["files"]):
                return self._not_found("EntryNotFound")
            return self._send(200, self._tree(repo, sub, recursive))

        m = re.fullmatch(rf"/api/{KIND}/{REPO}/paths-info/(?P<rev>.+)", path)
        if m and self.command == "POST":
            repo = state.repo(m)
            if repo is None:
                return self._not_found("RepoNotFound")
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                wanted = json.loads(body)["paths"]
            else:
                wanted = parse_qs(body.decode()).get("paths", [])
            entries = []
            for p in wanted:
                p = p.strip("/")
                if p in repo["files"]:
                    entries.append(self._file_entry(p, repo["files"][p]))
                elif any(f.startswith(p + "/") for f in repo["files"]):
                    entries.append({"type": "directory", "path": p, "oid": "0" * 40})
            return self._send(200, entries)

        m = re.fullmatch(rf"(?:/(?P<kind>datasets))?/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if m and self.command in ("GET", "HEAD"):
            repo = state.repo(m)
            if repo is None:
                return self._not_found("RepoNotFound")
            data = repo["files"].get(m["file"])
            if data is None:
                return self._not_found("EntryNotFound")
            etag = hashlib.sha1(data).hexdigest()
            headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{etag}"'}
            return self._send(200, headers=headers, raw=data)

        if self.command == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            match = re.match(r"---\n(.*?)\n---", content, flags=re.S)
            try:
                header = yaml.safe_load(match.group(1)) if match else None
            except yaml.YAMLError as err:
                return self._send(400, {"errors": [{"message": str(err)}], "warnings": []})
            if not isinstance(header, dict):
                return self._send(400, {"errors": [{"message": "README.md has no YAML metadata"}], "warnings": []})
            state.validated.append(header)
            return self._send(200, {"errors": [], "warnings": []})

        if path == "/api/agent-harnesses":  # client telemetry registry: not part of the Hub API under test
            return self._not_found("NotFound")
        self.server.unhandled.append((self.command, self.path))
        self._send(501, {"error": f"stand-in does not implement {self.command} {path}"})

    @staticmethod
    def _file_entry(path: str, data: bytes) -> dict:
        return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

    def _tree(self, repo: dict, sub: str, recursive: bool) -> list[dict]:
        prefix = f"{sub}/" if sub else ""
        entries, dirs = [], set()
        for p, data in sorted(repo["files"].items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._file_entry(p, data))
        return [{"type": "directory", "path": d, "oid": "0" * 40} for d in sorted(dirs)] + entries

    do_GET = do_POST = do_HEAD = do_PUT = _route


class HubStandin(ThreadingHTTPServer):
    """``with HubStandin() as hub: ...`` serves on a free port of 127.0.0.1 in a background thread."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.requests: list[tuple] = []
        self.unhandled: list[tuple] = []
        self.validated: list[dict] = []
        self.lfs: dict[str, bytes] = {}
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def repo(self, match: re.Match) -> dict | None:
        """The repo named by a route match (``kind`` defaults to models, as in Hub URLs)."""
        return self.repos.get(f"{match['kind'] or 'models'}/{match['repo']}")

    def __enter__(self) -> HubStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------------

SCORE_ENTRIES = [
    {
        "name": "el2n",
        "column": "el2n",
        "definition": "||softmax(f(x)) - onehot(y)||_2",
        "paper": "Paul et al., 2021, Deep Learning on a Data Diet, Eq. 2",
        "polarity": "higher_is_harder",
        "config": {"checkpoints": ["epoch-1"], "batch_size": 4},
    },
    {
        "name": "forgetting",
        "column": "forgetting",
        "definition": "number of correct-to-incorrect transitions (inf = never learned)",
        "paper": "Toneva et al., 2019",
        "polarity": "higher_is_harder",
        "config": {},
    },
]


def _scored_dataset(n: int = 22) -> datasets.Dataset:
    ds = hf_influence.add_example_ids(random_classification_dataset(n=n, num_labels=3))
    ds = ds.cast_column("label", datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]))
    rng = np.random.default_rng(5)
    el2n = rng.random(n).astype(np.float32)
    el2n[3] = np.nan  # a missing score must survive the round trip
    forgetting = rng.integers(0, 4, n).astype(np.float32)
    forgetting[7] = np.inf
    ds = ds.add_column("el2n", el2n, feature=datasets.Value("float32"))
    return ds.add_column("forgetting", forgetting, feature=datasets.Value("float32"))


def _summary(n: int = 22) -> pd.DataFrame:
    rng = np.random.default_rng(9)
    return pd.DataFrame(
        {
            "confidence": rng.random(n),
            "variability": rng.random(n) * 0.4,
            "correctness": rng.integers(0, 4, n) / 3,
            "forgetting": rng.integers(0, 3, n).astype(float),
        },
        index=pd.Index(np.arange(n), name="example_id"),
    )


def _without_ids(features: datasets.Features) -> dict:
    return {name: getattr(f, "dtype", f) if isinstance(f, datasets.Value) else f for name, f in features.items()}


def _assert_same_rows(loaded: datasets.Dataset, original: datasets.Dataset, documented=None) -> None:
    """Same columns, values and types; documented score columns also carry their polarity once saved."""
    assert loaded.column_names == original.column_names
    assert _without_ids(loaded.features) == _without_ids(original.features)
    for entry in SCORE_ENTRIES if documented is None else documented:
        if entry["column"] in loaded.column_names:
            assert hf_influence.get_polarity(loaded, entry["column"]) == entry["polarity"]
    for column in original.column_names:
        got, want = loaded[column], original[column]
        if getattr(original.features[column], "dtype", None) == "float32":
            np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32))
        else:
            assert list(got) == list(want), column


# ---------------------------------------------------------------------------------------------------------------------
# Local save
# ---------------------------------------------------------------------------------------------------------------------


def test_save_round_trip_both_loaders_card_and_provenance(tmp_path):
    ds = _scored_dataset()
    out = save_scored_dataset(
        ds,
        tmp_path / "scored",
        scorers=SCORE_ENTRIES,
        base_model="tiny-bert",
        seeds=[0, 1],
        summary=_summary(),
        extra={"recipe": "test"},
        license="mit",
        task_categories=["text-classification"],
    )
    assert out == tmp_path / "scored"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging folder cleaned up

    from_disk = datasets.load_from_disk(str(out))
    assert list(from_disk) == ["train"]
    _assert_same_rows(from_disk["train"], ds)

    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["train"]
    _assert_same_rows(loaded["train"], ds)

    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "mit" and "hf_influence" in card.data.tags
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "train/data-*.arrow"}]}
    ]
    for entry in SCORE_ENTRIES:
        row = f"| `{entry['column']}` | {entry['name']} | {entry['polarity']} |"
        assert row in card.text
        assert entry["definition"].replace("|", "\\|") in card.text
    # embedded plots: relative links that resolve to real PNGs next to the card
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    assert sorted(links) == ["plots/data_map.png", "plots/score_histograms.png"]
    for link in links:
        image = imread(out / link)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image[..., :3].std() > 0.05

    provenance = json.loads((out / "hf_influence.json").read_text())
    assert [s["column"] for s in provenance["scores"]] == ["el2n", "forgetting"]
    assert provenance["seeds"] == [0, 1] and provenance["base_model"] == "tiny-bert"
    assert provenance["dataset"]["num_rows"] == 22 and provenance["extra"] == {"recipe": "test"}
    assert provenance["versions"]["datasets"] == datasets.__version__
    assert provenance["versions"]["hf_influence"] == hf_influence.__version__


def test_load_dataset_sees_new_score_columns_of_a_rescored_folder(tmp_path):
    """Re-scoring into another folder of the same name (a new run's output) adds a column: load_dataset must see it
    (the card's dataset_info carries the column types; without it datasets reused the types it had cached for the
    earlier folder, and the new column was dropped or failed to cast)."""
    cache = str(tmp_path / "cache")
    first = save_scored_dataset(_scored_dataset(), tmp_path / "run1" / "scored", scorers=SCORE_ENTRIES)
    assert datasets.load_dataset(str(first), cache_dir=cache)["train"].column_names[-1] == "forgetting"
    rescored = _scored_dataset().add_column("aum", np.linspace(-1, 1, 22).astype(np.float32),
                                            feature=datasets.Value("float32"))
    entries = [*SCORE_ENTRIES, {**SCORE_ENTRIES[0], "name": "aum", "column": "aum"}]
    second = save_scored_dataset(rescored, tmp_path / "run2" / "scored", scorers=entries)
    loaded = datasets.load_dataset(str(second), cache_dir=cache)["train"]
    _assert_same_rows(loaded, rescored)
    assert DatasetCard.load(second / "README.md").data.dataset_info["features"][-1]["name"] == "aum"


def test_save_dataset_dict_and_selection(tmp_path):
    ds = _scored_dataset()
    kept, report = hf_influence.select_by_score(ds, "el2n", 0.5, "easiest", polarity="higher_is_harder",
                                                return_report=True)
    both = datasets.DatasetDict({"train": kept, "validation": ds.select(range(5))})
    out = save_scored_dataset(both, tmp_path / "dd", scorers=SCORE_ENTRIES[:1], selection=report, plots=False)
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == ["train", "validation"]
    _assert_same_rows(loaded["train"], kept, SCORE_ENTRIES[:1])
    _assert_same_rows(loaded["validation"], ds.select(range(5)), SCORE_ENTRIES[:1])
    assert not (out / "plots").exists()
    text = (out / "README.md").read_text()
    assert "![" not in text
    assert f"- num_kept: {len(kept)}" in text and "- num_nan: 1" in text  # the NaN row is excluded and counted
    assert json.loads((out / "hf_influence.json").read_text())["selection"]["num_kept"] == len(kept)


def test_save_bad_input_writes_nothing(tmp_path):
    ds = _scored_dataset()
    with pytest.raises(ValueError, match=r"\['aum'\].*missing from split 'train'"):
        save_scored_dataset(ds, tmp_path / "a", scorers=[{**SCORE_ENTRIES[0], "column": "aum"}])
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="variability"):
        save_scored_dataset(ds, tmp_path / "b", summary=_summary().drop(columns="variability"))
    assert not (tmp_path / "b").exists()

    with pytest.raises(ValueError, match="Split name 'my split'"):
        save_scored_dataset(ds, tmp_path / "d", split="my split")
    assert not (tmp_path / "d").exists()

    target = tmp_path / "c"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_scored_dataset(ds, target)
    assert (target / "keep.txt").read_text() == "precious"
    save_scored_dataset(ds, target, overwrite=True)
    assert not (target / "keep.txt").exists()
    _assert_same_rows(datasets.load_from_disk(str(target))["train"], ds, documented=[])


def test_save_model_card(tmp_path):
    path = save_model_card(tmp_path / "model", base_model="tiny-bert", results={"eval_accuracy": 0.75}, seeds=[4])
    text = path.read_text()
    assert path.name == "README.md" and "| eval_accuracy | 0.7500 |" in text and "base_model: tiny-bert" in text


def test_resolve_token_errors(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        resolve_token("hf_x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ValueError, match="needs a write token.*HF_TOKEN.*hf auth login"):
        resolve_token(None)
    assert resolve_token("hf_given") == "hf_given"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve_token(None) == "hf_env"


# ---------------------------------------------------------------------------------------------------------------------
# Push through the stand-in (the client runs in a subprocess so that HF_ENDPOINT is read at import time)
# ---------------------------------------------------------------------------------------------------------------------

PUSH_CLIENT = textwrap.dedent(
    """
    import json, sys
    import datasets
    from hf_influence.hub import push_model_card, push_scored_dataset

    source, scorers_json, out = sys.argv[1], sys.argv[2], sys.argv[3]
    ds = datasets.load_from_disk(source)
    push_scored_dataset(
        ds, "user/scored", scorers=json.loads(scorers_json), seeds=[0], base_model="tiny-bert", license="mit",
        selection={"strategy": "hardest", "keep": 0.5, "per_class_before": {"0": 8}, "per_class_after": {"0": 4}},
    )
    back = datasets.load_dataset("user/scored", split="train", cache_dir=out + "/cache")
    back.save_to_disk(out + "/back")
    url = push_model_card("user/pruned-model", base_model="tiny-bert", dataset="user/scored",
                          results={"eval_accuracy": 0.5})
    print("MODEL_CARD_COMMIT", url)
    """
)


def _client_env(hub: HubStandin, home: Path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_OFFLINE="0",
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",  # exercise the plain LFS protocol the stand-in speaks
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def test_push_scored_dataset_through_hub_standin(tmp_path):
    ds = _scored_dataset()
    ds.save_to_disk(str(tmp_path / "source"))
    script = tmp_path / "client.py"
    script.write_text(PUSH_CLIENT)
    args = [sys.executable, str(script), str(tmp_path / "source"), json.dumps(SCORE_ENTRIES), str(tmp_path)]
    with HubStandin() as hub:
        env = _client_env(hub, tmp_path / "home", token="hf_standin_token")
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    assert hub.unhandled == []
    api_calls = [r for r in hub.requests if r[1].startswith(("/api/datasets", "/api/models", "/api/repos"))]
    assert api_calls and all(auth == "Bearer hf_standin_token" for _, _, auth in api_calls)

    data_commit, card_commit, *model_commits = hub.commits
    assert data_commit["repo"] == card_commit["repo"] == "datasets/user/scored"
    assert sorted(data_commit["paths"]) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert sorted(card_commit["paths"]) == ["README.md", "hf_influence.json", "plots/score_histograms.png"]
    assert [c["repo"] for c in model_commits] == ["models/user/pruned-model"]

    files = hub.repos["datasets/user/scored"]["files"]
    table = pq.read_table(io.BytesIO(files["data/train-00000-of-00001.parquet"]))
    pushed = datasets.Dataset(table)
    _assert_same_rows(pushed.cast(ds.features), ds, documented=[])

    card = DatasetCard(files["README.md"].decode())
    # the narrative card replaced push_to_hub's empty body, and kept its YAML (configs, dataset_info)
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert card.data.dataset_info["splits"][0]["num_examples"] == 22
    assert card.data.license == "mit" and "hf_influence" in card.data.tags
    for entry in SCORE_ENTRIES:
        assert f"| `{entry['column']}` | {entry['name']} | {entry['polarity']} |" in card.text
    assert "![Score histograms (split train, per label)](plots/score_histograms.png)" in card.text
    assert 'load_dataset("user/scored")' in card.text
    assert imread(io.BytesIO(files["plots/score_histograms.png"])).shape[0] > 200
    assert json.loads(files["hf_influence.json"])["base_model"] == "tiny-bert"
    assert hub.validated and all(isinstance(h, dict) for h in hub.validated)

    # what load_dataset fetched back from the stand-in equals the original
    _assert_same_rows(datasets.load_from_disk(str(tmp_path / "back")), ds)

    model_readme = hub.repos["models/user/pruned-model"]["files"]["README.md"].decode()
    assert "| eval_accuracy | 0.5000 |" in model_readme and "- Dataset: `user/scored`" in model_readme


def test_push_without_token_fails_before_any_upload(tmp_path):
    _scored_dataset().save_to_disk(str(tmp_path / "source"))
    script = tmp_path / "client.py"
    script.write_text(PUSH_CLIENT)
    args = [sys.executable, str(script), str(tmp_path / "source"), json.dumps(SCORE_ENTRIES), str(tmp_path)]
    with HubStandin() as hub:
        env = _client_env(hub, tmp_path / "empty-home", token=None)
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "needs a write token" in result.stderr and "Nothing was uploaded" in result.stderr
    assert [r for r in hub.requests if r[1] != "/api/agent-harnesses"] == []
    assert hub.repos == {} and hub.commits == []


def test_push_refuses_missing_score_column_before_upload(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # an unreachable endpoint: any upload attempt would raise a connection error instead of the ValueError
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"\['aum'\]"):
        push_scored_dataset(_scored_dataset(), "user/x", token="hf_x", scorers=[{**SCORE_ENTRIES[0], "column": "aum"}])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        push_model_card("user/m", token="hf_x", base_model="b")


def test_saved_dataset_records_each_documented_columns_polarity(tmp_path):
    """A score column documented on the card but computed outside a scorer gets the card's polarity in its feature,
    so selection after loading keeps the hardest by that polarity."""
    ds = _scored_dataset().add_column("aum", np.linspace(-1, 1, 22).astype(np.float32),
                                      feature=datasets.Value("float32"))
    entries = [*SCORE_ENTRIES, {**SCORE_ENTRIES[0], "name": "aum", "column": "aum", "polarity": "higher_is_easier"}]
    out = save_scored_dataset(ds, tmp_path / "scored", scorers=entries, plots=False)
    loaded = datasets.load_from_disk(str(out))["train"]
    assert hf_influence.get_polarity(loaded, "aum") == "higher_is_easier"
    kept = hf_influence.select_by_score(loaded, "aum", 5, "hardest")
    assert sorted(kept["aum"]) == sorted(ds["aum"])[:5]
