"""ID-classification neural baseline (LibCity RNN/LSTM, DeepMove-style input): next cell as a softmax over cell ids.

Each record of ``history + current`` (oldest first) is embedded as ``[cell id | hour of day | day of week]``
(``Embedding(num_cells + 1)`` with the extra id ``num_cells`` reserved for padding: a negative cell id in the input is
treated as padding; ``Embedding(24)``; ``Embedding(7)``), an LSTM (or GRU) runs over the sequence, and the output at
the last record goes through dropout and a ``Linear(hidden, num_cells)`` (optionally concatenated with the target
record's hour/day embeddings, ``use_target_time=True``, off by default like the coordinate model). Training minimises
cross-entropy against ``target_cell`` with Adam and gradient-norm clipping at 5, and keeps the epoch with the best
validation Hit@1 (higher is better; the earliest epoch wins ties). The test split is never looked at.

Cell ids are the city's dense ids ``0 .. num_cells - 1``: the model's output layer **is** that city's id space, so it
cannot rank another city. ``rank_with_id_classifier`` raises ``ValueError`` when the rows come from another city, when
their cell ids fall outside the id space or when the given ``num_cells`` differs from the model's.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..columns import rows_to_arrays
from .rules import num_rows, record_cells, row_cities

CONFIG_NAME = "id_classifier_config.json"
WEIGHTS_NAME = "id_classifier.safetensors"
INPUT_COLUMNS = ("history_cell", "current_cell", "history_hour", "current_hour", "history_day", "current_day")


class IDClassifier(nn.Module):
    """Embeddings of cell id (+1 padding id), hour and day -> LSTM/GRU -> linear softmax over ``num_cells`` cells."""

    def __init__(
        self,
        num_cells: int,
        *,
        cell_embedding_dim: int = 64,
        time_embedding_dim: int = 16,
        hidden_size: int = 128,
        num_layers: int = 1,
        rnn_type: str = "lstm",
        dropout: float = 0.1,
        use_target_time: bool = False,
        city: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_cells, bool) or not isinstance(num_cells, (int, np.integer)) or num_cells < 1:
            raise ValueError(f"num_cells={num_cells!r}: expected a positive integer")
        if rnn_type not in ("lstm", "gru"):
            raise ValueError(f"rnn_type={rnn_type!r}: expected 'lstm' or 'gru'")
        self.config = {
            "num_cells": int(num_cells),
            "cell_embedding_dim": int(cell_embedding_dim),
            "time_embedding_dim": int(time_embedding_dim),
            "hidden_size": int(hidden_size),
            "num_layers": int(num_layers),
            "rnn_type": rnn_type,
            "dropout": float(dropout),
            "use_target_time": bool(use_target_time),
            "city": city,
        }
        self.num_cells = int(num_cells)
        self.pad_id = int(num_cells)
        self.city = city
        self.use_target_time = bool(use_target_time)
        self.cell_embedding = nn.Embedding(num_cells + 1, cell_embedding_dim, padding_idx=self.pad_id)
        self.hour_embedding = nn.Embedding(24, time_embedding_dim)
        self.day_embedding = nn.Embedding(7, time_embedding_dim)
        rnn_cls = nn.LSTM if rnn_type == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            cell_embedding_dim + 2 * time_embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        head_in = hidden_size + (2 * time_embedding_dim if use_target_time else 0)
        self.head = nn.Linear(head_in, num_cells)

    def forward(self, cells, hours, days, target_hour=None, target_day=None) -> torch.Tensor:
        """``cells/hours/days`` ``(B, T)`` long (cells ``num_cells`` = padding) -> logits ``(B, num_cells)``."""
        x = torch.cat([self.cell_embedding(cells), self.hour_embedding(hours), self.day_embedding(days)], dim=-1)
        out, _ = self.rnn(x)
        h = self.dropout(out[:, -1])
        if self.use_target_time:
            if target_hour is None or target_day is None:
                raise ValueError("this IDClassifier uses the target time: pass target_hour and target_day")
            h = torch.cat([h, self.hour_embedding(target_hour), self.day_embedding(target_day)], dim=-1)
        return self.head(h)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``id_classifier_config.json`` and ``id_classifier.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.config, f, indent=2)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(directory, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "IDClassifier":
        from safetensors.torch import load_file

        with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as f:
            config = json.load(f)
        model = cls(config.pop("num_cells"), **config)
        model.load_state_dict(load_file(os.path.join(directory, WEIGHTS_NAME)))
        return model.eval()


# ------------------------------------------------------------------------------------------------------------------
# inputs


def _single_city(rows: Any, what: str) -> str | None:
    cities = row_cities(rows)
    if len(cities) > 1:
        raise ValueError(f"{what} mix cities {sorted(cities)}: an ID classifier is trained and applied per city")
    return next(iter(cities)) if cities else None


def _inputs(rows: Any, num_cells: int, with_target: bool, use_target_time: bool, what: str) -> dict[str, torch.Tensor]:
    columns = list(INPUT_COLUMNS)
    if with_target:
        columns.append("target_cell")
    if use_target_time:
        columns += ["target_hour", "target_day"]
    arrays = rows_to_arrays(rows, columns)
    cells = record_cells(arrays)
    if (cells >= num_cells).any():
        bad = np.unique(cells[cells >= num_cells])[:5].tolist()
        raise ValueError(
            f"{what} hold cell ids {bad} outside the id space 0..{num_cells - 1} of this ID classifier "
            "(ID baselines cannot transfer to a city with other cells)"
        )
    cells = np.where(cells < 0, num_cells, cells)
    hours = np.concatenate([arrays["history_hour"], arrays["current_hour"]], axis=1).astype(np.int64)
    days = np.concatenate([arrays["history_day"], arrays["current_day"]], axis=1).astype(np.int64)
    if hours.shape != cells.shape or days.shape != cells.shape:
        raise ValueError(
            f"{what}: hour {hours.shape} / day {days.shape} columns do not match the cell columns {cells.shape}"
        )
    for name, values, high in (("hour", hours, 23), ("day", days, 6)):
        if values.size and (values.min() < 0 or values.max() > high):
            raise ValueError(f"{what}: {name} values must lie in 0..{high}, got {values.min()}..{values.max()}")
    out = {"cells": torch.tensor(cells), "hours": torch.tensor(hours), "days": torch.tensor(days)}
    if with_target:
        target = np.asarray(arrays["target_cell"], dtype=np.int64).reshape(-1)
        if len(target) and (target.min() < 0 or target.max() >= num_cells):
            raise ValueError(f"{what}: target_cell values must lie in 0..{num_cells - 1}")
        out["target"] = torch.tensor(target)
    if use_target_time:
        out["target_hour"] = torch.tensor(np.asarray(arrays["target_hour"], dtype=np.int64).reshape(-1))
        out["target_day"] = torch.tensor(np.asarray(arrays["target_day"], dtype=np.int64).reshape(-1))
    return out


def _forward(model: IDClassifier, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    return model(
        batch["cells"].to(device),
        batch["hours"].to(device),
        batch["days"].to(device),
        batch["target_hour"].to(device) if "target_hour" in batch else None,
        batch["target_day"].to(device) if "target_day" in batch else None,
    )


def _slice(inputs: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {name: value[index] for name, value in inputs.items()}


@torch.no_grad()
def _top_k(model: IDClassifier, inputs: dict, k: int, batch_size: int, device: torch.device) -> torch.Tensor:
    was_training = model.training
    model.eval()
    n = len(inputs["cells"])
    chunks = []
    for start in range(0, n, batch_size):
        logits = _forward(model, _slice(inputs, slice(start, start + batch_size)), device)
        chunks.append(torch.topk(logits, k, dim=1).indices.cpu())
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros((0, k), dtype=torch.long)


# ------------------------------------------------------------------------------------------------------------------
# training and ranking


def train_id_classifier(
    train_rows: Any,
    validation_rows: Any,
    num_cells: int,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    weight_decay: float = 0.0,
    max_grad_norm: float = 5.0,
    eval_batch_size: int = 1024,
    **model_kwargs: Any,
) -> tuple[IDClassifier, dict[str, Any]]:
    """Train an :class:`IDClassifier` on one city and return ``(model, history)``.

    The returned model holds the weights of the epoch with the highest validation Hit@1 (earliest on ties), in eval
    mode. ``history`` = ``{"epochs": [{"epoch", "train_loss", "validation_hit@1", "validation_hit@5",
    "validation_hit@10", "seconds"}, ...], "best_epoch": int (1-based), "best_validation_hit@1": float}``.
    ``model_kwargs`` go to :class:`IDClassifier` (``hidden_size``, ``cell_embedding_dim``, ``rnn_type``, ...).
    Seeded: the same call gives the same weights on CPU; the caller's global torch RNG state is left untouched.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r}: expected a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    if num_rows(train_rows) == 0:
        raise ValueError("train_rows is empty")
    if validation_rows is None or num_rows(validation_rows) == 0:
        raise ValueError("validation_rows is empty: the best epoch is chosen on validation Hit@1")
    city = _single_city(train_rows, "train_rows")
    validation_city = _single_city(validation_rows, "validation_rows")
    if city is not None and validation_city is not None and city != validation_city:
        raise ValueError(f"train_rows come from city {city!r} but validation_rows from {validation_city!r}")
    use_target_time = bool(model_kwargs.get("use_target_time", False))
    train = _inputs(train_rows, num_cells, True, use_target_time, "train_rows")
    valid = _inputs(validation_rows, num_cells, True, use_target_time, "validation_rows")
    device = torch.device(device)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="ID classifier", unit="epoch")
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = IDClassifier(num_cells, city=city, **model_kwargs).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(seed)
        n = len(train["target"])
        k_eval = min(10, num_cells)
        history: dict[str, Any] = {"epochs": [], "best_epoch": None, "best_validation_hit@1": -1.0}
        best_state = None
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            permutation = torch.randperm(n, generator=generator)
            total, count = 0.0, 0
            for first in range(0, n, batch_size):
                batch = _slice(train, permutation[first : first + batch_size])
                logits = _forward(model, batch, device)
                loss = loss_fn(logits, batch["target"].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                total += float(loss.detach()) * len(batch["target"])
                count += len(batch["target"])
            top = _top_k(model, valid, k_eval, eval_batch_size, device)
            hits = top == valid["target"][:, None]
            record = {
                "epoch": epoch,
                "train_loss": total / count,
                "validation_hit@1": float(hits[:, :1].any(dim=1).float().mean()),
                "validation_hit@5": float(hits[:, :5].any(dim=1).float().mean()),
                "validation_hit@10": float(hits[:, :10].any(dim=1).float().mean()),
                "seconds": time.perf_counter() - start,
            }
            history["epochs"].append(record)
            if record["validation_hit@1"] > history["best_validation_hit@1"]:
                history["best_validation_hit@1"] = record["validation_hit@1"]
                history["best_epoch"] = epoch
                best_state = copy.deepcopy(model.state_dict())
            if bar is not None:
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_hit1=f"{record['validation_hit@1']:.3f}")
                bar.update(1)
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    return model.eval(), history


