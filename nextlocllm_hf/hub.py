"""Push exported NextLocLLM models and built city datasets to the Hugging Face Hub (or any Hub-compatible endpoint).

    python -m nextlocllm_hf.hub push-model runs/alpha/model --repo_id ORG/NAME [--results runs/alpha/results.json]
    python -m nextlocllm_hf.hub push-dataset data/alpha [data/beta ...] --repo_id ORG/NAME
    python -m nextlocllm_hf.hub push-adapter runs/lora/adapter --repo_id ORG/NAME --base_model ORG/BASE
    python -m nextlocllm_hf.hub push-metric --repo_id ORG/nextloc_metric

The token comes from `HF_TOKEN` or `hf auth login` (or `token=` in the API); it is never printed, logged or written
into a card, config or checkpoint, and a push is refused if any text file about to be uploaded contains it.

A model repo gets exactly what `load` needs: `config.json` (with `auto_map` and the `next-location` pipeline in
`custom_pipelines`), the safetensors weights, the flat modeling and pipeline code, every city's retriever (`retrievers.json` + `retrievers.safetensors`) and a model card built with
huggingface_hub's card tools and validated by the Hub before the upload. Files of an earlier push that the new export
no longer has are deleted in the same commit, so the repo mirrors the export. A model configured with
`adaptation="lora"` is already self-contained (its LoRA weights sit in `model.safetensors` and `from_pretrained`
rebuilds the adapter layers from the config); a `peft.PeftModel` wrapper is merged first. `push-adapter` pushes the
PEFT adapter of such a model (`nextlocllm_hf.adapters` exports it) for a base pushed with `push-model`, and
`push-metric` the `evaluate` metric (`nextlocllm_hf.evaluate_metric` exports it) as a Space.

A dataset repo gets one config per city, laid out as `DatasetDict.push_to_hub(repo_id, config_name=city)` lays it out
(`<city>/<split>-*.parquet`, the windows, written by `datasets`, plus the card's `configs` / `dataset_info`), and the
city's records shards, `cells.parquet` and `city.json` under `<city>/`, which is what
`load_city_splits(repo_id, city=...)` needs to show the windows as samples and to rebuild the retriever and statistics.
All of it, the card rewritten for every city the repo holds, and the deletion of a replaced city's files that the push
does not rewrite go in one commit, as for a model: a push stopped midway leaves the repo as it was.

Every push is here (about 600 lines), and the model's `push_to_hub` comes here too (`push_to_hub_with_card`): they
share card validation, the commit's operations and one CLI. The checks they share with the commands that run them
before any work (token, repo id, occupied repo) are in `hub_access.py`; the folders pushed are made elsewhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from .adapters import ADAPTER_CARD_NAME, ADAPTER_CONFIG_NAME, ADAPTER_FILES, ADAPTER_WEIGHTS_NAME, adapter_card
from .cli import entry_point, program_name
from .evaluate_metric import check_metric_name, export_metric
from .hub_access import (check_repo_id, hub_api, refuse_occupied_city, refuse_occupied_repo, refuse_token_in,
                         resolve_token)
from .modeling.retrieval_nextlocllm import RETRIEVERS_CONFIG_NAME, RETRIEVERS_WEIGHTS_NAME

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
RETRIEVER_FILES = (RETRIEVERS_CONFIG_NAME, RETRIEVERS_WEIGHTS_NAME)
DEFAULT_MODEL_COMMIT = "Upload NextLocLLM model"
_USAGE_REPO = re.compile(r'(pipeline\(\s*"next-location",\s*model=")([^"]*)(")')  # the card's usage snippet


# ------------------------------------------------------------------------------------------------------ helpers
def _ensure_repo_and_branch(api, repo_id: str, repo_type: str, revision: str | None, private: bool | None) -> None:
    """Create the repo and the branch `revision` (from main) if missing: a commit needs both to exist."""
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)


def _commit_operations(uploads: Mapping[str, bytes | Path], stale: Sequence[str] = ()) -> list:
    """One commit's operations: every upload (bytes, or a file) added and every `stale` path deleted, so that a push
    lands whole or not at all."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes)
                                     else str(content)) for name, content in uploads.items()]
    return operations + [CommitOperationDelete(path_in_repo=name) for name in stale]


