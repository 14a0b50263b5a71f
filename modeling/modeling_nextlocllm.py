"""NextLocLLM (arXiv 2410.09129): next-location prediction as coordinate regression with a partly frozen LLM.

A sample is a user's history (default 40) and current (default 5) visit records. Each record becomes one token:
its normalized projected coordinates, day, hour and stay duration are embedded, projected to the backbone width
(separately for history and current, with tanh), and the LLM-enhanced POI embedding of its cell is added. A constant
natural-language prompt is prepended, a truncated decoder reads the sequence through `inputs_embeds`, and a linear
head on the last position regresses the next visit's normalized coordinates, de-normalized with the city's own
statistics, which is what lets one model serve cities it never saw. A KD-tree over the city's cells turns the point
into top-k candidate cells.

Two task modes (`task_mode`): `next` (the records alone) and `at_time` (the query time of the visit to predict is one
more token). Beyond the paper, all config options that keep every city-specific quantity out of the weights: an
offset-from-last-point parameterization of the point head, a Gaussian-mixture head (`num_mixture_components`,
ranking cells by density, see `mixture_nextlocllm.py`) and a candidate ranker over query-time-aware features and the
backbone's states (`use_candidate_ranker`, see `candidates_nextlocllm.py`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import math

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, DynamicCache, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone_nextlocllm import load_backbone, local_or_hub
from .candidates_nextlocllm import (
    QUERY_COLUMNS,
    RECORD_COLUMNS,
    CandidateScorer,
    build_candidates,
    candidate_feature_size,
    candidate_listwise_loss,
    merge_candidate_sets,
    merge_rankings,
)
from .configuration_nextlocllm import NextLocLLMConfig
from .mixture_nextlocllm import (
    mixture_log_density_np,
    mixture_negative_log_likelihood,
    rank_cells_by_mixture_density,
    split_mixture_parameters,
)
from .retrieval_nextlocllm import (
    RETRIEVERS_CONFIG_NAME,
    RETRIEVERS_WEIGHTS_NAME,
    CityRetriever,
    load_retrievers,
    save_retrievers,
)

# Columns a batch may carry for `forward`; a collator keeps these and drops the rest (user ids...). The cell ids are
# read only by the candidate ranker.
MODEL_INPUT_NAMES = (
    "history_coordinates",
    "history_day",
    "history_hour",
    "history_duration",
    "history_poi",
    "current_coordinates",
    "current_day",
    "current_hour",
    "current_duration",
    "current_poi",
    "coordinate_mean",
    "coordinate_std",
    "target_day",
    "target_hour",
    "target_time_gap",
    "labels",
    "duration_labels",
    "history_cell",
    "current_cell",
    "target_cell",
)


@dataclass
class NextLocLLMOutput(ModelOutput):
    """
    Args:
        loss: mean Euclidean distance in projected metres (plus the weighted duration loss when that head is on).
        coordinates: `(batch, 2)` predicted next position, projected metres (Web Mercator).
        normalized_coordinates: `(batch, 2)` the head's raw output in units of the city's coordinate std: the position
            z-scored with the city's statistics, or with `regression_target="offset_from_last"` the offset from the
            last input point.
        duration: `(batch,)` predicted stay duration in hours, when the duration head is on.
        top_k_cells / top_k_distances: `(batch, k)` the city's best-ranked cells and their distances (m) from the
            predicted point (by distance for the paper's head, by density for the mixture, by score for candidates).
        mixture_means / mixture_scales: `(batch, K, 2)` the modes' centres and standard deviations, projected metres;
            mixture_weights: `(batch, K)`; with `num_mixture_components=K`. `coordinates` is then the heaviest mode.
        candidate_cells / candidate_scores: `(batch, max_candidates)` the ranker's candidates (-1 = padding) and
            their scores, with `use_candidate_ranker`.
        hidden_states: the backbone's hidden states at the record tokens (the shared prompt's are not repeated per
            sample), when requested.
    """

    loss: torch.Tensor | None = None
    coordinates: torch.Tensor | None = None
    normalized_coordinates: torch.Tensor | None = None
    duration: torch.Tensor | None = None
    top_k_cells: torch.Tensor | None = None
    top_k_distances: torch.Tensor | None = None
    mixture_means: torch.Tensor | None = None
    mixture_scales: torch.Tensor | None = None
    mixture_weights: torch.Tensor | None = None
    candidate_cells: torch.Tensor | None = None
    candidate_scores: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class NextLocLLMPreTrainedModel(PreTrainedModel):
    config_class = NextLocLLMConfig
    config: NextLocLLMConfig
    base_model_prefix = "nextlocllm"
    main_input_name = "history_coordinates"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default initialization for NextLocLLM's own layers, as in the authors' code: the library's
        N(0, 0.02) would start the record embeddings' signal ~30x smaller. The offset head starts at zero, i.e. at
        "stay at the last point", and so does the candidate scorer's context path. The backbone (a PreTrainedModel)
        initializes itself."""
        if isinstance(module, nn.Linear):
            if module is getattr(self, "regression_head", None) and self.config.regression_target == "offset_from_last":
                init.zeros_(module.weight)
                return
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features) if module.in_features else 0.0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, CandidateScorer) and hasattr(module, "context_projection"):
            # After its layers (children first): the context path starts at zero (see CandidateScorer).
            init.zeros_(module.context_projection.weight)
            init.zeros_(module.record_projection.weight)
        else:
            super()._init_weights(module)


