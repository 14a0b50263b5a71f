"""Hub round trip against the loopback server of tests/hub_server.py (127.0.0.1 only, in memory).

The parent (pytest) process builds the models and cities and runs the server; every Hub client runs in a fresh
subprocess with `HF_ENDPOINT` pointing at the server, Xet and telemetry off, a throwaway `HF_HOME` and
`HF_HUB_OFFLINE=0` (the suite is offline otherwise). To stay fast, three client processes do all the work and write
what they saw to a file the tests below inspect: one pushes (the CLI, the API and build_city.py --push_to_hub), one
loads with the package installed, one loads where `nextlocllm_hf` is unimportable (trust_remote_code), and one loads
again from the second one's cache with `HF_HUB_OFFLINE=1`. The checks of an interrupted `push-dataset` need more: a
process for each push, killed or whole, and a fresh one to load the city back after each.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import signal
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from conftest import TINY_BACKBONES, build_model, build_synthetic_city, build_tokenizer, make_batch, make_retriever
from hub_server import LoopbackHub
from processes import run

from nextlocllm_hf.adapters import export_lora_adapter
from nextlocllm_hf.hub import check_model_folder
from nextlocllm_hf.metrics import compute_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_loopbackSECRET7f3a9c2e5b1d"  # grep target: must never appear outside the Authorization header
MODEL_REPO, LORA_REPO, PRIVATE_REPO = "org/nextlocllm-tiny", "org/nextlocllm-lora", "org/private"
DATA_REPO = "org/cities"
METHOD_REPO = "org/via-push-to-hub"
BASE_REPO, ADAPTER_REPO = "org/nextlocllm-base", "org/nextlocllm-lora-adapter"  # the LoRA model, the PEFT way
METRIC_REPO = "org/nextloc_metric"  # a Space: evaluate fetches nextloc_metric.py from it
BROKEN = {"missing": "org/broken-missing", "truncated": "org/broken-truncated", "noindex": "org/broken-noindex"}
CITIES = {"nyc": {"seed": 1}, "calgary": {"seed": 2, "centre": (-12_710_000.0, 6_610_000.0)}}
CLIENT_TIMEOUT = 240
ATOMIC_REPO = "org/atomic-cities"  # a city replaced by a push-dataset killed at each of its steps
STOPS = ("before_uploads", "after_one_upload", "before_commit")  # where push-dataset is killed, in this order

PUSH_SCRIPT = """
import json, os, sys
spec = json.load(open(sys.argv[1]))
from huggingface_hub import HfApi
from nextlocllm_hf.hub import main, push_model
api, out = HfApi(), {}
sha = lambda repo: api.model_info(repo).sha
assert main(["push-model", spec["v1"], "--repo_id", spec["model_repo"]]) == 0   # the CLI, results.json found beside
out["v1"] = sha(spec["model_repo"])
# Occupied now: refused before any upload, by the CLI (exit 2) and the API, unless overwrite
out["model_refused_exit"] = main(["push-model", spec["v2"], "--repo_id", spec["model_repo"]])
try:
    push_model(spec["v2"], spec["model_repo"])
except FileExistsError as error:
    out["model_refused"] = str(error)
out["model_unchanged"] = sha(spec["model_repo"]) == out["v1"]
api.upload_file(path_or_fileobj=b"stale", path_in_repo="pytorch_model.bin", repo_id=spec["model_repo"])
push_model(spec["v2"], spec["model_repo"], commit_message="v2: retrained, calgary cells changed", overwrite=True)
out["v2"] = sha(spec["model_repo"])
push_model(spec["v1"], spec["model_repo"], revision="v1-branch", results=spec["results"])
push_model(spec["lora"], spec["lora_repo"])
from nextlocllm_hf.hub import push_adapter
try:  # an adapter whose base is not on the Hub yet is refused
    push_adapter(spec["lora_adapter"], spec["adapter_repo"], "org/no-such-base")
except ValueError as error:
    out["adapter_without_base"] = str(error)
push_model(spec["lora_base"], spec["base_repo"])
assert main(["push-adapter", spec["lora_adapter"], "--repo_id", spec["adapter_repo"],
             "--base_model", spec["base_repo"]]) == 0
out["adapter_files"] = sorted(api.list_repo_files(spec["adapter_repo"]))
assert main(["push-metric", "--repo_id", spec["metric_repo"]]) == 0
out["metric_files"] = sorted(api.list_repo_files(spec["metric_repo"], repo_type="space"))
push_model(spec["v1"], spec["private_repo"], private=True)
for repo in spec["broken"]:
    push_model(spec["v1"], repo)
assert main(["push-dataset", spec["alpha"], "--repo_id", spec["data_repo"]]) == 0
out["data_alpha"] = api.dataset_info(spec["data_repo"]).sha
out["city_refused_exit"] = main(["push-dataset", spec["alpha"], "--repo_id", spec["data_repo"]])
sys.path.insert(0, spec["scripts"])
import build_city
# A build that would push onto a city already there is refused before it builds anything
out["build_refused_exit"] = build_city.main(["--format", "synthetic", "--city", "alpha", "--users", "12",
                                             "--output", spec["beta"], "--push_to_hub", spec["data_repo"]])
out["build_refused_nothing_built"] = not os.path.exists(spec["beta"])
out["city_unchanged"] = api.dataset_info(spec["data_repo"]).sha == out["data_alpha"]
assert build_city.main(["--format", "synthetic", "--city", "beta", "--seed", "2", "--users", "12",
                        "--records-per-user", "60", "--extent-km", "4", "--output", spec["beta"], "--no-progress",
                        "--push_to_hub", spec["data_repo"]]) == 0
out["data_beta"] = api.dataset_info(spec["data_repo"]).sha
# model.push_to_hub: the package's card, like the CLI's. With results; from a folder whose card it keeps while its
# weights are the folder's; and once its weights changed, a card without metrics.
import shutil, torch
from transformers import AutoModel
model = AutoModel.from_pretrained(spec["v1"])
model.push_to_hub(spec["method_repo"], results=spec["results"], tags=["from-push-to-hub"])
carded = os.path.join(os.path.dirname(spec["out"]), "carded")
shutil.copytree(spec["v1"], carded)
shutil.copy(api.hf_hub_download(spec["model_repo"], "README.md", revision="v1-branch"), os.path.join(carded, "README.md"))
model = AutoModel.from_pretrained(carded)
model.push_to_hub(spec["method_repo"], commit_message="from the folder")
out["method_kept_card"] = api.model_info(spec["method_repo"]).sha
with torch.no_grad():
    model.regression_head.weight.add_(1.0)
model.push_to_hub(spec["method_repo"], commit_message="changed weights")
json.dump(out, open(spec["out"], "w"))
"""

CITY_SUMMARY = """
from nextlocllm_hf.data import load_city_splits