# -------------------------------------------------------------------------------------------------------- model
def check_model_folder(folder: str | os.PathLike) -> list[str]:
    """The files of an exported NextLocLLM folder that belong on the Hub; `ValueError` naming what is wrong.

    Checks: `config.json` of model_type `nextlocllm` with an `auto_map` whose code files (and their relative imports)
    are present; safetensors weights (all shards of an index); no adapter-only export; retriever files present and
    readable, with the arrays `retrievers.json` promises; LoRA weights inside the weights when `adaptation="lora"`.
    """
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if "config.json" not in names:
        if "adapter_config.json" in names:
            raise ValueError(f"{folder} holds only a PEFT adapter: merge it into the model (merge_and_unload) and "
                             f"save the full model before pushing")
        raise ValueError(f"{folder} has no config.json: not a saved model folder")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "nextlocllm":
        raise ValueError(f"{folder}/config.json: model_type is {config.get('model_type')!r}, expected 'nextlocllm'")

    # weights
    if "model.safetensors" in names:
        weight_files = ["model.safetensors"]
    elif "model.safetensors.index.json" in names:
        index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
        weight_files = sorted(set(index.get("weight_map", {}).values()))
        missing = [f for f in weight_files if f not in names]
        if missing or not weight_files:
            raise ValueError(f"{folder}: weight shards listed in model.safetensors.index.json are missing: {missing}")
    else:
        raise ValueError(f"{folder} has no safetensors weights (model.safetensors); pickled weights are not pushed")
    keys = set()
    for name in weight_files:
        try:
            with safe_open(folder / name, "np") as f:
                keys.update(f.keys())
        except Exception as error:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise ValueError(f"{folder / name}: not a readable safetensors file ({error})") from error
    if config.get("adaptation") == "lora" and not any("lora_" in key for key in keys):
        raise ValueError(f"{folder}: adaptation='lora' but the weights hold no lora_ tensors")

    # remote code
    auto_map = config.get("auto_map") or {}
    if not auto_map:
        raise ValueError(f"{folder}/config.json has no auto_map: save the model after `import nextlocllm_hf`, so the "
                         f"flat modeling code travels with it (trust_remote_code)")
    code = {f"{ref.split('.')[0]}.py" for ref in auto_map.values() if isinstance(ref, str)}
    # the next-location pipeline (`custom_pipelines`, written by the model's save_pretrained) and its imports
    for task in (config.get("custom_pipelines") or {}).values():
        if isinstance(task, dict) and isinstance(task.get("impl"), str):
            code.add(f"{task['impl'].split('.')[0]}.py")
    pending = sorted(code)
    while pending:
        name = pending.pop()
        if name not in names:
            raise ValueError(f"{folder}: auto_map needs {name}, which is missing")
        for module in re.findall(r"^\s*from\s+\.(\w+)\s+import", (folder / name).read_text(encoding="utf-8"), re.M):
            if f"{module}.py" not in code:
                code.add(f"{module}.py")
                pending.append(f"{module}.py")

    # retrievers
    if RETRIEVER_FILES[0] not in names:
        raise ValueError(f"{folder}: {RETRIEVER_FILES[0]} is missing (save with NextLocLLMForCoordinateRegression."
                         f"save_pretrained, which writes every city's retriever)")
    try:
        cities = json.loads((folder / RETRIEVER_FILES[0]).read_text(encoding="utf-8"))["cities"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder / RETRIEVER_FILES[0]}: not a valid retriever index ({error!r})") from error
    files = ["config.json", *weight_files, *sorted(code), RETRIEVER_FILES[0]]
    if "model.safetensors.index.json" in names and "model.safetensors" not in names:
        files.append("model.safetensors.index.json")
    if cities:
        if RETRIEVER_FILES[1] not in names:
            raise ValueError(f"{folder}: {RETRIEVER_FILES[0]} lists {len(cities)} cities but {RETRIEVER_FILES[1]} "
                             f"is missing")
        try:
            with safe_open(folder / RETRIEVER_FILES[1], "np") as f:
                arrays = set(f.keys())
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"{folder / RETRIEVER_FILES[1]}: not a readable safetensors file ({error})") from error
        expected = {f"cities.{i}.{part}" for i in range(len(cities)) for part in ("cell_ids", "xy", "latlon",
                                                                                   "poi_frequency")}
        if expected - arrays:
            raise ValueError(f"{folder / RETRIEVER_FILES[1]}: missing arrays {sorted(expected - arrays)[:4]}")
        files.append(RETRIEVER_FILES[1])
    for optional in ("generation_config.json",):
        if optional in names:
            files.append(optional)
    return files


