"""The shared-prefix KV cache that training and scoring both reuse.

Classification prompts share a long prefix (chat template + instruction). Both the training loss and the scorer run
it once, then expand its KV cache to the batch as views (no copy until a row appends to it). Written once here because
the two must agree exactly: a test compares the loss and its gradients with TRL's, another the scores with `generate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PretrainedConfig


def run_prefix(
    module: Any, input_ids: torch.Tensor, config: PretrainedConfig, cache: DynamicCache | None = None, **kwargs: Any
) -> DynamicCache:
    """Run `input_ids` (one row) through `module` (a causal LM or its backbone) into a fresh cache, or on after
    `cache` (a prompt-learning adapter's virtual tokens, `fintrl.model.peft_methods.virtual_cache`: positions follow
    them)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config) if cache is None else cache
    module(input_ids=input_ids, cache=cache, use_cache=True, **kwargs)
    return cache


def expand_cache(prefix: DynamicCache | None, batch: int, config: PretrainedConfig) -> DynamicCache:
    """A fresh cache for `batch` rows, each starting with the one-row `prefix` (expanded views; gradients flow back)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for i, layer in enumerate(prefix.layers if prefix is not None else []):
        cache.update(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1), i)
    return cache