def city(*args, **kwargs):
    c = load_city_splits(*args, **kwargs)
    return {"name": c.name, "rows": {s: d.to_list() for s, d in c.splits.items()},
            "features": {s: d.features for s, d in c.splits.items()}, "cells": c.cells, "metadata": c.metadata,
            "retriever": (c.retriever.cell_ids, c.retriever.coordinate_mean, c.retriever.coordinate_std)}
"""

LOAD_SCRIPT = """
import json, os, pickle, sys
spec = json.load(open(sys.argv[1]))
import urllib.request
import torch
import nextlocllm_hf  # registers the classes with AutoModel: no flag needed
from transformers import AutoModel

batches = torch.load(spec["batches"])
out = {}

def attempt(name, fn):
    try:
        out[name] = fn()
    except Exception as error:
        out[name] = {"error": type(error).__name__, "message": str(error)}

def summary(model):
    predictions = {}
    for city, batch in batches[model.config.task_mode].items():  # each task mode has its own inputs
        if city in model.cities:
            p = model.predict(batch, city=city, k=5)
            predictions[city] = (p.coordinates, p.top_k_cells, p.top_k_distances)
    return {"class": type(model).__module__ + "." + type(model).__name__, "cities": model.cities,
            "predictions": predictions, "state": {k: v.clone() for k, v in model.state_dict().items()},
            "cells": {c: model.retriever(c).cell_ids.copy() for c in model.cities}}

requests = lambda: json.load(urllib.request.urlopen(spec["endpoint"] + "/__stats", timeout=10))["requests"]
attempt("main", lambda: summary(AutoModel.from_pretrained(spec["model_repo"])))
attempt("pinned", lambda: summary(AutoModel.from_pretrained(spec["model_repo"], revision=spec["v1"])))
attempt("branch", lambda: summary(AutoModel.from_pretrained(spec["model_repo"], revision="v1-branch")))
before = requests()
attempt("offline", lambda: summary(AutoModel.from_pretrained(spec["model_repo"], revision=spec["v1"],
                                                             local_files_only=True)))
out["offline_requests"] = requests() - before - 1
attempt("cache_dir", lambda: summary(AutoModel.from_pretrained(spec["model_repo"], cache_dir=spec["cache_dir"])))
attempt("lora", lambda: summary(AutoModel.from_pretrained(spec["lora_repo"])))
from peft import PeftModel
attempt("adapter", lambda: summary(PeftModel.from_pretrained(AutoModel.from_pretrained(spec["base_repo"]),
                                                             spec["adapter_repo"])))
attempt("private_no_token", lambda: summary(AutoModel.from_pretrained(spec["private_repo"])))
token = os.environ["LOOPBACK_TOKEN"]
attempt("private_token", lambda: summary(AutoModel.from_pretrained(spec["private_repo"], token=token)))
attempt("missing_repo", lambda: summary(AutoModel.from_pretrained("org/does-not-exist")))
for kind, repo in spec["broken"].items():
    attempt("broken_" + kind, lambda: summary(AutoModel.from_pretrained(repo)))
""" + CITY_SUMMARY + """
attempt("alpha", lambda: city(spec["data_repo"], city="alpha"))
attempt("beta", lambda: city(spec["data_repo"], city="beta"))
attempt("alpha_pinned", lambda: city(spec["data_repo"], city="alpha", revision=spec["data_alpha"]))
attempt("beta_pinned", lambda: city(spec["data_repo"], city="beta", revision=spec["data_alpha"]))
attempt("which_city", lambda: city(spec["data_repo"]))
attempt("no_city", lambda: city(spec["data_repo"], city="gamma"))
attempt("no_dataset", lambda: city("org/no-such-cities", city="alpha"))
from datasets import load_dataset
attempt("load_dataset", lambda: {s: d.to_list() for s, d in load_dataset(spec["data_repo"], "alpha").items()})
pickle.dump(out, open(spec["out"], "wb"))
"""

REMOTE_SCRIPT = """
import json, pickle, sys
sys.modules["nextlocllm_hf"] = None  # the package is unimportable here: only the Hub repo's code can load
spec = json.load(open(sys.argv[1]))
import torch
from transformers import AutoModel
batches = torch.load(spec["batches"])["next"]
out = {}
try:
    AutoModel.from_pretrained(spec["model_repo"])
    out["without_flag"] = "loaded"
except ValueError as error:
    out["without_flag"] = str(error)
for name, kwargs in (("main", {}), ("pinned", {"revision": spec["v1"]})):
    model = AutoModel.from_pretrained(spec["model_repo"], trust_remote_code=True, **kwargs)
    predictions = {}
    for city, batch in batches.items():
        p = model.predict(batch, city=city, k=5)
        predictions[city] = (p.coordinates, p.top_k_cells, p.top_k_distances)
    out[name] = {"module": type(model).__module__, "cities": model.cities, "predictions": predictions}
# The LoRA model as base + PEFT adapter, and the evaluate metric's Space: neither needs the package.
from peft import PeftModel
model = PeftModel.from_pretrained(AutoModel.from_pretrained(spec["base_repo"], trust_remote_code=True),
                                  spec["adapter_repo"])
predictions = {}
for city, batch in torch.load(spec["batches"])["at_time"].items():
    p = model.predict(batch, city=city, k=5)
    predictions[city] = (p.coordinates, p.top_k_cells, p.top_k_distances)
out["adapter"] = {"module": type(model.get_base_model()).__module__, "predictions": predictions}
import evaluate
metric = evaluate.load(spec["metric_repo"])
out["metric"] = {"module": type(metric).__module__, "scores": metric.compute(**json.load(open(spec["metric_inputs"])))}
pickle.dump(out, open(spec["out"], "wb"))
"""


OFFLINE_SCRIPT = """
import json, pickle, sys
spec = json.load(open(sys.argv[1]))
import torch
import nextlocllm_hf
from transformers import AutoModel
from nextlocllm_hf.data import load_city_splits
batches = torch.load(spec["batches"])["next"]
model = AutoModel.from_pretrained(spec["model_repo"])
predictions = {}
for city, batch in batches.items():
    p = model.predict(batch, city=city, k=5)
    predictions[city] = (p.coordinates, p.top_k_cells, p.top_k_distances)
alpha = load_city_splits(spec["data_repo"], city="alpha")
out = {"predictions": predictions, "rows": {s: d.to_list() for s, d in alpha.splits.items()}}
pickle.dump(out, open(spec["out"], "wb"))
"""

CITY_SCRIPT = CITY_SUMMARY + """
import json, pickle, sys
spec = json.load(open(sys.argv[1]))
try:
    out = city(spec["repo"], city=spec["city"])