def _load_model(folder: Path):
    from .modeling.modeling_nextlocllm import NextLocLLMForCoordinateRegression

    return NextLocLLMForCoordinateRegression.from_pretrained(folder)


def _read_results(results) -> dict | None:
    if results is None or isinstance(results, Mapping):
        return None if results is None else dict(results)
    return json.loads(Path(results).read_text(encoding="utf-8"))


def model_card_for(folder: str | os.PathLike, repo_id: str, results=None, train_cities: Sequence[str] | None = None,
                   dataset_ids: Sequence[str] = (), metric_for_best_model: str = "hit@1"):
    """The card to push: built from `results` (train.py's results.json, a dict or a path) with huggingface_hub's card
    tools; without results, the folder's README.md with its usage snippet pointed at `repo_id`, or else a card with
    no evaluation. Checked locally (metadata parsed strictly, metric values finite)."""
    from huggingface_hub import ModelCard

    folder = Path(folder)
    results = _read_results(results)
    card_path = folder / CARD_NAME
    if results is None and card_path.is_file():
        text = _USAGE_REPO.sub(lambda m: f"{m.group(1)}{repo_id}{m.group(3)}", card_path.read_text(encoding="utf-8"))
        card = ModelCard(text, ignore_metadata_errors=False)
    else:
        from nextlocllm_hf.model_card import build_model_card

        model = _load_model(folder)
        results = results or {}
        cities = list(train_cities or [c for c in results.get("test", {}) if c != "all"] or model.cities)
        card = build_model_card(model, results, repo_id=repo_id, train_cities=cities, dataset_ids=list(dataset_ids),
                                metric_for_best_model=metric_for_best_model)
        card = ModelCard(str(card), ignore_metadata_errors=False)  # re-parse: what is pushed is what is checked
    for result in card.data.eval_results or []:
        value = result.metric_value
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise ValueError(f"model card: metric {result.metric_type} of {result.dataset_name} is {value}")
    return card


def push_model(
    folder_or_model,
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_MODEL_COMMIT,
    commit_description: str | None = None,
    results=None,
    train_cities: Sequence[str] | None = None,
    dataset_ids: Sequence[str] = (),
    metric_for_best_model: str = "hit@1",
    validate_card: bool = True,
    overwrite: bool = False,
    create_pr: bool = False,
    tags: Sequence[str] = (),
):
    """Push an exported model folder (or a model object, saved first) to `repo_id`; returns the `CommitInfo`.

    `revision`: a branch (created from main if missing). `results`: train.py's results.json (dict or path) to
    (re)generate the card with per-city metrics; without it the folder's README.md is pushed (usage snippet
    pointed at `repo_id`). A model object loaded from a folder whose weights it still holds unchanged pushes that
    folder's card (train.py's export has the run's metrics in it); otherwise a card without metrics. `tags` are added
    to the card's. `validate_card`: have the Hub validate the card's metadata first (`/api/validate-yaml`).
    `overwrite`: replace a model already at `revision` (otherwise `FileExistsError` before any upload).
    """
    check_repo_id(repo_id)
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="nextlocllm-push-") as tmp:
        if isinstance(folder_or_model, (str, os.PathLike)):
            folder = Path(folder_or_model)
        else:
            model = folder_or_model
            peft = sys.modules.get("peft")
            if peft is not None and isinstance(model, peft.PeftModel):  # a wrapper: push the merged model
                model = model.merge_and_unload()
            folder = Path(tmp) / "model"
            model.save_pretrained(folder)  # with the next-location pipeline
            source = _unchanged_source_folder(model)
            if source is not None and (source / CARD_NAME).is_file():
                (folder / CARD_NAME).write_bytes((source / CARD_NAME).read_bytes())
        files = check_model_folder(folder)
        skipped = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in {*files, CARD_NAME})
        if skipped:
            logger.info("not pushed (not part of a NextLocLLM model): %s", ", ".join(skipped))
        card = model_card_for(folder, repo_id, results, train_cities, dataset_ids, metric_for_best_model)
        if tags:
            card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags]))
        uploads: dict[str, bytes | Path] = {name: folder / name for name in files}
        uploads[CARD_NAME] = str(card).encode("utf-8")
        refuse_token_in(uploads, token)  # before anything goes over the network
        refuse_occupied_repo(repo_id, repo_type="model", revision=revision, overwrite=overwrite, what="a model",
                             token=token)
        if validate_card:
            card.validate(repo_type="model")

        api = hub_api(token)
        _ensure_repo_and_branch(api, repo_id, "model", revision, private)
        remote = set(api.list_repo_files(repo_id, repo_type="model", revision=revision))
        stale = sorted(remote - set(uploads) - {".gitattributes"})
        info = api.create_commit(repo_id, _commit_operations(uploads, stale), commit_message=commit_message,
                                 commit_description=commit_description, repo_type="model", revision=revision,
                                 create_pr=create_pr)
    logger.info("pushed %s to %s (%d files, %d deleted): %s", folder, repo_id, len(uploads), len(stale),
                info.commit_url)
    return info


