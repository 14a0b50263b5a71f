"""The constant prompt as a shared prefix: run once (batch 1) and read by every sample through its keys and values.

The paper prepends the same natural-language prompt to every sample. Its hidden states do not depend on the sample
(causal attention: the prompt precedes the records), so the decoder runs over the prompt once, and the records attend
to its per-layer keys and values, expanded over the batch without copies. Outputs and gradients equal the repeated
form's (tests/reference_nextlocllm.py computes that form); the work is several times smaller. While gradients are
off the prefix is kept and reused until a weight changes.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache


class PromptPrefix:
    """Runs a decoder over `[prompt ; tokens]` with the prompt computed once; holds the no-grad cache of its keys and
    values (a plain object, not a module: it has no weights and nothing to save)."""

    def __init__(self) -> None:
        self.cache: tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # (weights key, keys/values)

    def __call__(self, backbone: nn.Module, prompt_token_ids: torch.Tensor, tokens: torch.Tensor,
                 output_hidden_states: bool | None):
        prompt = backbone.get_input_embeddings()(prompt_token_ids)[None].to(tokens.dtype)
        prefix = self.key_values(backbone, prompt_token_ids, prompt)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(len(tokens), -1, -1, -1), v.expand(len(tokens), -1, -1, -1)) for k, v in prefix],
            config=backbone.config,
        )
        return backbone(inputs_embeds=tokens, cache=cache, use_cache=True, output_hidden_states=output_hidden_states)

    def key_values(self, backbone: nn.Module, prompt_token_ids: torch.Tensor,
                   prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer keys and values of the prompt (batch 1); reused while gradients are off and weights unchanged."""
        reusable = not torch.is_grad_enabled()
        if reusable:
            # In-place updates (optimizer steps, load_state_dict) bump a tensor's version: a changed key drops the cache.
            key = (
                tuple((p.data_ptr(), p._version) for p in backbone.parameters()),
                (prompt_token_ids.data_ptr(), prompt_token_ids._version),
                prompt.dtype,
                torch.is_autocast_enabled(prompt.device.type),
                backbone.training,
            )
            if self.cache is not None and self.cache[0] == key:
                return self.cache[1]
        output = backbone(inputs_embeds=prompt, use_cache=True)
        key_values = [(layer.keys, layer.values) for layer in output.cache.layers]
        self.cache = (key, key_values) if reusable else None
        return key_values


__all__ = ["PromptPrefix"]
