"""Krea 2's attention with its grouped key/value heads read as they are (`native_gqa`)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor

from darkroom.attention_backends import GQA_BACKENDS


def _backend_name(backend: Any) -> str | None:
    return None if backend is None else str(getattr(backend, "value", backend))


class GroupedKVAttnProcessor(Krea2AttnProcessor):  # type: ignore[misc]
    """diffusers' Krea 2 processor, less its copy of the 12 key/value heads to the 48 query heads
    when there is no attention mask and the backend attends grouped heads itself.

    diffusers repeats the heads because Krea 2 always passes a text mask, and with a mask only
    SDPA's math and cuDNN kernels take `enable_gqa` (math building the whole attention matrix).
    With compact text there is no mask, so SDPA's flash kernel, or flash-attn's, reads each
    key/value head once for its four query heads: the same sums, without writing and reading
    four copies of K and V per block. Anything else (a mask, another backend) takes diffusers'
    path unchanged.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        grouped = attn.num_heads != attn.num_kv_heads
        if not grouped or attention_mask is not None:
            return super().__call__(attn, hidden_states, attention_mask, image_rotary_emb)
        if _backend_name(self._attention_backend) not in GQA_BACKENDS:
            return super().__call__(attn, hidden_states, attention_mask, image_rotary_emb)
        heads = (attn.num_heads, attn.head_dim)
        kv_heads = (attn.num_kv_heads, attn.head_dim)
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, heads))
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, kv_heads))
        value = attn.to_v(hidden_states).unflatten(-1, kv_heads)
        gate = attn.to_gate(hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(
            query,
            key,
            value,
            enable_gqa=True,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        out = out.flatten(2, 3) * torch.sigmoid(gate)
        return attn.to_out[0](out)