def rank_with_id_classifier(
    model: IDClassifier,
    rows: Any,
    k: int,
    *,
    num_cells: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """``(N, k)`` int64 cell ids by decreasing logit (distinct by construction).

    ``num_cells``: the candidate count of the city being ranked (e.g. ``retriever.num_cells``); when given it must
    equal the model's. Rows of another city than the one the model was trained on (``city`` column), or with cell
    ids outside the model's id space, raise ``ValueError``: an ID classifier does not transfer across cities.
    ``device``: moves the model there first (default: stay where it is).
    """
    if num_cells is not None and int(num_cells) != model.num_cells:
        raise ValueError(
            f"the ID classifier was trained on {model.num_cells} cells (city {model.city!r}) but the city to rank has "
            f"{num_cells}: ID baselines cannot transfer to another city's id space"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= model.num_cells:
        raise ValueError(f"k={k!r}: expected an integer in 1..{model.num_cells} (the model's cells)")
    city = _single_city(rows, "rows")
    if city is not None and model.city is not None and city != model.city:
        raise ValueError(
            f"the ID classifier was trained on city {model.city!r} and cannot rank city {city!r}: "
            "ID baselines cannot transfer to another city's id space"
        )
    inputs = _inputs(rows, model.num_cells, False, model.use_target_time, "rows")
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    return _top_k(model, inputs, int(k), batch_size, torch.device(device)).numpy().astype(np.int64)


__all__ = ["IDClassifier", "train_id_classifier", "rank_with_id_classifier"]
