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
offset-from-last-point parameterization of the point head, a Gaussian-mixture head (`head_type="mixture"`, ranking
cells by density, see `mixture_nextlocllm.py`) and a candidate ranker over query-time-aware features and the
backbone's states (`head_type="point_ranker"` / `"mixture_ranker"`, see `candidates_nextlocllm.py`).

Reading order: `encoder_nextlocllm.py` (records -> hidden states, the prompt as a shared prefix), `heads_nextlocllm.py`
(the registry of head types: each owns its layers, loss, ranking of a city's cells, candidate features and output
fields), `ranking_nextlocllm.py` (what the rankings share: merging, and a batch that mixes cities ranked at one width);
this file wires them: construction, the city registry, `forward` (the batch's cities grouped once), chunked `predict`,
save/load. Inputs are checked once per batch
(`validation_nextlocllm.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .adaptation_nextlocllm import apply_adaptation, load_backbone_weights
from .backbone_nextlocllm import load_backbone, local_or_hub
from .configuration_nextlocllm import NextLocLLMConfig
from .encoder_nextlocllm import NextLocLLMEncoderMixin, text_lengths
from .heads_nextlocllm import HEAD_TYPES, DurationHead, init_linear
from .history_nextlocllm import PAST_COLUMNS
from .loading_nextlocllm import check_model_type, load_retrievers_beside, resolve_revision
from .ranking_nextlocllm import rank_batch
from .recipes_nextlocllm import DEFAULT_RECIPE, get_recipe
from .retrieval_nextlocllm import CityRetriever, CityRows, city_groups, save_retrievers
from .validation_nextlocllm import (
    check_positive_int,
    check_shapes,
    check_values,
    check_weights_match_config,
    saved_weight_files,
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
    *PAST_COLUMNS,
)


@dataclass
class NextLocLLMOutput(ModelOutput):
    """
    Args:
        loss: with labels, the training loss: `position_loss`, plus `duration_loss` and `ranking_loss` where present.
        coordinates: `(batch, 2)` predicted next position, projected metres (Web Mercator).
        normalized_coordinates: `(batch, 2)` the head's raw output in units of the city's coordinate std: the position
            z-scored with the city's statistics, or with `regression_target="offset_from_last"` the offset from the
            last input point.
        duration: `(batch,)` predicted stay duration in hours, when the duration head is on.
        top_k_cells / top_k_distances / top_k_scores: `(batch, k)` the city's best-ranked cells, their distances (m)
            from the predicted point, and what the head ranked them by, higher first (minus the distance for the
            paper's head, the log-density per square metre for the mixture, the candidate score for a ranker: NaN for a
            cell only its position head listed); past the last cell of a city with fewer than k cells, `NO_CELL` (-1)
            at an infinite distance and a NaN score.
        mixture_means / mixture_scales: `(batch, K, 2)` the modes' centres and standard deviations, projected metres;
            mixture_weights: `(batch, K)`; with a mixture head of K components. `coordinates` is then the heaviest
            mode.
        candidate_cells / candidate_scores: `(batch, max_candidates)` the ranker's candidates (-1 = padding) and
            their scores, with a `_ranker` head type.
        hidden_states: the backbone's hidden states at the record tokens (the shared prompt's are not repeated per
            sample), when requested.
        coordinate_mean / coordinate_std: `(batch, 2)` float64, the statistics each sample was normalized with (its
            city's, or the given ones), as PatchTST returns its `loc` and `scale`.
        position_loss / duration_loss / ranking_loss: the parts of `loss`, which is their sum, with labels: the
            position head's loss (metres for the point head, the negative log-likelihood for the mixture), the
            weighted duration loss (with the duration head) and the weighted listwise loss (with a `_ranker` head,
            given `target_cell`). Their scales differ by orders of magnitude, so training shows them apart.
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
    top_k_scores: torch.Tensor | None = None
    coordinate_mean: torch.Tensor | None = None
    coordinate_std: torch.Tensor | None = None
    position_loss: torch.Tensor | None = None
    duration_loss: torch.Tensor | None = None
    ranking_loss: torch.Tensor | None = None


class NextLocLLMPreTrainedModel(PreTrainedModel):
    config_class = NextLocLLMConfig
    config: NextLocLLMConfig
    base_model_prefix = "nextlocllm"
    main_input_name = "history_coordinates"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default initialization for NextLocLLM's own layers, as in the authors' code (`init_linear`); the
        heads and the candidate scorer initialize themselves (`init_head_weights`: the offset head and the scorer's
        context path start at zero; the scorer after its layers, children come first). The backbone (a
        PreTrainedModel) initializes itself."""
        if hasattr(module, "init_head_weights"):
            module.init_head_weights()
        elif isinstance(module, nn.Linear):
            init_linear(module)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        else:
            super()._init_weights(module)


class NextLocLLMForCoordinateRegression(NextLocLLMEncoderMixin, NextLocLLMPreTrainedModel):
    """The NextLocLLM model: the encoder, the position head the config selects (and the optional candidate ranker and
    duration head), and a KD-tree retriever per known city."""

    input_names = MODEL_INPUT_NAMES
    # How `push_to_hub` uploads: the nextlocllm_hf package sets its `push_model` (the validated card with the run's
    # metrics) on import; without the package (remote code), transformers' own push.
    hub_pusher: ClassVar[Callable[..., Any] | None] = None

    def __init__(self, config: NextLocLLMConfig):
        super().__init__(config)
        self._build_encoder(config)  # record embedding, text buffers, query token, backbone
        # The head type's layers under their checkpoint names (`regression_head` / `mixture_head`, `candidate_scorer`),
        # then `duration_head`, built in that order.
        self.head_type = HEAD_TYPES[config.head_type]
        for name, layer in self.head_type.layers(config).items():
            self.add_module(name, layer)
        if config.use_duration_head:
            self.duration_head = DurationHead(config)
        self.retrievers: dict[str, CityRetriever] = {}
        self.post_init()
        apply_adaptation(self.backbone, config.adaptation)

    @property
    def head_description(self) -> str:
        """Which prediction head this model uses, in words (model cards, logs)."""
        return self.head_type.description(self.config)

    # -------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str = "smollm2-135m",
        hub_kwargs: Mapping[str, Any] | None = None,
        recipe: str | None = DEFAULT_RECIPE,
        **config_overrides,
    ) -> "NextLocLLMForCoordinateRegression":
        """A new model around pretrained backbone weights (a Hub id, a local folder, or `smollm2-135m`).

        `recipe` (`recipes_nextlocllm.RECIPES`; default the recommended `ranker`, `paper` for the authors' model)
        gives the config values, and `config_overrides` win over them; `recipe=None` starts from the config's class
        defaults instead. The task mode is the caller's (`task_mode`, default `next`). The backbone is cut to
        `num_backbone_layers`; the prompt and POI descriptions are encoded once into persistent buffers, so the saved
        model loads later without tokenizer or network. Like `from_pretrained`, it returns the model in eval mode.
        """
        values = {**(get_recipe(recipe).config if recipe is not None else {}), **config_overrides}
        num_layers = values.get("num_backbone_layers", NextLocLLMConfig.num_backbone_layers)
        backbone, tokenizer, _ = load_backbone(name_or_path, num_layers, **dict(hub_kwargs or {}))
        config = NextLocLLMConfig(llm_config=backbone.config.to_dict(), recipe=recipe, **values)
        config.prompt_length, config.poi_description_length = text_lengths(config, tokenizer)
        model = cls(config)
        model.load_backbone_weights(backbone.state_dict())
        model.encode_text_features(tokenizer)
        model.config.name_or_path = model.config.backbone_name_or_path = name_or_path
        return model.eval()

    def load_backbone_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy pretrained backbone weights in, mapping onto LoRA-wrapped layers (`x.weight` -> `x.base_layer.weight`)."""
        load_backbone_weights(self.backbone, state_dict)

    # ------------------------------------------------------------------------------------------------ retrieval
    def add_city(self, retriever: CityRetriever) -> None:
        """Register a city's candidate cells and statistics; this is how the model serves a new city zero-shot."""
        if retriever.poi_frequency.shape[1] != self.config.num_poi_classes:
            raise ValueError(
                f"city {retriever.name!r} has {retriever.poi_frequency.shape[1]} POI classes, "
                f"the model {self.config.num_poi_classes}"
            )
        expected = list(self.config.poi_class_names)
        if retriever.poi_classes is not None and retriever.poi_classes != expected:
            raise ValueError(f"city {retriever.name!r} has poi_classes={retriever.poi_classes!r}, the model "
                             f"{expected!r}")
        self.retrievers[retriever.name] = retriever

    @property
    def cities(self) -> list[str]:
        return list(self.retrievers)

    def retriever(self, city: str) -> CityRetriever:
        if city not in self.retrievers:
            raise ValueError(f"city={city!r} is unknown to this model; known cities: {self.cities} (use add_city)")
        return self.retrievers[city]

    @staticmethod
    def _statistics(mean: torch.Tensor | None, std: torch.Tensor | None, cities: list[CityRows] | None,
                    batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, 2)` float64 mean and std: each sample's city's (its retriever's), or the given ones without a city."""
        if cities is None:
            if mean is None or std is None:
                raise ValueError("coordinate_mean/coordinate_std or city= is required to normalize coordinates")
            return mean.expand(batch_size, 2), std.expand(batch_size, 2)
        if mean is not None or std is not None:
            raise ValueError("give city= or coordinate_mean/coordinate_std, not both: with city= the model normalizes "
                             "with that city's statistics")
        mean, std = np.empty((batch_size, 2)), np.empty((batch_size, 2))
        for city in cities:
            mean[city.rows], std[city.rows] = city.retriever.coordinate_mean, city.retriever.coordinate_std
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
        past_cell: torch.Tensor | None = None,
        past_day: torch.Tensor | None = None,
        past_hour: torch.Tensor | None = None,
        past_hours_ago: torch.Tensor | None = None,
        past_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> NextLocLLMOutput | tuple:
        r"""
        history_* / current_*: coordinates `(B, L, 2)` in projected metres, day `(B, L)` 0=Monday..6, hour
            `(B, L)` 0..23, duration `(B, L)` stay hours >= 0, poi `(B, L, C)` the cell's POI frequencies.
        coordinate_mean / coordinate_std: `(B, 2)` or `(2,)` statistics to normalize with, for a batch without
            `city`; with `city` (a name or one name per sample) each sample's registered retriever's statistics are
            used, and giving both is refused (a city's statistics live in one object).
        target_day / target_hour / target_time_gap: `(B,)` the query (local day 0..6, hour 0..23, hours since the
            last record), required with task_mode='at_time' and refused with task_mode='next'.
        labels: `(B, 2)` true next position in projected metres; duration_labels: `(B,)` its stay hours.
        top_k: with `city`, also return the city's k best-ranked cells (all of a city's cells when it has fewer, then
            `NO_CELL` places: evaluation ranks every city at one depth).
        history_cell / current_cell: `(B, L)` the records' cell ids, and `city`: needed by the candidate ranker;
            target_cell `(B,)` trains it (listwise loss on the true cell).
        past_cell / past_day / past_hour / past_hours_ago / past_mask: `(B, P)` the user's records up to the last input
            one (cell id, local day and hour, hours before the last input record; mask False at the left padding),
            read by a ranker with `candidate_history` (whole-history statistics, earlier cells as candidates).
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
            "past_cell": past_cell,
            "past_day": past_day,
            "past_hour": past_hour,
            "past_hours_ago": past_hours_ago,
            "past_mask": past_mask,
        }
        batch_size = check_shapes(self.config, inputs)
        if top_k is not None:
            check_positive_int("top_k", top_k)
        mean, std = (None if value is None else torch.as_tensor(value, dtype=torch.float64)
                     for value in (coordinate_mean, coordinate_std))
        check_values(self.config, inputs, mean, std)
        if (self.config.use_prompt or self.config.use_llm_poi) and not bool(self.text_features_encoded):
            raise ValueError(
                "the prompt / POI description buffers were never encoded: build the model with "
                "NextLocLLMForCoordinateRegression.from_backbone(...) or call encode_text_features(tokenizer)"
            )
        # The batch's cities, grouped once: the statistics, the candidate features and the ranking read them.
        cities = None if city is None else city_groups(city, batch_size, self.retriever)
        mean, std = self._statistics(mean, std, cities, batch_size)
        mean, std = mean.to(history_coordinates.device), std.to(history_coordinates.device)

        encoded = self.encode(inputs, mean, std, output_hidden_states)
        head = self.head_type.run(self, inputs, cities, mean, std, encoded.last_state, encoded.record_states)
        loss, duration, duration_loss = head.loss, None, None
        if self.config.use_duration_head:
            log_duration = self.duration_head.predict(encoded.last_state)
            duration = torch.expm1(log_duration)
            if duration_labels is not None and labels is not None:
                duration_loss = self.duration_head.loss(log_duration, duration_labels)
                loss = loss + duration_loss
        if head.ranking_loss is not None:
            loss = loss + head.ranking_loss
        top_k_cells = top_k_distances = top_k_scores = None
        if top_k is not None:
            if cities is None:
                raise ValueError("top_k needs city= (the city whose candidate cells to rank)")
            top_k_cells, top_k_distances, top_k_scores = rank_batch(
                head.position.coordinates, cities, top_k,
                lambda one_city, depth: self.head_type.rank(self, head, one_city, depth))

        output = NextLocLLMOutput(
            loss=loss,
            coordinates=head.position.coordinates,
            normalized_coordinates=head.position.normalized,
            duration=duration,
            top_k_cells=top_k_cells,
            top_k_distances=top_k_distances,
            top_k_scores=top_k_scores,
            hidden_states=encoded.hidden_states,
            coordinate_mean=mean,
            coordinate_std=std,
            position_loss=head.loss,
            duration_loss=duration_loss,
            ranking_loss=head.ranking_loss,
            **self.head_type.output_fields(self, head),
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def predict(
        self, batch: Mapping[str, Any], city: str | Sequence[str], k: int = 10, batch_size: int = 256
    ) -> NextLocLLMOutput:
        """Top-k candidate cells of `city` for any number of trajectories, `batch_size` at a time; k may not exceed
        a city's number of cells.

        Runs in eval mode without gradients, so the prompt's keys and values are computed once and shared by every
        chunk. Extra columns (user ids, labels, statistics: the cities' own are used) are ignored.
        """
        check_positive_int("batch_size", batch_size)
        for name in [city] if isinstance(city, str) else dict.fromkeys(city):
            self.retriever(name).check_k(k)
        # The labels are not needed, and the statistics are the cities' (a batch may carry them, e.g. dummy_inputs).
        ignored = ("labels", "duration_labels", "coordinate_mean", "coordinate_std")
        inputs = {name: _as_tensor(batch[name], self.device) for name in self.input_names
                  if name in batch and name not in ignored}
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
        return NextLocLLMOutput(**{field: torch.cat([chunk[field] for chunk in chunks])
                                   for field in chunks[0].keys() if field != "hidden_states"})

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
        """Weights, config and every city's retriever; where the code travels (registered for auto classes, as the
        package and remote code do), also the `next-location` pipeline, so the folder predicts from raw records."""
        if self._auto_class is not None and kwargs.get("is_main_process", True):
            from .pipeline_nextlocllm import add_pipeline_to_save  # transformers.pipelines loads only when saving

            add_pipeline_to_save(self.config, save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            save_retrievers(self.retrievers, save_directory)

    def push_to_hub(self, repo_id: str, **kwargs):
        """transformers' `push_to_hub`; with the nextlocllm_hf package installed, its card and checks (see
        `hub_pusher`), which also take `results=` (train.py's results.json)."""
        if type(self).hub_pusher is None:
            return super().push_to_hub(repo_id, **kwargs)
        return type(self).hub_pusher(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load weights and config as usual, then the retrievers saved beside them (same commit, cache and token).

        Safetensors weights only (a pickle runs code when loaded), checked first against the shapes the config builds,
        so a config from another model is named as such (`validation_nextlocllm.check_weights_match_config`)."""
        from safetensors import SafetensorError

        hub_keys = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
        name = str(pretrained_model_name_or_path)
        config = kwargs.get("config")
        if not isinstance(config, NextLocLLMConfig):  # AutoModel passes the config it has checked
            with local_or_hub(name, "model"):
                check_model_type(name, {key: kwargs[key] for key in hub_keys if kwargs.get(key) is not None})
        # Resolve a branch to its commit once, so weights and retrievers come from the same repository state even if
        # the repo is pushed to in between (AutoModel passes an already resolved revision; this covers direct calls).
        kwargs["revision"] = resolve_revision(pretrained_model_name_or_path, kwargs)
        kwargs["use_safetensors"] = True
        hub_kwargs = {key: kwargs[key] for key in hub_keys if kwargs.get(key) is not None}
        try:
            if not kwargs.get("variant"):  # a variant's file names are transformers' business
                files = saved_weight_files(name, hub_kwargs)
                if not isinstance(config, NextLocLLMConfig):
                    config = NextLocLLMConfig.from_pretrained(name, **hub_kwargs)
                check_weights_match_config(cls, config, files, name)
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise ValueError(f"{name}: the safetensors weights are truncated or damaged ({error}); save, copy or "
                             f"download the model again") from error
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        apply_adaptation(model.backbone, model.config.adaptation)  # loading materializes fresh parameters, all trainable
        model.retrievers = load_retrievers_beside(str(pretrained_model_name_or_path), hub_kwargs)
        return loaded


def _as_tensor(value: Any, device: torch.device) -> torch.Tensor:
    return value.to(device) if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value), device=device)


__all__ = ["NextLocLLMForCoordinateRegression", "NextLocLLMPreTrainedModel", "NextLocLLMOutput", "MODEL_INPUT_NAMES"]