def _unchanged_source_folder(model) -> Path | None:
    """The local folder `model` was loaded from, if its weights there are still exactly the model's (so the card's
    metrics describe it)."""
    from safetensors.torch import load_file

    folder = Path(str(getattr(model.config, "name_or_path", "") or ""))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    saved, current = load_file(weights), model.state_dict()
    same = saved.keys() == current.keys() and all(
        tensor.shape == current[key].shape and bool((tensor == current[key].detach().cpu()).all())
        for key, tensor in saved.items())
    if not same:
        logger.info("%s: the model's weights differ from the folder's; its card's metrics are not pushed", folder)
    return folder if same else None


def push_to_hub_with_card(model, repo_id: str, *, commit_message: str | None = None,
                          commit_description: str | None = None, private: bool | None = None,
                          token: bool | str | None = None, revision: str | None = None, create_pr: bool = False,
                          tags: Sequence[str] | None = None, **options):
    """`model.push_to_hub` where this package is installed: transformers' arguments, then `push_model` (the
    validated card; `results=`, `train_cities=`, `dataset_ids=` as there). Like transformers', it pushes over what
    the repo holds."""
    return push_model(model, repo_id, token=token if isinstance(token, str) else None, revision=revision,
                      private=private, commit_message=commit_message or DEFAULT_MODEL_COMMIT,
                      commit_description=commit_description, create_pr=create_pr, tags=tags or (), overwrite=True,
                      **options)


# ------------------------------------------------------------------------------------------------------ dataset
def _city_dirs(city_dir_or_dirs) -> list[Path]:
    from .data.city_dataset import is_city_folder

    items = [city_dir_or_dirs] if isinstance(city_dir_or_dirs, (str, os.PathLike)) else list(city_dir_or_dirs)
    dirs: list[Path] = []
    for item in items:
        path = Path(item)
        if is_city_folder(path):
            dirs.append(path)
        elif path.is_dir() and any(is_city_folder(d) for d in path.iterdir()):
            dirs += sorted(d for d in path.iterdir() if is_city_folder(d))
        else:
            raise FileNotFoundError(f"{path} is not a city folder (no city.json) and holds none")
    if not dirs:
        raise ValueError("no city folder to push")
    return dirs


def _city_name(directory: Path) -> str:
    return json.loads((directory / "city.json").read_text(encoding="utf-8"))["city"]