except Exception as error:  # for the test to report
    out = {"error": type(error).__name__, "message": str(error)}
pickle.dump(out, open(spec["out"], "wb"))
"""

CITIES_PUSH_SCRIPT = """
import json, sys
spec = json.load(open(sys.argv[1]))
from nextlocllm_hf.hub import push_city_dataset
push_city_dataset(spec["cities"], spec["repo"], max_shard_size=spec["max_shard_size"])
"""

# `push-dataset --overwrite` killed (SIGKILL: no cleanup, no exception handler) at one of its steps, or run whole: after
# the repo checks and reads, create_commit uploads the LFS blobs (preupload_lfs_files, one lfs_upload per blob), then
# commits.
INTERRUPTED_PUSH_SCRIPT = """
import json, os, signal, sys, threading
spec = json.load(open(sys.argv[1]))
from huggingface_hub import HfApi, _commit_api
from nextlocllm_hf.hub import main

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

upload, preupload, one_at_a_time = _commit_api.lfs_upload, HfApi.preupload_lfs_files, threading.Lock()

def upload_one_then_die(*args, **kwargs):
    with one_at_a_time:  # the other upload threads wait here: exactly one blob goes up
        upload(*args, **kwargs)
        die()

def preupload_then_die(*args, **kwargs):
    preupload(*args, **kwargs)
    die()

if spec["stop"] == "before_uploads":
    HfApi.preupload_lfs_files = die
elif spec["stop"] == "after_one_upload":
    _commit_api.lfs_upload = upload_one_then_die
elif spec["stop"] == "before_commit":
    HfApi.preupload_lfs_files = preupload_then_die