def _check_inputs(config: NextLocLLMConfig, inputs: Mapping[str, torch.Tensor | None]) -> int:
    """Shapes and value ranges of a batch; a `ValueError` names the field and the offending value."""
    batch_size = inputs["history_coordinates"].shape[0] if inputs["history_coordinates"].dim() > 0 else 0
    lengths = {"history": config.history_length, "current": config.current_length}
    for part, length in lengths.items():
        expected_shapes = {
            "coordinates": (batch_size, length, 2),
            "day": (batch_size, length),
            "hour": (batch_size, length),
            "duration": (batch_size, length),
            "poi": (batch_size, length, config.num_poi_classes),
        }
        for feature, shape in expected_shapes.items():
            name = f"{part}_{feature}"
            value = inputs[name]
            if value is None:
                raise ValueError(f"{name} is required")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {shape} "
                    f"({part}_length={length}, {config.num_poi_classes} POI classes)"
                )
        _check_finite(inputs, f"{part}_coordinates")
        _check_range(inputs, f"{part}_day", 0, 6)
        _check_range(inputs, f"{part}_hour", 0, 23)
        _check_finite(inputs, f"{part}_duration")
        _check_range(inputs, f"{part}_duration", 0, None)
        _check_finite(inputs, f"{part}_poi")
        _check_range(inputs, f"{part}_poi", 0, None)
    query = [name for name in QUERY_COLUMNS if inputs.get(name) is not None]
    if config.task_mode == "at_time":
        for name in QUERY_COLUMNS:
            if inputs.get(name) is None:
                raise ValueError(
                    f"{name} is required: this model was trained for task_mode='at_time' (where will the user be at a "
                    f"given time?) and reads the query's target_day, target_hour and target_time_gap"
                )
            if tuple(inputs[name].shape) != (batch_size,):
                raise ValueError(f"{name} has shape {tuple(inputs[name].shape)}, expected ({batch_size},)")
        _check_range(inputs, "target_day", 0, 6)
        _check_range(inputs, "target_hour", 0, 23)
        _check_finite(inputs, "target_time_gap")
        _check_range(inputs, "target_time_gap", 0, None)
    elif query:
        raise ValueError(
            f"{query} given, but this model was trained for task_mode='next' (the time of the visit to predict is "
            f"unknown to it); use a model trained with task_mode='at_time' to predict at a given time"
        )
    if inputs["labels"] is not None:
        if tuple(inputs["labels"].shape) != (batch_size, 2):
            raise ValueError(f"labels has shape {tuple(inputs['labels'].shape)}, expected ({batch_size}, 2)")
        _check_finite(inputs, "labels")
    for name, shape in (
        ("history_cell", (batch_size, config.history_length)),
        ("current_cell", (batch_size, config.current_length)),
        ("target_cell", (batch_size,)),
    ):
        if inputs.get(name) is not None and tuple(inputs[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(inputs[name].shape)}, expected {shape}")
    if inputs["duration_labels"] is not None:
        if tuple(inputs["duration_labels"].shape) != (batch_size,):
            raise ValueError(f"duration_labels has shape {tuple(inputs['duration_labels'].shape)}, expected ({batch_size},)")
        _check_finite(inputs, "duration_labels")
        _check_range(inputs, "duration_labels", 0, None)
    return batch_size


def _check_finite(inputs: Mapping[str, torch.Tensor], name: str) -> None:
    value = inputs[name]
    if value.is_floating_point() and not torch.isfinite(value).all():
        bad = value[~torch.isfinite(value)].flatten()[0].item()
        raise ValueError(f"{name} holds a non-finite value ({bad})")


def _check_range(inputs: Mapping[str, torch.Tensor], name: str, low: float, high: float | None) -> None:
    value = inputs[name]
    outside = value < low if high is None else (value < low) | (value > high)
    if outside.any():
        bad = value[outside].flatten()[0].item()
        expected = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} holds {bad}, expected values {expected}")


