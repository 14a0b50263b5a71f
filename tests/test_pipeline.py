"""The `next-location` pipeline shipped with the model: raw records -> top-k cells where `nextlocllm_hf` cannot be
imported (local folder and loopback Hub), equal to the package's CLI on the same records; in process, the model's own
`predict` on the sample the training batches hold."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_BACKBONES, build_model, build_tokenizer
from helpers import great_circle_m, printed_table, sample_and_records, write_csv
from hub_server import LoopbackHub
from processes import run as run_bounded

from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits
from nextlocllm_hf.data.synthetic import SyntheticCityParams, generate_synthetic_city
from nextlocllm_hf.hub import check_model_folder
from nextlocllm_hf.modeling.pipeline_nextlocllm import TASK
from nextlocllm_hf.predict import main

CITY, SEED = "synth-pipe", 4
SYNTHETIC = {"n_users": 8, "records_per_user": 50, "extent_km": 3.0}
H, L, K = 8, 3, 5
USERS = 3
TIMEOUT = 300

# Runs where the package is unimportable: only the model folder's (or repo's) own code can serve the pipeline.
CLIENT = """
import json, sys
sys.modules["nextlocllm_hf"] = None
try:
    import nextlocllm_hf
    raise SystemExit("nextlocllm_hf is importable")
except ImportError:
    pass
import pandas as pd
from transformers import pipeline
spec = json.load(open(sys.argv[1]))
out = {}

def plain(result):
    if isinstance(result, list):
        return [plain(r) for r in result]
    return {key: value for key, value in result.items() if key != "records"}

def run(name, model, records, **kwargs):
    pipe = pipeline("next-location", model=model, trust_remote_code=True)
    try:
        out[name] = plain(pipe(records, **kwargs))
        out[name + ":module"] = type(pipe).__module__
    except (ValueError, FileNotFoundError) as error:
        out[name] = {"error": str(error)}

for name, case in spec["cases"].items():
    records = case["records"]
    if case.get("as") == "dicts":
        records = pd.read_csv(records).to_dict("records")
    run(name, case["model"], records, **case.get("kwargs", {}))