sys.exit(main(["push-dataset", spec["city"], "--repo_id", spec["repo"], "--overwrite"]))
"""


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def hub():
    server = LoopbackHub(tokens={TOKEN: {"name": "alice", "orgs": ["org"]}}).start()
    yield server
    server.stop()


CLIENT_OUTPUTS: list = []


def run_client(hub, root: Path, name: str, script: str | list, spec: dict | None = None, token: bool = True,
               hf_home: str | None = None, offline: bool = False, returncode: int = 0) -> str:
    """Run `script` (Python source, or an argv list) in a fresh interpreter that talks to the loopback server only
    (or to nothing: `offline`), bounded by `processes.run`; checks it ended with `returncode` (minus the signal that
    killed it) and returns its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({
        "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0", "HF_HOME": str(root / f"hf_home_{hf_home or name}"),
        "TOKENIZERS_PARALLELISM": "false",
        "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
    })
    if offline:
        env["HF_HUB_OFFLINE"] = env["HF_DATASETS_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = TOKEN
    else:
        env["LOOPBACK_TOKEN"] = TOKEN  # handed to from_pretrained(token=...) explicitly
    if isinstance(script, str):
        spec_file = root / f"{name}.json"
        spec_file.write_text(json.dumps({**(spec or {}), "endpoint": hub.endpoint}))
        argv = [sys.executable, "-c", textwrap.dedent(script), str(spec_file)]
    else:
        argv = [sys.executable, *script]
    result = run(argv, env=env, cwd=root, timeout=CLIENT_TIMEOUT)
    CLIENT_OUTPUTS.append(result.stdout + result.stderr)
    assert result.returncode == returncode, (f"{name} client ended with {result.returncode}, not {returncode}:\n"
                                             f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def _train_two_steps(model, batches):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for city, batch in batches.items():
        loss = model(**batch, city=city).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def _reference(model, batches) -> dict:
    with torch.no_grad():
        predictions = {}
        for city, batch in batches.items():
            p = model.predict(batch, city=city, k=5)
            predictions[city] = (p.coordinates, p.top_k_cells, p.top_k_distances)
    return {"predictions": predictions, "state": {k: v.clone() for k, v in model.state_dict().items()},
            "cities": model.cities, "cells": {c: model.retriever(c).cell_ids.copy() for c in model.cities}}


def _results(model, batches) -> dict:
    """Real test metrics of `model` on the batches (what train.py writes to results.json)."""
    scores = {}
    with torch.no_grad():
        for city, batch in batches.items():
            p = model.predict(batch, city=city, k=20)
            targets, _ = model.retriever(city).query(batch["labels"].numpy(), 1)
            scores[city] = compute_metrics(p.top_k_cells.numpy(), targets[:, 0], p.coordinates.numpy(),
                                           batch["labels"].numpy())
    return {"test": scores, "best_step": 2}


@pytest.fixture(scope="module")
def exported(root):
    """v1 (two cities, two training steps), v2 (retrained, calgary's cells changed) and a LoRA model, saved."""
    tokenizer = build_tokenizer()
    backbones = {}
    for arch in ("gpt2", "llama"):
        torch.manual_seed(0)
        backbones[arch] = root / f"backbone-{arch}"
        TINY_BACKBONES[arch](len(tokenizer)).save_pretrained(backbones[arch])
        tokenizer.save_pretrained(backbones[arch])

    torch.manual_seed(0)
    model = build_model(str(backbones["gpt2"]))
    for name, settings in CITIES.items():
        model.add_city(make_retriever(name, num_cells=40, **settings))
    batches = {name: make_batch(model.config, model.retriever(name), batch_size=8, seed=7) for name in CITIES}
    _train_two_steps(model, batches)
    results = _results(model, batches)
    (root / "v1").mkdir()
    model.save_pretrained(root / "v1" / "model")
    (root / "v1" / "results.json").write_text(json.dumps(results))
    v1 = _reference(model, batches)

    _train_two_steps(model, batches)
    model.add_city(make_retriever("calgary", num_cells=30, seed=5, centre=CITIES["calgary"]["centre"]))
    model.save_pretrained(root / "v2")
    v2 = _reference(model, batches)

    torch.manual_seed(0)
    # The LoRA model also carries both heads beyond the paper and the other task mode (at_time, with the query as
    # input), so the Hub round trip covers them.
    lora = build_model(str(backbones["llama"]), adaptation="lora", head_type="mixture_ranker",
                       num_mixture_components=3, task_mode="at_time")
    for name, settings in CITIES.items():
        lora.add_city(make_retriever(name, num_cells=40, **settings))
    with torch.no_grad():  # LoRA B starts at zero: give the adapter weights that change the output, as training does
        for key, parameter in lora.named_parameters():
            if "lora_B" in key:
                parameter.normal_(0, 0.5)
    lora.save_pretrained(root / "lora")
    sizes = export_lora_adapter(lora, root / "lora_adapter", root / "lora_base")
    at_time_batches = {name: make_batch(lora.config, lora.retriever(name), batch_size=8, seed=7) for name in CITIES}
    torch.save({"next": batches, "at_time": at_time_batches}, root / "batches.pt")
    return {"v1": v1, "v2": v2, "lora": _reference(lora, at_time_batches), "results": results, "batches": batches,
            "adapter_sizes": sizes, "metric": _metric_inputs(root / "metric_inputs.json")}


def _metric_inputs(path: Path) -> dict:
    """Predictions and references for the evaluate metric (written to `path`) and the package's scores of them."""
    generator = torch.Generator().manual_seed(3)
    ranked = torch.stack([torch.randperm(60, generator=generator)[:20] for _ in range(30)]).numpy()
    targets = ranked[:, 0].copy()
    targets[::3] = ranked[::3, 4]
    targets[1::7] = 99  # absent from every ranking
    predicted = torch.randn(30, 2, generator=generator, dtype=torch.float64).numpy() * 2000 + [-8_235_000.0, 4_970_000.0]
    true = predicted + torch.randn(30, 2, generator=generator, dtype=torch.float64).numpy() * 300
    path.write_text(json.dumps({
        "predictions": [{"ranked_cells": r.tolist(), "predicted_xy": p.tolist()} for r, p in zip(ranked, predicted)],
        "references": [{"target_cell": int(t), "target_xy": x.tolist()} for t, x in zip(targets, true)],
    }))
    return compute_metrics(ranked, targets, predicted, true)


@pytest.fixture(scope="module")
def pushed(hub, root, exported):
    alpha = build_synthetic_city(root / "alpha", "alpha", seed=1, n_users=12)
    spec = {"v1": str(root / "v1" / "model"), "v2": str(root / "v2"), "lora": str(root / "lora"),
            "results": str(root / "v1" / "results.json"), "model_repo": MODEL_REPO, "lora_repo": LORA_REPO,
            "private_repo": PRIVATE_REPO, "broken": list(BROKEN.values()), "data_repo": DATA_REPO, "alpha": alpha,
            "beta": str(root / "beta"), "scripts": str(REPO_ROOT / "dataset_scripts"), "out": str(root / "pushed.json"),
            "method_repo": METHOD_REPO, "lora_adapter": str(root / "lora_adapter"), "lora_base": str(root / "lora_base"),
            "base_repo": BASE_REPO, "adapter_repo": ADAPTER_REPO, "metric_repo": METRIC_REPO}
    run_client(hub, root, "push", PUSH_SCRIPT, spec)
    shas = json.loads((root / "pushed.json").read_text())
    # Damage three repos the way a broken upload would (straight in the server's storage).
    weights = hub.files(BROKEN["truncated"])["retrievers.safetensors"]
    hub.put_files(BROKEN["missing"], {}, delete=("retrievers.safetensors",))
    hub.put_files(BROKEN["truncated"], {"retrievers.safetensors": weights[:64]})
    hub.put_files(BROKEN["noindex"], {}, delete=("retrievers.json",))
    return {**shas, "alpha": alpha, "beta": str(root / "beta")}


@pytest.fixture(scope="module")
def loaded(hub, root, pushed):
    spec = {"batches": str(root / "batches.pt"), "model_repo": MODEL_REPO, "lora_repo": LORA_REPO,
            "base_repo": BASE_REPO, "adapter_repo": ADAPTER_REPO, "private_repo": PRIVATE_REPO, "broken": BROKEN, "data_repo": DATA_REPO, "v1": pushed["v1"],
            "data_alpha": pushed["data_alpha"], "cache_dir": str(root / "explicit_cache"),
            "out": str(root / "loaded.pkl")}
    run_client(hub, root, "load", LOAD_SCRIPT, spec, token=False)
    return pickle.loads((root / "loaded.pkl").read_bytes())


@pytest.fixture(scope="module")
def remote(hub, root, pushed):
    spec = {"batches": str(root / "batches.pt"), "model_repo": MODEL_REPO, "v1": pushed["v1"],
            "base_repo": BASE_REPO, "adapter_repo": ADAPTER_REPO, "metric_repo": METRIC_REPO,
            "metric_inputs": str(root / "metric_inputs.json"), "out": str(root / "remote.pkl")}
    run_client(hub, root, "remote", REMOTE_SCRIPT, spec, token=False)
    return pickle.loads((root / "remote.pkl").read_bytes())


@pytest.fixture(scope="module")
def offline(hub, root, loaded):
    spec = {"batches": str(root / "batches.pt"), "model_repo": MODEL_REPO, "data_repo": DATA_REPO,
            "out": str(root / "offline.pkl")}
    before = hub.state.counter
    run_client(hub, root, "offline", OFFLINE_SCRIPT, spec, token=False, hf_home="load", offline=True)
    return {"requests": hub.state.counter - before, **pickle.loads((root / "offline.pkl").read_bytes())}


@pytest.fixture(scope="module")
def interrupted(hub, root):
    """City gamma pushed (v1, beside city delta, its splits in several shards), then `push-dataset --overwrite` of
    gamma rebuilt (v2, another seed, one shard a split) killed at each of `STOPS` in turn and run whole last; after
    each, gamma loaded from the Hub in a fresh process (and a fresh cache)."""
    v1 = build_synthetic_city(root / "gamma-v1", "gamma", seed=1, n_users=12)
    v2 = build_synthetic_city(root / "gamma-v2", "gamma", seed=4, n_users=14)
    delta = build_synthetic_city(root / "delta", "delta", seed=2, n_users=12)
    run_client(hub, root, "atomic-v1", CITIES_PUSH_SCRIPT, {"cities": [v1, delta], "repo": ATOMIC_REPO,
                                                            "max_shard_size": 600})
    storage = hub.repo(ATOMIC_REPO, "dataset")
    result = {"v1": v1, "v2": v2, "v1_head": storage.branches["main"], "heads": {}, "requests": {},
              "lfs_objects": {"v1": set(storage.lfs_objects)}, "loaded": {}}
    for stop in (*STOPS, "complete"):
        first = len(hub.requests)
        spec = {"stop": stop, "city": v2, "repo": ATOMIC_REPO}
        run_client(hub, root, f"atomic-{stop}", INTERRUPTED_PUSH_SCRIPT, spec,
                   returncode=0 if stop == "complete" else -signal.SIGKILL)
        result["requests"][stop] = hub.requests[first:]
        result["heads"][stop] = storage.branches["main"]
        result["lfs_objects"][stop] = set(storage.lfs_objects)
        out = root / f"atomic-{stop}.pkl"
        spec = {"repo": ATOMIC_REPO, "city": "gamma", "out": str(out)}
        run_client(hub, root, f"atomic-load-{stop}", CITY_SCRIPT, spec, token=False)
        result["loaded"][stop] = pickle.loads(out.read_bytes())
    return result


def assert_same_predictions(got: dict, reference: dict, cities=tuple(CITIES)) -> None:
    assert sorted(got) == sorted(cities)
    for city in cities:
        coordinates, cells, distances = got[city]
        ref_coordinates, ref_cells, ref_distances = reference[city]
        # Bit-identical weights; float32 matmuls over memory-mapped tensors may differ in the last bit.
        torch.testing.assert_close(coordinates, ref_coordinates, rtol=0, atol=1e-3)
        assert torch.equal(cells, ref_cells), city
        torch.testing.assert_close(distances, ref_distances, rtol=0, atol=1e-3)


def assert_same_state(got: dict, reference: dict) -> None:
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(got[key], value), key


def outcome(result: dict) -> dict:
    assert "error" not in result, f"{result['error']}: {result['message'][:1500]}"
    return result


# ------------------------------------------------------------------------------------------------- model: loading
def test_automodel_from_hub_without_flag_matches_original(loaded, exported):
    main = outcome(loaded["main"])
    assert main["class"] == "nextlocllm_hf.modeling.modeling_nextlocllm.NextLocLLMForCoordinateRegression"
    assert main["cities"] == list(CITIES)
    assert_same_state(main["state"], exported["v2"]["state"])  # main is the latest push
    assert_same_predictions(main["predictions"], exported["v2"]["predictions"])


def test_remote_code_from_hub_where_package_is_unimportable(remote, loaded, exported):
    assert "trust_remote_code" in remote["without_flag"]
    assert remote["main"]["module"].startswith("transformers_modules.")
    assert remote["main"]["cities"] == list(CITIES)
    assert_same_predictions(remote["main"]["predictions"], exported["v2"]["predictions"])
    for city in CITIES:  # the two code paths compute exactly the same thing
        for got, ref in zip(remote["main"]["predictions"][city], loaded["main"]["predictions"][city]):
            assert torch.equal(got, ref)
    # The remote code forwards `revision` to the retriever files too.
    assert_same_predictions(remote["pinned"]["predictions"], exported["v1"]["predictions"])


def test_a_push_onto_a_model_or_city_already_there_is_refused_before_any_upload(pushed):
    assert pushed["model_refused_exit"] == 2 and pushed["model_unchanged"]
    assert pushed["model_refused"].startswith(f"model repo {MODEL_REPO} (revision main) already holds a model "
                                              f"(README.md, adaptation_nextlocllm.py, backbone_nextlocllm.py, ")
    assert pushed["model_refused"].endswith("more): pass --overwrite to replace it")
    assert pushed["city_refused_exit"] == 2 and pushed["build_refused_exit"] == 2
    assert pushed["build_refused_nothing_built"] and pushed["city_unchanged"]


def test_pinned_revision_loads_older_weights_and_older_retrievers(loaded, exported, pushed):
    assert pushed["v1"] != pushed["v2"]
    for name in ("pinned", "branch"):  # a commit sha, and a branch pushed with push_model(revision=...)
        old = outcome(loaded[name])
        assert_same_state(old["state"], exported["v1"]["state"])
        assert_same_predictions(old["predictions"], exported["v1"]["predictions"])
        assert len(old["cells"]["calgary"]) == 40  # v1's calgary retriever, not v2's 30 cells
    assert len(outcome(loaded["main"])["cells"]["calgary"]) == 30


def test_local_files_only_after_download_makes_no_request(loaded, exported):
    offline = outcome(loaded["offline"])
    assert loaded["offline_requests"] == 0
    assert_same_predictions(offline["predictions"], exported["v1"]["predictions"])
    assert len(offline["cells"]["calgary"]) == 40


def test_hf_hub_offline_loads_model_and_city_from_the_cache(offline, loaded, exported):
    assert offline["requests"] == 0
    assert_same_predictions(offline["predictions"], exported["v2"]["predictions"])
    assert offline["rows"] == outcome(loaded["alpha"])["rows"]


def test_cache_dir_holds_weights_and_retrievers(loaded, root):
    outcome(loaded["cache_dir"])
    snapshots = list((root / "explicit_cache").glob("models--org--nextlocllm-tiny/snapshots/*"))
    assert len(snapshots) == 1
    names = {p.name for p in snapshots[0].iterdir()}
    assert {"model.safetensors", "retrievers.json", "retrievers.safetensors"} <= names


def test_private_repo_needs_the_token_for_weights_and_retrievers(loaded, exported):
    assert loaded["private_no_token"]["error"] == "OSError"
    assert PRIVATE_REPO in loaded["private_no_token"]["message"]
    private = outcome(loaded["private_token"])
    assert_same_predictions(private["predictions"], exported["v1"]["predictions"])


def test_lora_model_is_self_contained(loaded, exported, root):
    config = json.loads((root / "lora" / "config.json").read_text())
    assert config["adaptation"] == "lora"
    assert config["head_type"] == "mixture_ranker" and config["num_mixture_components"] == 3
    assert config["task_mode"] == "at_time"
    lora = outcome(loaded["lora"])
    assert_same_state(lora["state"], exported["lora"]["state"])
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora["state"].items())
    assert_same_predictions(lora["predictions"], exported["lora"]["predictions"])


def test_lora_adapter_pushed_the_peft_way_predicts_as_the_whole_export(loaded, remote, pushed, exported, root):
    assert pushed["adapter_files"] == [".gitattributes", "README.md", "adapter_config.json",
                                       "adapter_model.safetensors"]
    assert "org/no-such-base" in pushed["adapter_without_base"] and "push-model" in pushed["adapter_without_base"]
    # The base's own layers are fresh (not the trained ones): the adapter's modules_to_save carry those.
    base_state = load_file(root / "lora_base" / "model.safetensors")
    assert not torch.equal(base_state["mixture_head.weight"], exported["lora"]["state"]["mixture_head.weight"])
    assert "lora_A" not in " ".join(base_state)
    adapter = outcome(loaded["adapter"])
    assert adapter["cities"] == list(CITIES)
    assert_same_predictions(adapter["predictions"], exported["lora"]["predictions"])
    assert remote["adapter"]["module"].startswith("transformers_modules.")  # remote code: no package
    assert_same_predictions(remote["adapter"]["predictions"], exported["lora"]["predictions"])
    sizes = exported["adapter_sizes"]
    assert sizes["adapter"] < sizes["base"]


def test_pushed_adapter_names_its_base_and_carries_the_models_own_layers(hub):
    from huggingface_hub import ModelCard

    files = hub.files(ADAPTER_REPO)
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == BASE_REPO and config["peft_type"] == "LORA"
    assert {"coordinate_embedding", "history_projection", "current_poi_projection", "mixture_head",
            "candidate_scorer", "target_time_projection"} <= set(config["modules_to_save"])
    assert "backbone" not in config["modules_to_save"]
    card = ModelCard(files["README.md"].decode(), ignore_metadata_errors=False)
    assert card.data.library_name == "peft" and card.data.base_model == BASE_REPO
    assert f'PeftModel.from_pretrained(base, "{ADAPTER_REPO}")' in card.text


def test_metric_space_loads_and_computes_where_the_package_is_unimportable(remote, pushed, exported):
    assert {"nextloc_metric.py", "metrics_nextlocllm.py", "geometry_nextlocllm.py", "README.md", "app.py",
            "requirements.txt"} <= set(pushed["metric_files"])
    assert remote["metric"]["module"].startswith("evaluate_modules.metrics.org--nextloc_metric.")
    got, expected = remote["metric"]["scores"], exported["metric"]
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert 0 < expected["hit@1"] < expected["hit@5"] < 1


def test_missing_repo_error_names_it(loaded):
    error = loaded["missing_repo"]
    assert error["error"] == "OSError" and "org/does-not-exist" in error["message"]


@pytest.mark.parametrize("kind,filename", [("missing", "retrievers.safetensors"),
                                           ("truncated", "retrievers.safetensors"), ("noindex", "retrievers.json")])
def test_broken_retriever_file_error_names_repo_and_file(loaded, kind, filename):
    error = loaded[f"broken_{kind}"]
    assert "error" in error, f"{BROKEN[kind]} loaded although {filename} is {kind}"
    assert BROKEN[kind] in error["message"] and filename in error["message"], error["message"]


def test_broken_retriever_file_fails_loudly(loaded):
    """Holds before and after the modeling patch: damaged retriever weights never load silently."""
    for kind in ("missing", "truncated"):
        error = loaded[f"broken_{kind}"]
        assert error.get("error") in ("ValueError", "OSError") and "retrievers.safetensors" in error["message"], error


# ---------------------------------------------------------------------------------------------------- model card
def test_pushed_card_validates_and_names_real_metrics(hub, pushed, exported):
    from huggingface_hub import ModelCard

    files = hub.files(MODEL_REPO, revision=pushed["v1"])
    assert {"config.json", "model.safetensors", "retrievers.json", "retrievers.safetensors", "README.md",
            "modeling_nextlocllm.py", "configuration_nextlocllm.py", "retrieval_nextlocllm.py"} <= set(files)
    card = ModelCard(files["README.md"].decode(), ignore_metadata_errors=False)
    values = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    for city, scores in exported["results"]["test"].items():
        for metric in ("hit@1", "hit@5", "hit@10", "mrr", "mean_error_m"):
            assert values[(f"nextlocllm-city/{city}", metric)] == pytest.approx(scores[metric], abs=1e-6)
    assert card.data.license == "apache-2.0" and "next-location-prediction" in card.data.tags
    assert f'pipeline("next-location", model="{MODEL_REPO}", trust_remote_code=True)' in card.text
    validations = [r for r in hub.requests if r["path"] == "/api/validate-yaml" and b'"repoType":"model"' in r["body"]]
    assert len(validations) >= 5 and all(r["status"] == 200 for r in validations)  # every model push was checked
    # The v2 push had no results: the folder's card (no metrics) went up with its usage snippet re-pointed.
    v2_card = hub.files(MODEL_REPO)["README.md"].decode()
    assert f'pipeline("next-location", model="{MODEL_REPO}", trust_remote_code=True)' in v2_card


def test_model_push_to_hub_writes_the_validated_card_of_the_hub_cli(hub, pushed, exported):
    from huggingface_hub import ModelCard

    def card(revision: str) -> ModelCard:
        return ModelCard(hub.files(METHOD_REPO, revision=revision)["README.md"].decode(), ignore_metadata_errors=False)

    commits = hub.repo(METHOD_REPO, "model").commits
    first, kept, changed = (card(sha) for sha in list(commits)[-3:])
    cli = ModelCard(hub.files(MODEL_REPO, revision=pushed["v1"])["README.md"].decode())
    # With results=: the CLI's card for the same folder and results, re-pointed at this repo, plus the tag asked for.
    assert first.text == cli.text.replace(MODEL_REPO, METHOD_REPO)
    assert first.data.eval_results == cli.data.eval_results and "from-push-to-hub" in first.data.tags
    assert kept.data.eval_results == cli.data.eval_results  # the folder's card: its weights were still the folder's
    assert f'model="{METHOD_REPO}"' in kept.text
    assert not changed.data.eval_results and "next-location-prediction" in changed.data.tags  # no stale metrics
    validations = [r for r in hub.requests if r["path"] == "/api/validate-yaml" and b'"repoType":"model"' in r["body"]]
    assert len(validations) >= 8  # the three push_to_hub cards were validated too


def _post(hub, path: str, payload: bytes, headers: dict, method: str = "POST"):
    request = urllib.request.Request(hub.endpoint + path, data=payload, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_server_validate_yaml_rejects_malformed_model_index(hub, pushed):
    good = hub.files(MODEL_REPO, revision=pushed["v1"])["README.md"].decode()
    assert _post(hub, "/api/validate-yaml", json.dumps({"content": good, "repoType": "model"}).encode(),
                 {"Content-Type": "application/json"})[0] == 200
    for broken in (good.replace("value: ", "valeur: ", 1), good.replace("model-index:", "model-index: 3\nx:", 1),
                   "---\nlicense: [unclosed\n---\n"):
        payload = json.dumps({"content": broken, "repoType": "model"}).encode()
        status, _, body = _post(hub, "/api/validate-yaml", payload, {"Content-Type": "application/json"})
        assert status == 400 and json.loads(body)["errors"], broken[:200]


# ------------------------------------------------------------------------------------------------- server checks
def test_server_rejects_unknown_repo_revision_file_and_missing_lfs_object(hub, pushed):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    cases = {
        "/org/nope/resolve/main/config.json": "RepoNotFound",
        f"/{MODEL_REPO}/resolve/no-such-branch/config.json": "RevisionNotFound",
        f"/{MODEL_REPO}/resolve/main/no-such-file.json": "EntryNotFound",
        f"/api/models/{MODEL_REPO}/revision/{'0' * 40}": "RevisionNotFound",
        f"/api/datasets/{MODEL_REPO}/revision/main": "RepoNotFound",  # a model repo is not a dataset repo
        f"/{PRIVATE_REPO}/resolve/main/config.json": "RepoNotFound",  # private, no token
    }
    for path, code in cases.items():
        request = urllib.request.Request(hub.endpoint + path, method="HEAD" if "resolve" in path else "GET")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=10)
        assert error.value.code == 404 and error.value.headers["X-Error-Code"] == code, path

    head = hub.repo(MODEL_REPO).branches["main"]
    lines = [{"key": "header", "value": {"summary": "dangling pointer"}},
             {"key": "lfsFile", "value": {"path": "x.safetensors", "algo": "sha256", "oid": "ab" * 32, "size": 3}}]
    status, _, body = _post(hub, f"/api/models/{MODEL_REPO}/commit/main",
                            b"".join(json.dumps(line).encode() + b"\n" for line in lines),
                            {**auth, "Content-Type": "application/x-ndjson"})
    assert status == 422 and b"never uploaded" in body
    assert hub.repo(MODEL_REPO).branches["main"] == head  # nothing committed

    # An LFS upload whose bytes do not match the announced oid is refused; writes need a valid token.
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": "cd" * 32, "size": 3}]}
    status, _, body = _post(hub, f"/{MODEL_REPO}.git/info/lfs/objects/batch", json.dumps(batch).encode(),
                            {**auth, "Content-Type": "application/json"})
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert _post(hub, href[len(hub.endpoint):], b"abc", {}, method="PUT")[0] == 400
    regular = [lines[0], {"key": "file", "value": {"path": "a.txt", "encoding": "base64",
                                                   "content": base64.b64encode(b"hi").decode()}}]
    payload = b"".join(json.dumps(line).encode() + b"\n" for line in regular)
    ndjson = {"Content-Type": "application/x-ndjson"}
    assert _post(hub, f"/api/models/{MODEL_REPO}/commit/main", payload, ndjson)[0] == 401
    assert _post(hub, f"/api/models/{MODEL_REPO}/commit/main", payload,
                 {"Authorization": "Bearer hf_wrong", "Content-Type": "application/x-ndjson"})[0] == 401
    assert hub.repo(MODEL_REPO).branches["main"] == head


def test_pushed_lfs_files_went_through_the_lfs_route(hub, pushed):
    commit = hub.repo(MODEL_REPO).resolve("main")
    assert commit.files["model.safetensors"].lfs and commit.files["retrievers.safetensors"].lfs
    assert not commit.files["config.json"].lfs
    assert any(r["method"] == "PUT" and r["path"].startswith("/__lfs/upload/") for r in hub.requests)
    data = hub.repo(DATA_REPO, "dataset").resolve("main").files
    assert data["alpha/train-00000-of-00001.parquet"].lfs and data["alpha/cells.parquet"].lfs


def test_push_mirrors_the_export_and_deletes_stale_files(hub, pushed, root):
    repo = hub.repo(MODEL_REPO)
    assert "pytorch_model.bin" in repo.commits[repo.commits[pushed["v2"]].parent].files  # uploaded between v1 and v2
    files = set(hub.files(MODEL_REPO))
    assert files == {".gitattributes", "README.md", *check_model_folder(root / "v2")}  # the stale .bin is gone
    assert "pytorch_model.bin" not in files


def test_no_unknown_routes_were_called(hub, loaded, remote, offline):
    assert hub.unknown_routes == []


# ------------------------------------------------------------------------------------------------------- datasets
def _local(path):
    from nextlocllm_hf.data import load_city_splits

    return load_city_splits(path)


def assert_same_city(got: dict, local) -> None:
    """`got` (a loaded city's summary, CITY_SUMMARY) holds exactly the city folder's samples, cells, city.json and
    retriever."""
    assert got["name"] == local.name
    for split, dataset in local.splits.items():
        assert got["features"][split] == dataset.features
        assert got["rows"][split] == dataset.to_list()
    pd.testing.assert_frame_equal(got["cells"], local.cells)
    assert got["metadata"] == local.metadata
    retriever = local.retriever
    assert (got["retriever"][0] == retriever.cell_ids).all()
    assert (got["retriever"][1] == retriever.coordinate_mean).all()
    assert (got["retriever"][2] == retriever.coordinate_std).all()


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_city_dataset_round_trip(loaded, pushed, name):
    assert outcome(loaded[name])["name"] == name
    assert_same_city(loaded[name], _local(pushed[name]))


def test_city_dataset_is_a_plain_datasets_config(loaded, pushed):
    rows = outcome(loaded["load_dataset"])
    local = _local(pushed["alpha"])
    assert {s: rows[s] for s in local.splits} == {s: d.to_list() for s, d in local.splits.items()}


def test_the_pushed_dataset_card_describes_every_city(hub, pushed):
    from huggingface_hub import DatasetCard

    from nextlocllm_hf.data.card import field_description
    from nextlocllm_hf.data.features import city_features

    card = DatasetCard(hub.files(DATA_REPO, repo_type="dataset")["README.md"].decode())
    assert [config["config_name"] for config in card.data.configs] == ["alpha", "beta"]
    assert all(config["data_files"] for config in card.data.configs)
    assert sorted(info["config_name"] for info in card.data.dataset_info) == ["alpha", "beta"]  # datasets' own
    assert card.data.license == "unknown" and "next-location-prediction" in card.data.tags
    for name in ("alpha", "beta"):
        metadata = _local(pushed[name]).metadata
        assert f"## {name}" in card.text
        assert f"Samples: train {metadata['counts']['samples']['train']:,}" in card.text
    assert "0: Entertainment, 1: Commercial" in card.text
    for field in city_features():
        assert f"| `{field}` |" in card.text and field_description(field) in card.text


def test_city_dataset_revision_and_errors(loaded, pushed):
    pinned = outcome(loaded["alpha_pinned"])
    assert pinned["rows"] == outcome(loaded["alpha"])["rows"]
    assert "'beta' not found" in loaded["beta_pinned"]["message"]  # beta was pushed after that commit
    assert "pass city=NAME" in loaded["which_city"]["message"] and "alpha" in loaded["which_city"]["message"]
    assert "'gamma' not found" in loaded["no_city"]["message"] and "beta" in loaded["no_city"]["message"]
    assert loaded["no_dataset"]["error"] == "FileNotFoundError"
    assert "org/no-such-cities" in loaded["no_dataset"]["message"]


def _lfs_puts(requests: list) -> list:
    return [r for r in requests if r["method"] == "PUT" and r["path"].startswith("/__lfs/upload/")]


def _commits(requests: list) -> list:
    return [r for r in requests if r["method"] == "POST" and "/commit/" in r["path"]]


@pytest.mark.parametrize("stop", STOPS)
def test_a_push_dataset_killed_at_any_step_leaves_the_city_as_it_was(interrupted, stop):
    assert not _commits(interrupted["requests"][stop]) and interrupted["heads"][stop] == interrupted["v1_head"]
    assert_same_city(outcome(interrupted["loaded"][stop]), _local(interrupted["v1"]))


def test_a_push_dataset_was_killed_where_meant(hub, interrupted):
    """Before any upload (the card already validated by the Hub), after one, after all of them (only the commit
    left); the whole push then had only its commit to make."""
    assert any(r["path"] == "/api/validate-yaml" and b'"repoType":"dataset"' in r["body"]
               for r in interrupted["requests"]["before_uploads"])
    files = hub.repo(ATOMIC_REPO, "dataset").resolve(interrupted["heads"]["complete"]).files
    v2_blobs = {blob.sha256 for path, blob in files.items() if blob.lfs and path.startswith("gamma/")}
    new_blobs = v2_blobs - interrupted["lfs_objects"]["v1"]
    uploads = [len(_lfs_puts(interrupted["requests"][stop])) for stop in (*STOPS, "complete")]
    assert uploads == [0, 1, len(new_blobs) - 1, 0]
    assert v2_blobs <= interrupted["lfs_objects"]["before_commit"]


def test_a_whole_push_dataset_replaces_the_city_in_one_commit(hub, interrupted):
    from huggingface_hub import DatasetCard

    storage = hub.repo(ATOMIC_REPO, "dataset")
    assert len(_commits(interrupted["requests"]["complete"])) == 1
    assert storage.commits[interrupted["heads"]["complete"]].parent == interrupted["v1_head"]
    assert storage.commits[storage.commits[interrupted["v1_head"]].parent].parent is None  # v1: one commit too
    v2 = _local(interrupted["v2"])
    assert_same_city(outcome(interrupted["loaded"]["complete"]), v2)

    before = hub.files(ATOMIC_REPO, revision=interrupted["v1_head"], repo_type="dataset")
    after = hub.files(ATOMIC_REPO, repo_type="dataset")
    assert len([p for p in before if p.startswith("gamma/train-")]) > 1  # names v2 does not rewrite: deleted
    records = [path.name for path in sorted(Path(interrupted["v2"]).glob("records-*.arrow"))]
    assert sorted(p for p in after if p.startswith("gamma/")) == sorted(
        [*(f"gamma/{name}" for name in ("cells.parquet", "city.json", *records)),
         *(f"gamma/{split}-00000-of-00001.parquet" for split in v2.splits)])
    assert {p: d for p, d in after.items() if p.startswith("delta/")} == {
        p: d for p, d in before.items() if p.startswith("delta/")}  # the other city is untouched

    card = DatasetCard(after["README.md"].decode())
    assert [config["config_name"] for config in card.data.configs] == ["delta", "gamma"]
    info = {entry["config_name"]: entry for entry in card.data.dataset_info}
    assert {s["name"]: s["num_examples"] for s in info["gamma"]["splits"]} == {n: len(d) for n, d in v2.splits.items()}
    assert info["delta"] == {entry["config_name"]: entry for entry in DatasetCard(
        before["README.md"].decode()).data.dataset_info}["delta"]
    assert "## delta" in card.text and "## gamma" in card.text
    assert f"Samples: train {v2.metadata['counts']['samples']['train']:,}" in card.text


# ----------------------------------------------------------------------------------------------- push-side checks
def test_check_model_folder_refuses_incomplete_exports(root, exported, tmp_path):
    import shutil

    good = root / "v1" / "model"
    assert set(check_model_folder(good)) >= {"config.json", "model.safetensors", "retrievers.json",
                                             "retrievers.safetensors", "modeling_nextlocllm.py"}
    for damage, message in (("truncate", "not a readable safetensors"),
                            ("drop-retrievers", "retrievers.safetensors is missing"),
                            ("drop-code", "is missing"), ("no-auto-map", "no auto_map")):
        folder = tmp_path / damage
        shutil.copytree(good, folder)
        if damage == "truncate":
            data = (folder / "retrievers.safetensors").read_bytes()
            (folder / "retrievers.safetensors").write_bytes(data[:64])
        elif damage == "drop-retrievers":
            (folder / "retrievers.safetensors").unlink()
        elif damage == "drop-code":
            (folder / "retrieval_nextlocllm.py").unlink()
        else:
            config = json.loads((folder / "config.json").read_text())
            del config["auto_map"]
            (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=message):
            check_model_folder(folder)


def test_push_refuses_a_folder_that_holds_the_token(root, exported, tmp_path):
    import shutil

    from nextlocllm_hf.hub import push_model

    folder = tmp_path / "leaky"
    shutil.copytree(root / "v2", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "note": f"pushed with {TOKEN}"}))
    with pytest.raises(ValueError, match="config.json contains the Hub access token") as error:
        push_model(folder, "org/leaky", token=TOKEN)  # refused before any request (the suite is offline anyway)
    assert TOKEN not in str(error.value)