def push_city_dataset(
    city_dir_or_dirs,
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    max_shard_size: str | int | None = None,
    overwrite: bool = False,
):
    """Push built cities to a dataset repo, one config per city, in one commit; returns its `CommitInfo`.

    `city_dir_or_dirs`: a city folder (build_city.py output), a folder of city folders, or a list of either.
    `max_shard_size`: of a split's parquet shards (default `datasets`'). `overwrite`: replace a city the repo already
    holds (otherwise `FileExistsError` before any upload; other cities of the repo are never touched). The commit is
    made on the revision read for the card (`parent_commit`): a commit that lands in between fails the push (412).
    """
    from .data.city_dataset import load_city_splits
    from .data.windows import RECORDS_PATTERN

    check_repo_id(repo_id)
    token = resolve_token(token)
    dirs = _city_dirs(city_dir_or_dirs)
    names = [_city_name(directory) for directory in dirs]
    for directory, name in zip(dirs, names):  # every check before the first upload
        if not re.fullmatch(r"[\w.-]+", name) or names.count(name) > 1:
            raise ValueError(f"{directory}: city name {name!r} is not a usable, unique config name")
        refuse_token_in({f"{name}/{file}": directory / file for file in ("cells.parquet", "city.json")}, token)
    for name in names:
        refuse_occupied_city(repo_id, name, revision=revision, overwrite=overwrite, token=token)
    with tempfile.TemporaryDirectory(prefix="nextlocllm-push-") as tmp:
        uploads: dict[str, bytes | Path] = {}
        configs, infos, metadata = {}, {}, {}
        for directory in dirs:
            city = load_city_splits(directory)
            splits, configs[city.name], infos[city.name] = _write_split_shards(city, Path(tmp), max_shard_size)
            uploads.update(splits)
            uploads.update({f"{city.name}/{name}": directory / name for name in ("cells.parquet", "city.json")})
            uploads.update({f"{city.name}/{path.name}": path for path in sorted(directory.glob(RECORDS_PATTERN))})
            metadata[city.name] = city.metadata

        api = hub_api(token)
        _ensure_repo_and_branch(api, repo_id, "dataset", revision, private)
        parent = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
        remote = set(api.list_repo_files(repo_id, repo_type="dataset", revision=parent))
        uploads[CARD_NAME] = str(_dataset_card(api, repo_id, parent, remote, configs, infos, metadata)).encode()
        refuse_token_in({CARD_NAME: uploads[CARD_NAME]}, token)
        stale = sorted(path for path in remote - set(uploads) if any(path.startswith(f"{name}/") for name in names))
        message = commit_message or f"Upload {'city' if len(names) == 1 else 'cities'} {', '.join(names)}"
        # create_commit has the Hub validate the card before it uploads anything
        info = api.create_commit(repo_id, _commit_operations(uploads, stale), commit_message=message,
                                 repo_type="dataset", revision=revision, parent_commit=parent)
    logger.info("pushed cities %s to dataset %s (%d files, %d deleted): %s", ", ".join(names), repo_id, len(uploads),
                len(stale), info.commit_url)
    return info


def _write_split_shards(city, folder: Path, max_shard_size: str | int | None):
    """Write `city`'s splits (the windows) under `folder` as `DatasetDict.push_to_hub` shards them
    (`<city>/<split>-0000i-of-0000n.parquet`, written by `datasets`); returns {path in repo: file}, the card's
    `configs` entry and the `DatasetInfo` that push_to_hub would have written into the card."""
    from datasets import DatasetInfo, SplitInfo
    from datasets import config as datasets_config
    from datasets.splits import SplitDict
    from datasets.utils.py_utils import convert_file_size_to_int

    limit = convert_file_size_to_int(max_shard_size or datasets_config.MAX_SHARD_SIZE)
    files: dict[str, Path] = {}
    info = DatasetInfo(config_name=city.name, features=city.splits["train"].features, splits=SplitDict(),
                       download_size=0, dataset_size=0)
    for split, dataset in city.splits.items():
        num_bytes = dataset.data.nbytes  # datasets' estimate: the split is its whole table (no indices)
        num_shards = num_bytes // limit + 1
        for index in range(num_shards):
            path_in_repo = f"{city.name}/{split}-{index:05d}-of-{num_shards:05d}.parquet"
            files[path_in_repo] = folder / path_in_repo
            files[path_in_repo].parent.mkdir(parents=True, exist_ok=True)
            dataset.shard(num_shards=num_shards, index=index, contiguous=True).to_parquet(files[path_in_repo])
            info.download_size += files[path_in_repo].stat().st_size
        info.splits.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(dataset)))
        info.dataset_size += num_bytes
    info.size_in_bytes = info.download_size + info.dataset_size
    config = {"data_files": [{"split": split, "path": f"{city.name}/{split}-*"} for split in city.splits]}
    return files, config, info


