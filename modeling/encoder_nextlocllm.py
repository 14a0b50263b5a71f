"""The base model: a sample's records (and query) -> the backbone's hidden states.

Each record becomes one backbone-width token: its normalized projected coordinates, day, hour and log1p stay
duration are embedded, concatenated, projected (separately for history and current) with tanh, and the LLM-enhanced
POI embedding of its cell is added: the backbone's embeddings of each POI class's description, flattened and
projected, weighted by the cell's POI frequencies. In `at_time` mode the query (the target's day and hour, sharing the
record embeddings, and the gap since the last record) is one more token, last. The constant prompt precedes them as a
shared prefix (`prefix_nextlocllm.py`), and a truncated decoder reads the sequence through `inputs_embeds`.

This is a mixin of `NextLocLLMForCoordinateRegression` rather than a child module so that its layers keep the flat
state-dict keys of the published checkpoints (`coordinate_embedding.weight`, `backbone.layers.0...`); a child module
would prefix them. Its layers are created in the checkpoints' order, which also fixes their initialization for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel

from .adaptation_nextlocllm import inject_lora
from .configuration_nextlocllm import NextLocLLMConfig
from .prefix_nextlocllm import PromptPrefix


@dataclass
class EncoderOutput:
    """`last_state`: `(B, H)` the state at the readout (last) position; `record_states`: `(B, T, H)` the states at
    the T record tokens; `hidden_states`: the backbone's per-layer states when requested (the shared prompt's are not
    repeated per sample)."""

    last_state: torch.Tensor
    record_states: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class NextLocLLMEncoderMixin:
    """Record embedding, text features, backbone and prompt prefix, on an `nn.Module` with a `NextLocLLMConfig`."""

    config: NextLocLLMConfig

    def _build_encoder(self, config: NextLocLLMConfig) -> None:
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
        if config.use_llm_poi:
            poi_text_width = config.poi_description_length * hidden
            self.history_poi_projection = nn.Linear(poi_text_width, hidden)
            self.current_poi_projection = nn.Linear(poi_text_width, hidden)
        # Text features, encoded once from a tokenizer (`encode_text_features`) and saved with the weights.
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
            inject_lora(self.backbone, config)
        self.prompt_prefix = PromptPrefix()

    # ------------------------------------------------------------------------------------------------ embedding
    def embed_records(self, coordinates: torch.Tensor, day: torch.Tensor, hour: torch.Tensor, duration: torch.Tensor,
                      poi: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, part: str) -> torch.Tensor:
        """`(B, L, H)`: one token per record, tanh(projected record embedding) + LLM-enhanced POI embedding."""
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
            tokens = self.add_poi_tokens(tokens, poi.to(dtype), part)
        return tokens

    def add_poi_tokens(self, tokens: torch.Tensor, poi: torch.Tensor, part: str) -> torch.Tensor:
        """`tokens` plus each record's POI token `Linear(flatten(sum_c p_c E_c))`, computed as `sum_c p_c (W E_c) + b`:
        the C class tables are projected once instead of every record's weighted table."""
        poi_projection = self.history_poi_projection if part == "history" else self.current_poi_projection
        descriptions = self.poi_text_embeddings.to(poi.dtype)
        class_tokens = nn.functional.linear(descriptions.flatten(1), poi_projection.weight)
        return tokens + poi @ class_tokens + poi_projection.bias

    def embed_query(self, target_day: torch.Tensor, target_hour: torch.Tensor,
                    target_time_gap: torch.Tensor) -> torch.Tensor:
        """`(B, 1, H)`: the `at_time` query token."""
        dtype = self.gap_embedding.weight.dtype
        query = torch.cat([self.day_embedding(target_day.long()), self.hour_embedding(target_hour.long()),
                           self.gap_embedding(torch.log1p(target_time_gap.to(dtype))[:, None])], dim=-1)
        return self.target_time_projection(query)[:, None]

    # -------------------------------------------------------------------------------------------------- decoder
    def run_backbone(self, tokens: torch.Tensor, output_hidden_states: bool | None):
        """The decoder over `[prompt ; tokens]` (the prompt as a shared prefix), or over the tokens alone."""
        if not self.config.use_prompt:
            return self.backbone(inputs_embeds=tokens, output_hidden_states=output_hidden_states, use_cache=False)
        return self.prompt_prefix(self.backbone, self.prompt_token_ids, tokens, output_hidden_states)

    def encode(self, inputs: dict[str, torch.Tensor | None], mean: torch.Tensor, std: torch.Tensor,
               output_hidden_states: bool | None = None) -> EncoderOutput:
        """The backbone's states for a checked batch (`forward`'s field names) normalized with `mean`/`std` `(B, 2)`."""
        pieces = [self.embed_records(*(inputs[f"{part}_{field}"] for field in ("coordinates", "day", "hour",
                                                                               "duration", "poi")), mean, std, part)
                  for part in ("history", "current")]
        num_records = pieces[0].shape[1] + pieces[1].shape[1]
        if self.config.task_mode == "at_time":
            pieces.append(self.embed_query(inputs["target_day"], inputs["target_hour"], inputs["target_time_gap"]))
        outputs = self.run_backbone(torch.cat(pieces, dim=1), output_hidden_states)
        states = outputs.last_hidden_state
        # The record tokens' states, counted from the end: a prompt may precede them, the query follows.
        end = states.shape[1] - (len(pieces) - 2)
        return EncoderOutput(states[:, -1], states[:, end - num_records:end],
                             outputs.hidden_states if output_hidden_states else None)

    # -------------------------------------------------------------------------------------------- text features
    @torch.no_grad()
    def encode_text_features(self, tokenizer) -> None:
        """Token ids of the prompt and embeddings of the POI descriptions, stored as persistent buffers."""
        prompt_length, description_length = text_lengths(self.config, tokenizer)
        if (prompt_length, description_length) != (self.config.prompt_length, self.config.poi_description_length):
            raise ValueError(
                f"tokenizer gives prompt_length={prompt_length}, poi_description_length={description_length}; the "
                f"config was built for {self.config.prompt_length}, {self.config.poi_description_length}"
            )
        if self.config.use_prompt:
            prompt_ids = token_ids(tokenizer, self.config.format_prompt())
            self.prompt_token_ids.copy_(torch.tensor(prompt_ids, dtype=torch.long))
        embeddings = self.backbone.get_input_embeddings()
        weight_device = embeddings.weight.device
        table = torch.zeros_like(self.poi_text_embeddings)
        for index, text in enumerate(self.config.poi_description_texts()):
            ids = torch.tensor(token_ids(tokenizer, text), dtype=torch.long, device=weight_device)
            if self.config.poi_text_encoding == "hidden_states":
                encoded = self.backbone(input_ids=ids[None]).last_hidden_state[0]
            else:
                encoded = embeddings(ids)
            # Shorter descriptions are zero-padded: padding then adds nothing to the projected POI token.
            table[index, : len(ids)] = encoded.to(table.dtype)
        self.poi_text_embeddings.copy_(table)
        self.text_features_encoded.fill_(True)


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def text_lengths(config: NextLocLLMConfig, tokenizer) -> tuple[int, int]:
    """Token counts of the prompt (0 without it) and of the longest POI description: they fix buffer shapes."""
    prompt_length = len(token_ids(tokenizer, config.format_prompt())) if config.use_prompt else 0
    description_length = max(len(token_ids(tokenizer, text)) for text in config.poi_description_texts())
    return prompt_length, description_length


__all__ = ["EncoderOutput", "NextLocLLMEncoderMixin", "text_lengths"]