def test_train_py_push_to_hub(hub, root, pushed):
    from huggingface_hub import ModelCard

    output = root / "trained"
    argv = [str(REPO_ROOT / "train.py"), "--dataset", pushed["alpha"], "--backbone", str(root / "backbone-gpt2"),
            "--num_backbone_layers", "2", "--max_steps", "2", "--per_device_batch_size", "8",
            "--per_device_eval_batch_size", "16", "--output_dir", str(output), "--hub_model_id", "org/trained",
            "--push_to_hub"]
    run_client(hub, root, "train", argv)
    files = hub.files("org/trained")
    assert {"model.safetensors", "retrievers.json", "retrievers.safetensors", "README.md"} <= set(files)
    results = json.loads((output / "results.json").read_text())
    card = ModelCard(files["README.md"].decode(), ignore_metadata_errors=False)
    values = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("nextlocllm-city/alpha", "hit@1")] == pytest.approx(results["test"]["alpha"]["hit@1"], abs=1e-6)
    assert 'pipeline("next-location", model="org/trained", trust_remote_code=True)' in card.text
    assert {"pipeline_nextlocllm.py", "records_nextlocllm.py"} <= set(files)  # the pipeline travels with the export


def test_token_never_written_logged_or_sent_outside_authorization(hub, root, loaded, remote, offline):
    needle = TOKEN.encode()
    written = [p for p in root.rglob("*") if p.is_file()]
    assert len(written) > 50  # exports, caches of three clients, cards, specs
    assert [str(p) for p in written if needle in p.read_bytes()] == []
    assert CLIENT_OUTPUTS and not any(TOKEN in output for output in CLIENT_OUTPUTS)
    for request in hub.requests:
        assert needle not in request["body"] and TOKEN not in request["path"], request["path"]
        assert not any(TOKEN in value for value in request["headers"].values()), request["path"]
    # Pushes and the private load succeeded, so the token did travel: in the Authorization header only.
    assert any("/commit/" in r["path"] for r in hub.requests)


def test_git_blob_ids_match_git(hub, pushed):
    """Regular files carry git's blob id (so huggingface_hub skips unchanged files), LFS files their sha256."""
    config = hub.repo(MODEL_REPO).resolve("main").files["config.json"]
    assert config.oid == hashlib.sha1(b"blob %d\0" % len(config.data) + config.data).hexdigest()