def _dataset_card(api, repo_id: str, parent: str, remote: set[str], configs: Mapping, infos: Mapping,
                  metadata: Mapping):
    """The repo's card once the pushed cities are in: the `configs` and `dataset_info` of the card at `parent`, with
    the pushed cities' merged in as `datasets` merges them, and the package's metadata and body for every city the repo
    will hold (the others' from their `<city>/city.json` at `parent`)."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    from nextlocllm_hf.data.card import dataset_card

    def download(path: str) -> str:
        return api.hf_hub_download(repo_id, path, repo_type="dataset", revision=parent)

    data = (DatasetCard.load(download(CARD_NAME), repo_type="dataset").data if CARD_NAME in remote
            else DatasetCardData())
    MetadataConfigs(configs).to_dataset_card_data(data)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    cities = [metadata[name] if name in metadata else
              json.loads(Path(download(f"{name}/city.json")).read_text(encoding="utf-8"))
              for name in (config["config_name"] for config in data.configs)
              if name in metadata or f"{name}/city.json" in remote]
    return dataset_card(cities, configs=data.configs, dataset_info=data.dataset_info)


# ------------------------------------------------------------------------------------------------------ adapter
def push_adapter(folder: str | os.PathLike, repo_id: str, base_model: str, *, token: str | None = None,
                 private: bool | None = None, overwrite: bool = False,
                 commit_message: str = "Upload NextLocLLM LoRA adapter", tags: Sequence[str] = ()):
    """Push an adapter folder (`adapters.export_lora_adapter` writes one) to `repo_id` with `adapter_config.json`
    pointing at `base_model` (a model repo that must exist) and a validated card; returns the `CommitInfo`.
    `overwrite` as in `push_model`."""
    from huggingface_hub.errors import RepositoryNotFoundError

    check_repo_id(repo_id)
    check_repo_id(base_model)
    folder = Path(folder)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not an adapter folder (export_lora_adapter writes one): no "
                                f"{', '.join(missing)}")
    token = resolve_token(token)
    api = hub_api(token)
    try:
        api.model_info(base_model)
    except RepositoryNotFoundError as error:
        raise ValueError(f"base_model {base_model!r} is not on the Hub: push the base folder first "
                         f"(nextlocllm-hub push-model BASE_FOLDER --repo_id {base_model})") from error
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model
    card = adapter_card(base_model, repo_id)
    if tags:
        card.data.tags = list(dict.fromkeys([*card.data.tags, *tags]))
    uploads: dict[str, bytes | Path] = {
        ADAPTER_CONFIG_NAME: json.dumps(config, indent=2, sort_keys=True).encode("utf-8"),
        ADAPTER_WEIGHTS_NAME: folder / ADAPTER_WEIGHTS_NAME,
        ADAPTER_CARD_NAME: str(card).encode("utf-8"),
    }
    refuse_token_in(uploads, token)
    refuse_occupied_repo(repo_id, repo_type="model", revision=None, overwrite=overwrite, what="an adapter",
                         token=token)
    card.validate(repo_type="model")
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.create_commit(repo_id, _commit_operations(uploads), commit_message=commit_message, repo_type="model")


# ------------------------------------------------------------------------------------------------------- metric
def push_metric(repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload the NextLoc metric", validate_card: bool = True):
    """Push the exported `evaluate` metric (`evaluate_metric.export_metric`) as a Gradio Space `repo_id` (its name
    is the script's); returns the `CommitInfo`.

    The card's metadata is validated by the Hub first, and no file holding the token is uploaded.
    """
    from huggingface_hub import SpaceCard

    check_repo_id(repo_id)
    name = check_metric_name(repo_id.split("/")[1])
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="nextloc-metric-") as tmp:
        folder = Path(tmp) / name
        export_metric(folder, name)
        refuse_token_in({path.name: path for path in folder.iterdir()}, token)
        if validate_card:
            SpaceCard.load(folder / "README.md").validate(repo_type="space")
        api = hub_api(token)
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(folder),
                                 commit_message=commit_message)


# ---------------------------------------------------------------------------------------------------------- CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("nextlocllm_hf.hub"),
        description="Push NextLocLLM models and city datasets to the Hub. The token comes from HF_TOKEN or "
                    "`hf auth login` (it is never accepted on the command line, which shells and ps would keep).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("push-model", help="push an exported model folder (train.py's OUTPUT/model)")
    model.add_argument("folder")
    model.add_argument("--repo_id", required=True, help="ORG/NAME")
    model.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    model.add_argument("--private", action="store_true", help="create the repo private")
    model.add_argument("--results", default=None,
                       help="results.json for the card (default: FOLDER/../results.json when it exists)")
    model.add_argument("--train_cities", nargs="*", default=None, help="cities trained on (default: from results)")
    model.add_argument("--dataset_ids", nargs="*", default=[], help="Hub dataset ids to list in the card")
    model.add_argument("--commit_message", default=DEFAULT_MODEL_COMMIT)
    model.add_argument("--overwrite", action="store_true", help="replace a model already at --revision of the repo")
    data = sub.add_parser("push-dataset", help="push built city folders, one config per city")
    data.add_argument("cities", nargs="+", help="city folders or folders of cities")
    data.add_argument("--repo_id", required=True, help="ORG/NAME")
    data.add_argument("--revision", default=None)
    data.add_argument("--private", action="store_true")
    data.add_argument("--commit_message", default=None)
    data.add_argument("--overwrite", action="store_true", help="replace cities the repo already holds")
    adapter = sub.add_parser("push-adapter", help="push a PEFT adapter folder (train.py --export_adapter's "
                                                  "OUTPUT/adapter) for a base already pushed with push-model")
    adapter.add_argument("folder")
    adapter.add_argument("--repo_id", required=True, help="ORG/NAME")
    adapter.add_argument("--base_model", required=True, help="ORG/NAME of the pushed base (OUTPUT/adapter_base)")
    adapter.add_argument("--private", action="store_true")
    adapter.add_argument("--overwrite", action="store_true", help="replace an adapter the repo already holds")
    metric = sub.add_parser("push-metric", help="push the self-contained evaluate metric as a Space "
                                               "(its name is the script's: evaluate.load('ORG/NAME'))")
    metric.add_argument("--repo_id", required=True, help="ORG/NAME, e.g. ORG/nextloc_metric")
    metric.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_repo_id(args.repo_id)
    except ValueError as error:
        parser.error(f"--repo_id: {error}")
    if args.command == "push-adapter":
        try:
            check_repo_id(args.base_model)
        except ValueError as error:
            parser.error(f"--base_model: {error}")
    return args


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.command == "push-model":
        results = args.results
        default = Path(args.folder).resolve().parent / "results.json"
        if results is None and default.is_file():
            results = default
            print(f"card metrics from {default}")
        info = push_model(args.folder, args.repo_id, revision=args.revision, private=args.private or None,
                          results=results, train_cities=args.train_cities, dataset_ids=args.dataset_ids,
                          commit_message=args.commit_message, overwrite=args.overwrite)
        print(f"pushed {args.folder} -> {args.repo_id}: {info.commit_url}")
    elif args.command == "push-adapter":
        info = push_adapter(args.folder, args.repo_id, args.base_model, private=args.private or None,
                            overwrite=args.overwrite)
        print(f"pushed {args.folder} -> {args.repo_id} (base {args.base_model}): {info.commit_url}")
    elif args.command == "push-metric":
        info = push_metric(args.repo_id, private=args.private or None)
        print(f"pushed the metric -> space {args.repo_id}: {info.commit_url}")
    else:
        info = push_city_dataset(args.cities, args.repo_id, revision=args.revision, private=args.private or None,
                                 commit_message=args.commit_message, overwrite=args.overwrite)
        print(f"pushed {' '.join(args.cities)} -> dataset {args.repo_id}: {info.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["push_model", "push_city_dataset", "push_adapter", "push_metric", "push_to_hub_with_card",
           "check_model_folder", "model_card_for", "main"]