json.dump(out, open(spec["out"], "w"))
"""


def client_env(root: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "PYTHONPATH"}
    env.update({"HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def run_client(root: Path, name: str, cases: dict, script: str = CLIENT, **env) -> dict:
    spec = root / f"{name}.json"
    spec.write_text(json.dumps({"cases": cases, "out": str(root / f"{name}.out.json")}))
    result = run_bounded([sys.executable, "-c", textwrap.dedent(script), str(spec)], env=client_env(root, **env),
                         cwd=root, timeout=TIMEOUT)
    assert result.returncode == 0, f"{name} client failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads((root / f"{name}.out.json").read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def exported(root):
    """A built city, users' raw records, and three models saved with the pipeline: next (with the city), the same
    weights without any city, and an at_time model with the candidate ranker."""
    city_dir = root / "city"
    build_and_save(BuildConfig(city=CITY, format="synthetic", output=str(city_dir), seed=SEED, history_length=H,
                               current_length=L, synthetic=SYNTHETIC, show_progress=False))
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    TINY_BACKBONES["gpt2"](len(tokenizer)).save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    retriever = load_city_splits(city_dir).retriever
    torch.manual_seed(1)
    model = build_model(str(root / "backbone"))
    model.save_pretrained(root / "bare")
    model.add_city(retriever)
    model.save_pretrained(root / "next")
    torch.manual_seed(2)
    at_time = build_model(str(root / "backbone"), task_mode="at_time", head_type="point_ranker", max_candidates=16)
    at_time.add_city(retriever)
    at_time.save_pretrained(root / "at_time")

    raw, _, _ = generate_synthetic_city(SyntheticCityParams(city=CITY, seed=SEED, **SYNTHETIC))
    frames, files, times = [], [], []
    for index, user in enumerate(sorted(raw["user_id"].unique())[:USERS]):
        rows = raw[raw["user_id"] == user].sort_values("ts").iloc[5 + index: 5 + index + H + L + 2]
        frame = pd.DataFrame({
            "user": user, "lat": rows["lat"].to_numpy(), "lon": rows["lon"].to_numpy(),
            "local_time": pd.to_datetime(rows["local_ts"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(),
        })
        files.append(str(root / f"user{index}.csv"))
        frame.drop(columns="user").to_csv(files[-1], index=False)
        frames.append(frame)
        times.append((pd.Timestamp(frame["local_time"].iloc[-1]) + pd.Timedelta(hours=2 + index)).isoformat(" "))
    everyone = pd.concat(frames).sample(frac=1.0, random_state=0)  # users interleaved, rows shuffled
    everyone.to_csv(root / "everyone.csv", index=False)
    bad = everyone.astype({"lat": object}).reset_index(drop=True)
    bad.loc[4, "lat"] = "north"
    bad.to_csv(root / "bad.csv", index=False)
    return {"city": str(city_dir), "users": [f["user"].iloc[0] for f in frames], "files": files, "times": times,
            "everyone": str(root / "everyone.csv"), "bad": str(root / "bad.csv"), "bad_user": bad.loc[4, "user"],
            "models": {name: str(root / name) for name in ("next", "bare", "at_time")}}


def cli(capsys, *argv) -> tuple[str, pd.DataFrame]:
    assert main(list(argv)) == 0
    printed = capsys.readouterr().out
    return printed, printed_table(printed)


def assert_same_as_cli(result: dict, printed: str, table: pd.DataFrame) -> None:
    """A pipeline result shows what the CLI printed: cells, positions (6 decimals), distances (0.1 m), probabilities
    and scores (3 decimals), the last record and the regressed point."""
    cells = pd.DataFrame(result["cells"])
    assert cells["cell_id"].tolist() == table["cell_id"].tolist()
    assert cells["rank"].tolist() == list(range(1, K + 1))
    for column, digits in (("lat", 6), ("lon", 6), ("distance_from_last_m", 1)):  # fixed by the cells and records
        assert [f"{v:.{digits}f}" for v in cells[column]] == [f"{v:.{digits}f}" for v in table[column]]
    for column in ("probability", "score"):  # the model's, from another process: equal up to the last digit printed
        np.testing.assert_allclose(cells[column], table[column], rtol=0, atol=1.01e-3)
    point, last = result["regressed_point"], result["last_record"]
    assert f"regressed point (the position head's, not the answer): lat {point['lat']:.6f}, lon {point['lon']:.6f}" \
        in printed
    assert f"last record: {last['local_time']} at lat {last['lat']:.6f}, lon {last['lon']:.6f}" in printed
    assert result["city"] == CITY


@pytest.fixture(scope="module")
def remote(root, exported):
    models, files, times = exported["models"], exported["files"], exported["times"]
    cases = {
        **{f"known{i}": {"model": models["next"], "records": f, "kwargs": {"k": K}} for i, f in enumerate(files)},
        "known_many": {"model": models["next"], "records": exported["everyone"], "as": "dicts", "kwargs": {"k": K}},
        "unseen_many": {"model": models["bare"], "records": exported["everyone"],
                        "kwargs": {"k": K, "cells": exported["city"]}},
        "at_time_many": {"model": models["at_time"], "records": exported["everyone"],
                         "kwargs": {"k": K, "city": CITY, "at": dict(zip(exported["users"], times))}},
        "bad_value": {"model": models["next"], "records": exported["bad"], "kwargs": {"k": K}},
        "bad_k": {"model": models["next"], "records": files[0], "kwargs": {"k": 0}},
        "at_for_next": {"model": models["next"], "records": files[0], "kwargs": {"at": times[0]}},
        "at_missing": {"model": models["at_time"], "records": files[0]},
        "unknown_city": {"model": models["next"], "records": files[0], "kwargs": {"city": "atlantis"}},
    }
    return run_client(root, "local", cases)


def by_user(results: list) -> dict:
    return {result["user"]: result for result in results}


def test_the_exported_folder_carries_the_pipeline(exported):
    folder = Path(exported["models"]["next"])
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_nextlocllm.NextLocationPipeline"
    assert config["custom_pipelines"][TASK]["pt"] == ["AutoModel"]
    files = check_model_folder(folder)
    for name in ("pipeline_nextlocllm.py", "records_nextlocllm.py", "geometry_nextlocllm.py", "grid_nextlocllm.py",
                 "retrieval_nextlocllm.py", "modeling_nextlocllm.py"):
        assert name in files


def test_known_city_without_the_package_equals_the_cli(remote, exported, capsys):
    assert remote["known0:module"].startswith("transformers_modules.")
    many = by_user(remote["known_many"])
    for index, (user, csv) in enumerate(zip(exported["users"], exported["files"])):
        printed, table = cli(capsys, "--model", exported["models"]["next"], "--city", CITY, "--input", csv,
                             "--k", str(K))
        assert remote[f"known{index}"]["user"] is None
        assert_same_as_cli(remote[f"known{index}"], printed, table)
        assert_same_as_cli(many[user], printed, table)  # one call for every user, from a list of dicts


def test_unseen_city_from_its_cells_equals_the_cli(remote, exported, capsys):
    unseen = by_user(remote["unseen_many"])
    assert sorted(unseen) == sorted(exported["users"])
    for user, csv in zip(exported["users"], exported["files"]):
        printed, table = cli(capsys, "--model", exported["models"]["bare"], "--city", CITY, "--input", csv,
                             "--k", str(K), "--cells", exported["city"])
        assert_same_as_cli(unseen[user], printed, table)


def test_at_time_with_a_time_per_user_equals_the_cli(remote, exported, capsys):
    results = by_user(remote["at_time_many"])
    for user, csv, at in zip(exported["users"], exported["files"], exported["times"]):
        printed, table = cli(capsys, "--model", exported["models"]["at_time"], "--city", CITY, "--input", csv,
                             "--k", str(K), "--at", at)
        assert_same_as_cli(results[user], printed, table)
        scores = [cell["score"] for cell in results[user]["cells"]]
        scored = [s for s in scores if not np.isnan(s)]
        assert scored == sorted(scored, reverse=True)  # ranked by the candidate ranker's scores, best first


def test_bad_input_names_the_field_and_the_value(remote, exported):
    assert remote["bad_value"]["error"].startswith(f"user {exported['bad_user']!r}: ")
    assert "data row 5: lat='north' is not a finite number" in remote["bad_value"]["error"]
    assert remote["bad_k"]["error"].startswith("k=0: expected an integer from 1 to the")
    assert "trained for task_mode='next'" in remote["at_for_next"]["error"]
    assert "trained for task_mode='at_time'" in remote["at_missing"]["error"]
    assert "city='atlantis' is unknown to this model" in remote["unknown_city"]["error"]


def test_hub_repo_serves_the_pipeline_without_the_package(root, exported, remote):
    """Push the export through the package's push_model to the loopback Hub, then run the pipeline from the repo."""
    server = LoopbackHub(tokens={"hf_pipelineTOKEN": {"name": "alice", "orgs": ["org"]}}).start()
    try:
        hub_env = {"HF_ENDPOINT": server.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
                   "HF_TOKEN": "hf_pipelineTOKEN", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        push = (f"from nextlocllm_hf.hub import push_model\n"
                f"push_model({exported['models']['next']!r}, 'org/nextlocllm-pipeline', validate_card=False)\n")
        result = run_bounded([sys.executable, "-c", push], env=client_env(root, **hub_env), cwd=root,
                             timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr[-4000:]
        got = run_client(root, "hub", {"many": {"model": "org/nextlocllm-pipeline", "records": exported["everyone"],
                                                "kwargs": {"k": K}}}, HF_HOME=str(root / "hf_home_hub"), **hub_env)
    finally:
        server.stop()
    assert got["many:module"].startswith("transformers_modules.")
    assert json.dumps(got["many"]) == json.dumps(remote["known_many"])  # NaN (no probability) equal to itself


def test_a_model_object_in_process_ranks_like_model_predict(exported, tmp_path):
    """With the package imported, the task is registered: `pipeline(TASK, model=<model object>)` needs no folder. On
    the raw records of a test sample it gives what the model's own `predict` gives on that sample as the training
    batches hold it (`CitySamples`): the same cells, scores and regressed point, each cell's centre from the city's
    cells table and its great-circle distance from the last record, written out here."""
    from transformers import AutoModel, pipeline

    registered = run_bounded(  # a fresh process: this module's own imports registered it here already
        [sys.executable, "-c", "import nextlocllm_hf; from transformers.pipelines import PIPELINE_REGISTRY; "
                               f"print({TASK!r} in PIPELINE_REGISTRY.get_supported_tasks())"], timeout=TIMEOUT)
    assert registered.stdout.strip() == "True", registered.stderr[-2000:]

    from nextlocllm_hf import NextLocationPipeline
    from nextlocllm_hf.data.projection import mercator_to_lonlat

    model = AutoModel.from_pretrained(exported["models"]["next"])
    pipe = pipeline(TASK, model=model)
    assert isinstance(pipe, NextLocationPipeline)
    sample, raw = sample_and_records(exported["city"])
    result = pipe(write_csv(raw, tmp_path / "user.csv"), k=K)

    expected = model.predict(sample, city=CITY, k=K)
    cells = pd.DataFrame(result["cells"])
    assert result["city"] == CITY and cells["rank"].tolist() == list(range(1, K + 1))
    assert cells["cell_id"].tolist() == expected.top_k_cells[0].tolist()
    lon, lat = mercator_to_lonlat(*expected.coordinates[0].numpy())
    assert (result["regressed_point"]["lat"], result["regressed_point"]["lon"]) == pytest.approx((lat, lon), abs=1e-9)
    centres = load_city_splits(exported["city"]).cells.set_index("cell_id").loc[cells["cell_id"]]
    np.testing.assert_allclose(cells[["lat", "lon"]].to_numpy(), centres[["lat", "lon"]].to_numpy(), rtol=0,
                               atol=1e-9)
    last = raw.iloc[-1]  # the last record, where distances start
    assert (result["last_record"]["lat"], result["last_record"]["lon"]) == pytest.approx((last["lat"], last["lon"]))
    np.testing.assert_allclose(cells["distance_from_last_m"],
                               great_circle_m(last["lat"], last["lon"], cells["lat"], cells["lon"]), rtol=1e-9)
    np.testing.assert_allclose(result["regressed_point"]["distance_from_last_m"],
                               great_circle_m(last["lat"], last["lon"], lat, lon), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(cells["score"], expected.top_k_scores[0].double().numpy(), rtol=1e-6)


def test_durations_follow_the_cap_the_city_was_built_with(exported):
    """A city's retriever carries its duration cap: the pipeline clips raw gaps to it unless told otherwise."""
    from transformers import AutoModel, pipeline

    from nextlocllm_hf import CityRetriever

    model = AutoModel.from_pretrained(exported["models"]["bare"])
    city = load_city_splits(exported["city"])
    capped = CityRetriever.from_city({**city.metadata, "max_duration_hours": 2.0}, city.cells)
    pipe = pipeline(TASK, model=model)
    durations = pipe(exported["files"][0], cells=capped, k=K)["records"]["duration"]
    assert durations.max() <= 2.0
    raw = pipe(exported["files"][0], cells=capped, k=K, max_duration_hours=0)["records"]["duration"]
    assert raw.max() > 2.0  # the records do have longer gaps: the cap above did the clipping
    np.testing.assert_allclose(np.minimum(raw.to_numpy()[:-1], 2.0), durations.to_numpy()[:-1], rtol=1e-6)