class NextLocLLMForCoordinateRegression(NextLocLLMPreTrainedModel):
    """The NextLocLLM model with a regression head on the last position and a KD-tree retriever per known city."""

    input_names = MODEL_INPUT_NAMES

    def __init__(self, config: NextLocLLMConfig):
        super().__init__(config)
        hidden = config.hidden_size
        # Record embedding: coordinates, day, hour, duration (and a linear POI embedding when LLM-POI is off).
        self.coordinate_embedding = nn.Linear(2, config.coordinate_embedding_dim, bias=False)
        self.day_embedding = nn.Embedding(7, config.day_embedding_dim)
        self.hour_embedding = nn.Embedding(24, config.hour_embedding_dim)
        self.duration_embedding = nn.Linear(1, config.duration_embedding_dim, bias=False)
        if not config.use_llm_poi:
            self.poi_embedding = nn.Linear(config.num_poi_classes, config.poi_embedding_dim, bias=False)
        self.history_projection = nn.Linear(config.record_embedding_dim, hidden, bias=False)
        self.current_projection = nn.Linear(config.record_embedding_dim, hidden, bias=False)

        # LLM-enhanced POI embedding: description tokens of each class, flattened and projected to one token.
        poi_text_width = config.poi_description_length * hidden
        if config.use_llm_poi:
            self.history_poi_projection = nn.Linear(poi_text_width, hidden)
            self.current_poi_projection = nn.Linear(poi_text_width, hidden)
        self.register_buffer(
            "poi_text_embeddings", torch.zeros(config.num_poi_classes, config.poi_description_length, hidden)
        )
        self.register_buffer("prompt_token_ids", torch.zeros(config.prompt_length, dtype=torch.long))
        self.register_buffer("text_features_encoded", torch.zeros((), dtype=torch.bool))

        if config.task_mode == "at_time":
            # The query token: the target's day and hour (sharing the record embeddings) and the gap since the last record.
            self.gap_embedding = nn.Linear(1, config.duration_embedding_dim, bias=False)
            query_width = config.day_embedding_dim + config.hour_embedding_dim + config.duration_embedding_dim
            self.target_time_projection = nn.Linear(query_width, hidden)

        self.backbone = AutoModel.from_config(config.llm_config)
        if config.adaptation == "lora":
            self._inject_lora()

        if config.num_mixture_components:
            # [means (2K) | log-scales (2K) | weight logits (K)], in the city's normalized coordinates.
            self.mixture_head = nn.Linear(hidden, 5 * config.num_mixture_components)
        else:
            self.regression_head = nn.Linear(hidden, 2, bias=False)
        if config.use_candidate_ranker:
            # The shared features, and with a mixture its log-density at the cell (so light modes count less).
            num_features = candidate_feature_size(config.num_poi_classes, config.task_mode, config.candidate_time_features)
            num_features += bool(config.num_mixture_components)
            self.candidate_scorer = CandidateScorer(num_features, hidden, config.candidate_ranker_width,
                                                   config.candidate_feature_bins)
        if config.use_duration_head:
            self.duration_head = nn.Linear(hidden, 1, bias=False)

        self.retrievers: dict[str, CityRetriever] = {}
        self._prompt_cache = None  # (weights key, per-layer prompt keys/values), see _prompt_key_values
        self._reference_computation = False
        self.post_init()
        self._apply_adaptation()

    # ----------------------------------------------------------------------------------------------- adaptation
    def _inject_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        model_type = self.config.llm_config.model_type
        targets = self.config.lora_target_modules or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if not targets:
            raise ValueError(f"lora_target_modules is required for backbone type {model_type!r}")
        lora_config = LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(targets),
            fan_in_fan_out=model_type == "gpt2",  # GPT-2 stores its projections as Conv1D (in, out)
        )
        inject_adapter_in_model(lora_config, self.backbone)

    def _backbone_module_trains(self, module_name: str, module: nn.Module) -> bool:
        """Whether the parameters directly owned by a backbone module train under `config.adaptation`."""
        mode = self.config.adaptation
        if mode == "full":
            return True
        if mode == "lora":
            return "lora_" in module_name
        if mode == "norms":
            is_norm = isinstance(module, nn.LayerNorm) or "RMSNorm" in type(module).__name__
            is_position_table = isinstance(module, nn.Embedding) and module is not self.backbone.get_input_embeddings()
            return is_norm or is_position_table
        return False  # frozen

    def _apply_adaptation(self) -> None:
        for module_name, module in self.backbone.named_modules():
            trains = self._backbone_module_trains(module_name, module)
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(trains)

    # -------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str = "smollm2-135m",
        hub_kwargs: Mapping[str, Any] | None = None,
        **config_overrides,
    ) -> "NextLocLLMForCoordinateRegression":
        """A new model around pretrained backbone weights (a Hub id, a local folder, or `smollm2-135m`).

        The backbone is cut to `num_backbone_layers` (default 6); the prompt and POI descriptions are encoded once
        into persistent buffers, so the saved model loads later without tokenizer or network. Like
        `from_pretrained`, it returns the model in eval mode.
        """
        num_layers = config_overrides.get("num_backbone_layers", NextLocLLMConfig.num_backbone_layers)
        backbone, tokenizer, _ = load_backbone(name_or_path, num_layers, **dict(hub_kwargs or {}))
        config = NextLocLLMConfig(llm_config=backbone.config.to_dict(), **config_overrides)
        config.prompt_length, config.poi_description_length = _text_lengths(config, tokenizer)
        model = cls(config)
        model.load_backbone_weights(backbone.state_dict())
        model.encode_text_features(tokenizer)
        model.config.name_or_path = name_or_path
        return model.eval()

    def load_backbone_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy pretrained backbone weights in, mapping onto LoRA-wrapped layers (`x.weight` -> `x.base_layer.weight`)."""
        own_keys = set(self.backbone.state_dict())
        remapped = {}
        for key, value in state_dict.items():
            if key not in own_keys:
                module_path, _, leaf = key.rpartition(".")
                key = f"{module_path}.base_layer.{leaf}"
            remapped[key] = value
        missing, unexpected = self.backbone.load_state_dict(remapped, strict=False)
        missing = [key for key in missing if "lora_" not in key]
        if missing or unexpected:
            raise ValueError(f"backbone weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @torch.no_grad()
    def encode_text_features(self, tokenizer) -> None:
        """Token ids of the prompt and embeddings of the POI descriptions, stored as persistent buffers."""
        prompt_length, description_length = _text_lengths(self.config, tokenizer)
        if (prompt_length, description_length) != (self.config.prompt_length, self.config.poi_description_length):
            raise ValueError(
                f"tokenizer gives prompt_length={prompt_length}, poi_description_length={description_length}; the "
                f"config was built for {self.config.prompt_length}, {self.config.poi_description_length}"
            )
        if self.config.use_prompt:
            prompt_ids = _token_ids(tokenizer, self.config.format_prompt())
            self.prompt_token_ids.copy_(torch.tensor(prompt_ids, dtype=torch.long))
        embeddings = self.backbone.get_input_embeddings()
        weight_device = embeddings.weight.device
        table = torch.zeros_like(self.poi_text_embeddings)
        for index, text in enumerate(self.config.poi_description_texts()):
            ids = torch.tensor(_token_ids(tokenizer, text), dtype=torch.long, device=weight_device)
            if self.config.poi_text_encoding == "hidden_states":
                encoded = self.backbone(input_ids=ids[None]).last_hidden_state[0]
            else:
                encoded = embeddings(ids)
            # Shorter descriptions are zero-padded: padding then adds nothing to the projected POI token.
            table[index, : len(ids)] = encoded.to(table.dtype)
        self.poi_text_embeddings.copy_(table)
        self.text_features_encoded.fill_(True)

    # ------------------------------------------------------------------------------------------------ retrieval
    def add_city(self, retriever: CityRetriever) -> None:
        """Register a city's candidate cells and statistics; this is how the model serves a new city zero-shot."""
        if retriever.poi_frequency.shape[1] != self.config.num_poi_classes:
            raise ValueError(
                f"city {retriever.name!r} has {retriever.poi_frequency.shape[1]} POI classes, "
                f"the model {self.config.num_poi_classes}"
            )
        self.retrievers[retriever.name] = retriever

    @property
    def cities(self) -> list[str]:
        return list(self.retrievers)

    def retriever(self, city: str) -> CityRetriever:
        if city not in self.retrievers:
            raise ValueError(f"city={city!r} is unknown to this model; known cities: {self.cities} (use add_city)")
        return self.retrievers[city]

    def _city_statistics(self, city: str | Sequence[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        names = [city] * batch_size if isinstance(city, str) else list(city)
        if len(names) != batch_size:
            raise ValueError(f"city lists {len(names)} names for a batch of {batch_size}")
        mean = np.stack([self.retriever(name).coordinate_mean for name in names])
        std = np.stack([self.retriever(name).coordinate_std for name in names])
        return torch.from_numpy(mean), torch.from_numpy(std)

    # -------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        history_coordinates: torch.Tensor,
        history_day: torch.Tensor,
        history_hour: torch.Tensor,
        history_duration: torch.Tensor,
        history_poi: torch.Tensor,
        current_coordinates: torch.Tensor,
        current_day: torch.Tensor,
        current_hour: torch.Tensor,
        current_duration: torch.Tensor,
        current_poi: torch.Tensor,
        coordinate_mean: torch.Tensor | None = None,
        coordinate_std: torch.Tensor | None = None,
        city: str | Sequence[str] | None = None,
        target_day: torch.Tensor | None = None,
        target_hour: torch.Tensor | None = None,
        target_time_gap: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        duration_labels: torch.Tensor | None = None,
        top_k: int | None = None,
        history_cell: torch.Tensor | None = None,
        current_cell: torch.Tensor | None = None,
        target_cell: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> NextLocLLMOutput | tuple:
        r"""
        history_* / current_*: coordinates `(B, L, 2)` in projected metres, day `(B, L)` 0=Monday..6, hour
            `(B, L)` 0..23, duration `(B, L)` stay hours >= 0, poi `(B, L, C)` the cell's POI frequencies.
        coordinate_mean / coordinate_std: `(B, 2)` or `(2,)` the city's statistics; or give `city` (a name or one
            name per sample) and the registered retriever's statistics are used.
        target_day / target_hour / target_time_gap: `(B,)` the query (local day 0..6, hour 0..23, hours since the
            last record), required with task_mode='at_time' and refused with task_mode='next'.
        labels: `(B, 2)` true next position in projected metres; duration_labels: `(B,)` its stay hours.
        top_k: with `city`, also return the city's k best-ranked cells.
        history_cell / current_cell: `(B, L)` the records' cell ids, and `city`: needed by the candidate ranker;
            target_cell `(B,)` trains it (listwise loss on the true cell).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs = {
            "history_coordinates": history_coordinates,
            "history_day": history_day,
            "history_hour": history_hour,
            "history_duration": history_duration,
            "history_poi": history_poi,
            "current_coordinates": current_coordinates,
            "current_day": current_day,
            "current_hour": current_hour,
            "current_duration": current_duration,
            "current_poi": current_poi,
            "target_day": target_day,
            "target_hour": target_hour,
            "target_time_gap": target_time_gap,
            "labels": labels,
            "duration_labels": duration_labels,
            "history_cell": history_cell,
            "current_cell": current_cell,
            "target_cell": target_cell,
        }
        batch_size = _check_inputs(self.config, inputs)
        if top_k is not None:
            _check_positive_int("top_k", top_k)
        if (self.config.use_prompt or self.config.use_llm_poi) and not bool(self.text_features_encoded):
            raise ValueError(
                "the prompt / POI description buffers were never encoded: build the model with "
                "NextLocLLMForCoordinateRegression.from_backbone(...) or call encode_text_features(tokenizer)"
            )
        mean, std = self._resolve_statistics(coordinate_mean, coordinate_std, city, batch_size)
        mean, std = mean.to(history_coordinates.device), std.to(history_coordinates.device)

        history_tokens = self._record_tokens(history_coordinates, history_day, history_hour, history_duration,
                                             history_poi, mean, std, "history")
        current_tokens = self._record_tokens(current_coordinates, current_day, current_hour, current_duration,
                                             current_poi, mean, std, "current")
        pieces = [history_tokens, current_tokens]
        if self.config.task_mode == "at_time":
            dtype = self.gap_embedding.weight.dtype
            query = torch.cat([self.day_embedding(target_day.long()), self.hour_embedding(target_hour.long()),
                               self.gap_embedding(torch.log1p(target_time_gap.to(dtype))[:, None])], dim=-1)
            pieces.append(self.target_time_projection(query)[:, None])
        backbone_outputs = self._run_backbone(torch.cat(pieces, dim=1), output_hidden_states)
        last_state = backbone_outputs.last_hidden_state[:, -1]
        # The record tokens' states (the prompt's precede them in the reference computation, the query follows).
        end = backbone_outputs.last_hidden_state.shape[1] - (len(pieces) - 2)
        record_states = backbone_outputs.last_hidden_state[:, end - history_tokens.shape[1] - current_tokens.shape[1]:end]

        mixture = None
        if self.config.num_mixture_components:
            # In float32 even under autocast: bf16 rounds a z-score of 2 by ~1e-2, metres at the scale floor.
            with torch.autocast(last_state.device.type, enabled=False):
                raw = self.mixture_head(last_state.float())
            means, log_scales, log_weights = split_mixture_parameters(raw, self.config.num_mixture_components)
            mixture = (means, log_scales, log_weights)
            normalized = means[torch.arange(batch_size, device=means.device), log_weights.argmax(-1)]
        else:
            normalized = self.regression_head(last_state)
        # De-normalize in float64: projected coordinates are ~1e7 m, beyond float32's metre precision.
        if self.config.regression_target == "offset_from_last" and mixture is None:
            coordinates = normalized.double() * std + current_coordinates[:, -1].double()
        else:
            coordinates = normalized.double() * std + mean
        loss = None
        if labels is not None:
            if mixture is None:
                loss = torch.linalg.vector_norm(coordinates - labels.double(), dim=-1).mean().to(normalized.dtype)
            else:
                loss = self._mixture_loss(*mixture, ((labels.double() - mean) / std).float())
        duration = None
        if self.config.use_duration_head:
            log_duration = torch.relu(self.duration_head(last_state)).squeeze(-1)
            duration = torch.expm1(log_duration)
            if duration_labels is not None and labels is not None:
                duration_loss = nn.functional.mse_loss(log_duration, torch.log1p(duration_labels.to(log_duration.dtype)))
                loss = loss + self.config.duration_loss_weight * duration_loss

        mixture_metres = None
        if mixture is not None:
            means, log_scales, log_weights = mixture
            mixture_metres = (means.double() * std[:, None] + mean[:, None], log_scales.double().exp() * std[:, None],
                              log_weights.double())
        candidates = scores = None
        if self.config.use_candidate_ranker:
            if city is None or history_cell is None or current_cell is None:
                raise ValueError("use_candidate_ranker=True needs city=, history_cell and current_cell")
            candidates = self._candidates(city, {name: inputs[name] for name in (*RECORD_COLUMNS, *QUERY_COLUMNS)})
            features = candidates.features
            if mixture is not None:
                features = self._with_mixture_density(candidates, mixture, mean, std, city)
            device = last_state.device
            weights = torch.from_numpy(candidates.record_weights).to(device=device, dtype=record_states.dtype)
            scores = self.candidate_scorer(
                torch.from_numpy(features).to(device),
                torch.from_numpy(candidates.mask).to(device),
                last_state,
                weights @ record_states,  # (B, M, T) x (B, T, H): each candidate's mean state over its visits
            )
            if target_cell is not None and labels is not None:
                ranking_loss, _ = candidate_listwise_loss(scores, candidates.cell_ids, target_cell)
                loss = loss + self.config.candidate_loss_weight * ranking_loss.to(loss.dtype)

        top_k_cells = top_k_distances = None
        if top_k is not None:
            if city is None:
                raise ValueError("top_k needs city= (the city whose candidate cells to rank)")
            top_k_cells, top_k_distances = self._rank(coordinates, mixture_metres, candidates, scores, city, top_k)

        output = NextLocLLMOutput(
            loss=loss,
            coordinates=coordinates,
            normalized_coordinates=normalized,
            duration=duration,
            top_k_cells=top_k_cells,
            top_k_distances=top_k_distances,
            mixture_means=None if mixture_metres is None else mixture_metres[0],
            mixture_scales=None if mixture_metres is None else mixture_metres[1],
            mixture_weights=None if mixture_metres is None else mixture_metres[2].exp(),
            candidate_cells=None if candidates is None else torch.from_numpy(candidates.cell_ids).to(last_state.device),
            candidate_scores=scores,
            hidden_states=backbone_outputs.hidden_states if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

    def _run_backbone(self, record_tokens: torch.Tensor, output_hidden_states: bool | None):
        """The decoder over [prompt ; records]. The prompt is identical for every sample, so it runs once (batch 1)
        and the records attend to its cached keys and values; with gradients off it is computed once per weights."""
        if not self.config.use_prompt:
            return self.backbone(inputs_embeds=record_tokens, output_hidden_states=output_hidden_states, use_cache=False)
        prompt = self.backbone.get_input_embeddings()(self.prompt_token_ids)[None].to(record_tokens.dtype)
        if self._reference_computation:  # the paper's form: the prompt repeated in every sample
            sequence = torch.cat([prompt.expand(len(record_tokens), -1, -1), record_tokens], dim=1)
            return self.backbone(inputs_embeds=sequence, output_hidden_states=output_hidden_states, use_cache=False)
        prefix = self._prompt_key_values(prompt)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(len(record_tokens), -1, -1, -1), v.expand(len(record_tokens), -1, -1, -1))
                            for k, v in prefix],
            config=self.backbone.config,
        )
        return self.backbone(
            inputs_embeds=record_tokens, cache=cache, use_cache=True, output_hidden_states=output_hidden_states
        )

    def _prompt_key_values(self, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer keys and values of the prompt (batch 1); reused while gradients are off and weights unchanged."""
        reusable = not torch.is_grad_enabled()
        if reusable:
            # In-place updates (optimizer steps, load_state_dict) bump a tensor's version: a changed key drops the cache.
            key = (
                tuple((p.data_ptr(), p._version) for p in self.backbone.parameters()),
                (self.prompt_token_ids.data_ptr(), self.prompt_token_ids._version),
                prompt.dtype,
                torch.is_autocast_enabled(prompt.device.type),
                self.training,
            )
            if self._prompt_cache is not None and self._prompt_cache[0] == key:
                return self._prompt_cache[1]
        output = self.backbone(inputs_embeds=prompt, use_cache=True)
        key_values = [(layer.keys, layer.values) for layer in output.cache.layers]
        self._prompt_cache = (key, key_values) if reusable else None
        return key_values

    @contextmanager
    def reference_computation(self):
        """Compute as the authors' code does (prompt in every sample, POI flattened then projected per record).

        Same outputs and gradients, several times the work; for equality tests and benchmarks.
        """
        previous, self._reference_computation = self._reference_computation, True
        try:
            yield self
        finally:
            self._reference_computation = previous

    def _resolve_statistics(self, mean, std, city, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if mean is None or std is None:
            if city is None:
                raise ValueError("coordinate_mean/coordinate_std or city= is required to normalize coordinates")
            return self._city_statistics(city, batch_size)
        mean = torch.as_tensor(mean, dtype=torch.float64).expand(batch_size, 2)
        std = torch.as_tensor(std, dtype=torch.float64).expand(batch_size, 2)
        if not torch.isfinite(mean).all():
            raise ValueError(f"coordinate_mean holds a non-finite value: {mean[~torch.isfinite(mean)][0].item()}")
        if not (std > 0).all():
            raise ValueError(f"coordinate_std holds {std[~(std > 0)][0].item()}, expected positive values")
        return mean, std

    def _record_tokens(self, coordinates, day, hour, duration, poi, mean, std, part: str) -> torch.Tensor:
        """One backbone-width token per record: tanh(projected record embedding) + LLM-enhanced POI embedding."""
        dtype = self.coordinate_embedding.weight.dtype
        normalized = ((coordinates.double() - mean[:, None]) / std[:, None]).to(dtype)
        # log1p hours: a city-independent scale (the authors' per-city min-max depends on outliers).
        log_duration = torch.log1p(duration.to(dtype))[..., None]
        features = [
            self.coordinate_embedding(normalized),
            self.day_embedding(day.long()),
            self.hour_embedding(hour.long()),
            self.duration_embedding(log_duration),
        ]
        if not self.config.use_llm_poi:
            features.append(self.poi_embedding(poi.to(dtype)))
        projection = self.history_projection if part == "history" else self.current_projection
        tokens = torch.tanh(projection(torch.cat(features, dim=-1)))
        if self.config.use_llm_poi:
            poi_projection = self.history_poi_projection if part == "history" else self.current_poi_projection
            descriptions = self.poi_text_embeddings.to(dtype)
            if self._reference_computation:  # weight the description tables per record, flatten, project
                weighted = torch.einsum("blc,ctd->bltd", poi.to(dtype), descriptions)
                return tokens + poi_projection(weighted.flatten(-2))
            # Linear(sum_c p_c E_c) = sum_c p_c (W E_c) + b: project the C class tables once instead of every record.
            class_tokens = nn.functional.linear(descriptions.flatten(1), poi_projection.weight)
            tokens = tokens + poi.to(dtype) @ class_tokens + poi_projection.bias
        return tokens

    def _mixture_loss(self, means, log_scales, log_weights, targets) -> torch.Tensor:
        """Negative log-likelihood of the true position (normalized units), plus the optional best-mode distance."""
        loss = mixture_negative_log_likelihood(means, log_scales, log_weights, targets).mean()
        if self.config.mixture_distance_loss_weight:
            closest = torch.linalg.vector_norm(means - targets[:, None], dim=-1).min(dim=-1).values.mean()
            loss = loss + self.config.mixture_distance_loss_weight * closest
        return loss.to(means.dtype)

    @staticmethod
    def _city_groups(city: str | Sequence[str], batch_size: int) -> dict[str, np.ndarray]:
        """Sample rows of each city in a batch (a batch may mix cities)."""
        names = [city] * batch_size if isinstance(city, str) else list(city)
        if len(names) != batch_size:
            raise ValueError(f"city holds {len(names)} names for a batch of {batch_size}")
        return {name: np.array([i for i, n in enumerate(names) if n == name]) for name in dict.fromkeys(names)}

    def _candidates(self, city, batch: Mapping[str, torch.Tensor | None]):
        """Per-city candidate sets (see `build_candidates`), merged back into batch order (each has `max_candidates`
        columns)."""
        arrays = {name: value.detach().cpu().numpy() for name, value in batch.items()
                  if value is not None and value.dim() > 0}
        groups = self._city_groups(city, len(arrays["history_cell"]))
        parts = {
            name: build_candidates(self.retriever(name), {key: value[rows] for key, value in arrays.items()},
                                   self.config.task_mode, neighbors=self.config.candidate_neighbors,
                                   max_candidates=self.config.max_candidates,
                                   time_features=self.config.candidate_time_features)
            for name, rows in groups.items()
        }
        return merge_candidate_sets(parts, groups, len(arrays["history_cell"]))

    def _with_mixture_density(self, candidates, mixture, mean, std, city) -> np.ndarray:
        """Candidate features plus the mixture's log-density at each cell centre, in normalized units (city-agnostic),
        clipped to [-30, 10] and divided by 10; 0 at padding."""
        means, log_scales, log_weights = (t.detach().double().cpu().numpy() for t in mixture)
        mean, std = mean.cpu().numpy(), std.cpu().numpy()
        centres = np.zeros((*candidates.cell_ids.shape, 2))
        for name, rows in self._city_groups(city, len(centres)).items():
            retriever = self.retriever(name)
            centres[rows] = retriever.xy[retriever.rows_of(np.maximum(candidates.cell_ids[rows], 0)).clip(min=0)]
        normalized = (centres - mean[:, None]) / std[:, None]
        density = mixture_log_density_np(normalized, means, np.exp(log_scales), log_weights)
        feature = np.where(candidates.mask, np.clip(density, -30.0, 10.0) / 10.0, 0.0).astype(np.float32)
        return np.concatenate([candidates.features, feature[..., None]], axis=-1)

    def _rank(self, coordinates, mixture_metres, candidates, scores, city, k: int):
        """The city's top-k cells: by the head (distance or density), then re-ranked by the candidate scores."""
        points = coordinates.detach().cpu().numpy()
        cells = np.zeros((len(points), k), dtype=np.int64)
        distances = np.zeros((len(points), k), dtype=np.float64)
        for name, rows in self._city_groups(city, len(points)).items():
            retriever = self.retriever(name)
            if mixture_metres is None:
                ranked, _ = retriever.query(points[rows], k)
            else:
                means, scales, log_weights = (t.detach().cpu().numpy()[rows] for t in mixture_metres)
                ranked, _ = rank_cells_by_mixture_density(retriever, means, scales, log_weights, k)
            if candidates is not None:
                ranked = merge_rankings(candidates.cell_ids[rows], scores.detach()[rows].float().cpu().numpy(),
                                        ranked, k)
            cells[rows] = ranked
            distances[rows] = np.linalg.norm(retriever.xy[retriever.rows_of(ranked)] - points[rows, None], axis=-1)
        device = coordinates.device
        return torch.from_numpy(cells).to(device), torch.from_numpy(distances).to(device)

    @torch.no_grad()
    def predict(
        self, batch: Mapping[str, Any], city: str | Sequence[str], k: int = 10, batch_size: int = 256
    ) -> NextLocLLMOutput:
        """Top-k candidate cells of `city` for any number of trajectories, `batch_size` at a time.

        Runs in eval mode without gradients, so the prompt's keys and values are computed once and shared by every
        chunk. Extra columns (user ids, labels, cell ids) are ignored.
        """
        _check_positive_int("k", k)
        _check_positive_int("batch_size", batch_size)
        inputs = {name: _as_tensor(batch[name], self.device) for name in self.input_names if name in batch}
        for label in ("labels", "duration_labels"):
            inputs.pop(label, None)
        total = len(inputs["history_coordinates"])
        if total == 0:
            raise ValueError("predict got an empty batch (0 trajectories)")
        was_training = self.training
        self.eval()
        try:
            chunks = []
            for start in range(0, total, batch_size):
                rows = slice(start, start + batch_size)
                chunk = {name: value[rows] if value.dim() and len(value) == total else value
                         for name, value in inputs.items()}
                chunk_city = city if isinstance(city, str) else list(city)[rows]
                chunks.append(self(**chunk, city=chunk_city, top_k=k))
        finally:
            self.train(was_training)
        return NextLocLLMOutput(
            **{field: torch.cat([getattr(c, field) for c in chunks])
               for field in ("coordinates", "normalized_coordinates", "duration", "top_k_cells", "top_k_distances",
                             "mixture_means", "mixture_scales", "mixture_weights", "candidate_cells", "candidate_scores")
               if getattr(chunks[0], field) is not None}
        )

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A valid two-sample batch around the origin (statistics included), for shape checks and tracing."""
        generator = torch.Generator().manual_seed(0)
        batch = {}
        for part, length in (("history", self.config.history_length), ("current", self.config.current_length)):
            batch[f"{part}_coordinates"] = torch.randn(2, length, 2, generator=generator, dtype=torch.float64) * 1000
            batch[f"{part}_day"] = torch.randint(0, 7, (2, length), generator=generator)
            batch[f"{part}_hour"] = torch.randint(0, 24, (2, length), generator=generator)
            batch[f"{part}_duration"] = torch.rand(2, length, generator=generator) * 3
            batch[f"{part}_poi"] = torch.rand(2, length, self.config.num_poi_classes, generator=generator)
        batch["coordinate_mean"] = torch.zeros(2, 2, dtype=torch.float64)
        batch["coordinate_std"] = torch.full((2, 2), 1000.0, dtype=torch.float64)
        if self.config.task_mode == "at_time":
            batch["target_day"] = torch.randint(0, 7, (2,), generator=generator)
            batch["target_hour"] = torch.randint(0, 24, (2,), generator=generator)
            batch["target_time_gap"] = torch.rand(2, generator=generator, dtype=torch.float32) * 5
        return batch

    # ------------------------------------------------------------------------------------------------- save/load
    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights, config (and code when registered for auto classes), plus every city's retriever."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            save_retrievers(self.retrievers, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load weights and config as usual, then the retrievers saved beside them (same commit, cache and token)."""
        from safetensors import SafetensorError

        hub_keys = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
        name = str(pretrained_model_name_or_path)
        if not isinstance(kwargs.get("config"), NextLocLLMConfig):  # AutoModel passes the config it has checked
            with local_or_hub(name, "model"):
                _check_model_type(name, {key: kwargs[key] for key in hub_keys if kwargs.get(key) is not None})
        # Resolve a branch to its commit once, so weights and retrievers come from the same repository state even if
        # the repo is pushed to in between (AutoModel passes an already resolved revision; this covers direct calls).
        kwargs["revision"] = _resolve_revision(pretrained_model_name_or_path, kwargs)
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise ValueError(f"{name}: the safetensors weights are truncated or damaged ({error}); save, copy or "
                             f"download the model again") from error
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._apply_adaptation()  # loading materializes fresh parameters, all trainable
        hub_kwargs = {key: kwargs[key] for key in hub_keys if kwargs.get(key) is not None}
        model.retrievers = _load_retrievers_beside(str(pretrained_model_name_or_path), hub_kwargs)
        return loaded


def _check_model_type(name_or_path: str, hub_kwargs: dict[str, Any]) -> None:
    """Refuse a folder or repo that is not a NextLocLLM model before anything is built: transformers would otherwise
    build this class from another architecture's config, or AutoModel a random model of that other type."""
    subfolder = hub_kwargs.get("subfolder")
    folder = os.path.join(name_or_path, subfolder) if subfolder else name_or_path
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"model {folder} has no config.json: not a saved model folder")
    config, _ = NextLocLLMConfig.get_config_dict(name_or_path, **hub_kwargs)
    model_type = config.get("model_type")
    if model_type != NextLocLLMConfig.model_type:
        raise ValueError(f"model {name_or_path}: config.json has model_type {model_type!r}, not "
                         f"{NextLocLLMConfig.model_type!r}: not a NextLocLLM model")


def _resolve_revision(name_or_path, kwargs: Mapping[str, Any]):
    try:
        from transformers.utils.hub import resolve_revision
    except ImportError:  # older transformers: files are fetched at the requested revision
        return kwargs.get("revision")
    return resolve_revision(
        name_or_path,
        kwargs.get("revision"),
        token=kwargs.get("token"),
        local_files_only=bool(kwargs.get("local_files_only")),
        cache_dir=kwargs.get("cache_dir"),
    )


def _load_retrievers_beside(name_or_path: str, hub_kwargs: dict[str, Any]) -> dict[str, CityRetriever]:
    """`retrievers.json` (+ `retrievers.safetensors` when it lists cities) from where the weights came from.

    Every saved model has `retrievers.json`, even without cities: a folder or repo without it is incomplete, and
    errors name the folder or repo (and revision) as well as the file.
    """
    from transformers.utils import cached_file

    revision = hub_kwargs.get("revision")
    where = name_or_path if revision is None else f"{name_or_path} (revision {getattr(revision, 'resolved', revision)})"
    config_file = cached_file(
        name_or_path, RETRIEVERS_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if config_file is None:
        cache_note = " in the local cache" if hub_kwargs.get("local_files_only") else ""
        raise OSError(
            f"{where} has no {RETRIEVERS_CONFIG_NAME}{cache_note}: it is written by save_pretrained beside the "
            f"weights (even for a model without cities), so this folder or repo is incomplete"
        )
    weights_file = cached_file(
        name_or_path, RETRIEVERS_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    try:
        return load_retrievers(config_file, weights_file)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text_lengths(config: NextLocLLMConfig, tokenizer) -> tuple[int, int]:
    prompt_length = len(_token_ids(tokenizer, config.format_prompt())) if config.use_prompt else 0
    description_length = max(len(_token_ids(tokenizer, text)) for text in config.poi_description_texts())
    return prompt_length, description_length


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")


def _as_tensor(value: Any, device: torch.device) -> torch.Tensor:
    return value.to(device) if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value), device=device)


__all__ = ["NextLocLLMForCoordinateRegression", "NextLocLLMPreTrainedModel", "NextLocLLMOutput", "MODEL_INPUT_NAMES"]
