"""Shared fixtures: tiny random GPT-2 and LLaMA backbones saved as real pretrained folders, with a real tokenizer.

The tokenizer is a byte-level BPE trained here on a few sentences, so backbones stay tiny (vocab 300) and the
full `from_backbone` path (load folder, tokenize prompt and POI descriptions, cut blocks) runs offline in seconds.
"""

from __future__ import annotations

import os

# The suite's offline environment, set once, before anything reads it (`datasets` and `evaluate` read theirs when first
# imported). Commands the tests start inherit it through `processes.BASE_ENV`; a test that needs the network (the
# loopback Hub) builds its own environment.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE_ENV)  # whatever the caller had: the suite never reaches the network

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

import nextlocllm_hf
from nextlocllm_hf import CityRetriever, NextLocLLMConfig

TOKENIZER_CORPUS = [
    NextLocLLMConfig().format_prompt(),
    *NextLocLLMConfig().poi_description_texts(),
    "The quick brown fox jumps over the lazy dog near the old market square.",
]

TINY_BACKBONES = {
    "gpt2": lambda vocab: GPT2Model(
        GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=2, n_positions=512, bos_token_id=0, eos_token_id=0)
    ),
    "llama": lambda vocab: LlamaModel(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=0,
            eos_token_id=0,
        )
    ),
}


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """What a test starts in-process (a Dask cluster's workers, data-loader workers) ends with it, even when it fails;
    commands run as subprocesses are bounded and reaped by `processes.py`. Python's multiprocessing resource tracker,
    one per session, stays."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in before and "resource_tracker" not in " ".join(child.cmdline()):
                left.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    for child in left:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=10)


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TOKENIZER_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture(scope="session", params=sorted(TINY_BACKBONES))
def tiny_backbone(request, tmp_path_factory) -> str:
    """Path of a tiny random pretrained backbone folder (one per architecture)."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    TINY_BACKBONES[request.param](len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_tiny_backbone(folder, kind: str = "gpt2", seed: int = 0) -> str:
    """A tiny random backbone of `kind` with the test tokenizer, saved as a pretrained folder; returns its path."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    TINY_BACKBONES[kind](len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def random_cells(num_cells: int, num_classes: int = 5, seed: int = 0, centre=(-8_235_000.0, 4_970_000.0)) -> pd.DataFrame:
    """A candidate-cell table of a made-up city on a 500 m grid around a projected centre."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(num_cells)))
    rows, cols = np.divmod(rng.permutation(side * side)[:num_cells], side)
    x = centre[0] + cols * 500.0 + 250.0
    y = centre[1] + rows * 500.0 + 250.0
    return pd.DataFrame(
        {
            "cell_id": np.arange(num_cells, dtype=np.int64),
            "lat": 40.0 + rows * 0.0045,
            "lon": -74.0 + cols * 0.0059,
            "x": x,
            "y": y,
            "poi_frequency": list(rng.random((num_cells, num_classes)).astype(np.float32)),
        }
    )


def make_retriever(name: str, num_cells: int = 50, seed: int = 0, centre=(-8_235_000.0, 4_970_000.0)) -> CityRetriever:
    cells = random_cells(num_cells, seed=seed, centre=centre)
    mean = [cells["x"].mean(), cells["y"].mean()]
    std = [cells["x"].std() + 1.0, cells["y"].std() + 1.0]
    return CityRetriever.from_cells(name, cells, mean, std)


def make_batch(config: NextLocLLMConfig, retriever: CityRetriever, batch_size: int = 3, seed: int = 0) -> dict:
    """A valid batch whose records lie on the retriever's cells (cell ids included), with labels."""
    rng = np.random.default_rng(seed)
    batch = {}
    for part, length in (("history", config.history_length), ("current", config.current_length)):
        rows = rng.integers(0, retriever.num_cells, (batch_size, length))
        batch[f"{part}_coordinates"] = torch.tensor(retriever.xy[rows] + rng.normal(0, 50, (batch_size, length, 2)))
        batch[f"{part}_day"] = torch.tensor(rng.integers(0, 7, (batch_size, length)))
        batch[f"{part}_hour"] = torch.tensor(rng.integers(0, 24, (batch_size, length)))
        batch[f"{part}_duration"] = torch.tensor(rng.exponential(2.0, (batch_size, length)), dtype=torch.float32)
        batch[f"{part}_poi"] = torch.tensor(retriever.poi_frequency[rows])
        batch[f"{part}_cell"] = torch.tensor(retriever.cell_ids[rows])
    target_rows = rng.integers(0, retriever.num_cells, batch_size)
    batch["labels"] = torch.tensor(retriever.xy[target_rows])
    batch["target_cell"] = torch.tensor(retriever.cell_ids[target_rows])
    if config.task_mode == "at_time":  # the query exists only in that task; a `next` model refuses it
        batch["target_day"] = torch.tensor(rng.integers(0, 7, batch_size))
        batch["target_hour"] = torch.tensor(rng.integers(0, 24, batch_size))
        batch["target_time_gap"] = torch.tensor(rng.exponential(3.0, batch_size), dtype=torch.float32)
    return batch


__all__ = ["nextlocllm_hf"]


def build_model(backbone_path: str, **overrides):
    """A model around a tiny backbone, with short samples and a two-block cut unless overridden; built by hand (no
    recipe: the config's class defaults, the paper's model) unless `recipe=` says otherwise."""
    from nextlocllm_hf import NextLocLLMForCoordinateRegression

    settings = {"recipe": None, "num_backbone_layers": 2, "history_length": 8, "current_length": 3, **overrides}
    return NextLocLLMForCoordinateRegression.from_backbone(backbone_path, **settings)


@pytest.fixture(scope="session")
def city_dir(tmp_path_factory) -> str:
    """The small synthetic city of the inference tests (test_predict, test_records): `helpers.INFERENCE_CITY`, with
    build_model's sample lengths. Built once; tests only read it."""
    from helpers import build_inference_city

    return build_inference_city(tmp_path_factory.mktemp("city"))


def build_synthetic_city(folder, name: str, seed: int, n_users: int = 20, records_per_user: int = 60, **params) -> str:
    """A small synthetic city dataset (EPR mobility model) written to `folder`; returns its path."""
    from nextlocllm_hf.data import BuildConfig, build_and_save

    synthetic = {"n_users": n_users, "records_per_user": records_per_user, "extent_km": 4.0, **params}
    config = BuildConfig(city=name, format="synthetic", output=str(folder), seed=seed, synthetic=synthetic)
    config.show_progress = False
    build_and_save(config)
    return str(folder)
