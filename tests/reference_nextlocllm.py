"""The paper's computation of the model, kept beside the tests that compare the fast forward with it.

The model runs the constant prompt once as a shared prefix and projects the C POI description tables once; the
authors' code prepends the prompt to every sample and weights, flattens and projects the description tables per
record. Same outputs and gradients (up to rounding), several times the work. `paper_computation(model)` swaps the
model's two fast steps for these forms, from the model's own modules, so everything else (heads, losses, ranking) is
the model's code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def repeated_prompt_backbone(model, tokens: torch.Tensor, output_hidden_states: bool | None):
    """The decoder over `[prompt ; tokens]` with the prompt repeated in every sample (no cache)."""
    if not model.config.use_prompt:
        return model.backbone(inputs_embeds=tokens, output_hidden_states=output_hidden_states, use_cache=False)
    prompt = model.backbone.get_input_embeddings()(model.prompt_token_ids)[None].to(tokens.dtype)
    sequence = torch.cat([prompt.expand(len(tokens), -1, -1), tokens], dim=1)
    return model.backbone(inputs_embeds=sequence, output_hidden_states=output_hidden_states, use_cache=False)


def per_record_poi_tokens(model, tokens: torch.Tensor, poi: torch.Tensor, part: str) -> torch.Tensor:
    """`tokens` plus `Linear(flatten(sum_c p_c E_c))` per record: the description tables weighted by the record's POI
    frequencies, flattened, then projected."""
    projection = model.history_poi_projection if part == "history" else model.current_poi_projection
    weighted = torch.einsum("blc,ctd->bltd", poi, model.poi_text_embeddings.to(poi.dtype))
    return tokens + projection(weighted.flatten(-2))


@contextmanager
def paper_computation(model) -> Iterator:
    """Within the block, `model` computes as the authors' code does (for equality tests and benchmarks)."""
    model.run_backbone = lambda tokens, output_hidden_states: repeated_prompt_backbone(model, tokens,
                                                                                       output_hidden_states)
    model.add_poi_tokens = lambda tokens, poi, part: per_record_poi_tokens(model, tokens, poi, part)
    try:
        yield model
    finally:
        del model.run_backbone, model.add_poi_tokens  # back to the class's methods
