"""Causal Transformer decoder with an LM head (GPT-2, Llama, Mistral, Qwen, Phi-3, Gemma).

References:
    - Radford et al. 2019, GPT-2; `transformers/models/gpt2/modeling_gpt2.py`
      and karpathy/nanoGPT `model.py` (pre-norm, learned positions, tied head).
    - Touvron et al. 2023, Llama (https://arxiv.org/abs/2302.13971);
      `transformers/models/llama/modeling_llama.py` (RMSNorm, rotary, SwiGLU).
    - Ainslie et al. 2023, grouped-query attention
      (https://arxiv.org/abs/2305.13245).
    - Jiang et al. 2023, Mistral 7B (https://arxiv.org/abs/2310.06825):
      sliding-window attention; `transformers/masking_utils.py`
      (`sliding_window_causal_mask`) and `models/qwen2/` (per-layer types).
    - Gemma Team 2024, Gemma 2 (https://arxiv.org/abs/2408.00118): local and
      global layers, normalised branch outputs, logit soft-capping;
      `transformers/models/gemma2/` and `models/gemma3/` (a rotary base per
      layer type).

The call returns hidden states; `logits` applies the LM head separately so a
task can use the hidden states alone (classification, embeddings) or only
the last position during generation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nlpkit.backbones.config import BackboneConfig
from nlpkit.backbones.cache import BackboneOutput, KVCache, kv_cache_dtype
from nlpkit.backbones.layers import (
    Embeddings,
    Linear,
    TransformerLayer,
    check_positions,
    compute_dtype,
    init_weights,
    make_attention_mask,
    make_norm,
    rotary_cos_sin,
    soft_cap,
    tie_lm_head,
)

__all__ = ["Decoder"]


class Decoder(nn.Module):
    """A stack of causal Transformer layers with a KV cache and an LM head.

    Sub-modules: `embeddings.{token,position,norm}`,
    `layers.N.{attention,attention_norm,mlp,mlp_norm}` (and `attention_output_norm`,
    `mlp_output_norm` with `branch_output_norm`), `final_norm`,
    `lm_head` (plus the `final_logits_bias` buffer when `lm_head_bias`).

    Args:
        config: A config with `kind="decoder"`.

    Example:
        >>> from nlpkit.backbones.presets import decoder_tiny
        >>> decoder = Decoder(decoder_tiny())
        >>> out = decoder(torch.tensor([[5, 6, 7]]), use_cache=True)
        >>> step = decoder(torch.tensor([[8]]), past_key_values=out.past_key_values, use_cache=True)
        >>> decoder.logits(step.last_hidden_state).shape
        torch.Size([1, 1, 30522])
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if config.kind != "decoder":
            raise ValueError(f"kind must be 'decoder' for Decoder, got {config.kind!r}")
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(TransformerLayer(config, i) for i in range(config.num_layers))
        self.final_norm = make_norm(config) if config.final_norm else None
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.lm_head_bias:
            # A buffer, not a Parameter: BART/Marian keep it fixed during training.
            self.register_buffer("final_logits_bias", torch.zeros(config.vocab_size))
        self.apply(init_weights)
        if config.tie_word_embeddings:
            tie_lm_head(self, "lm_head", "embeddings.token")

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table."""
        token = self.embeddings.token
        if token is None:  # never: these embeddings are built with their token table
            raise RuntimeError("the embeddings have no token table")
        return token

    def logits(self, hidden_states: Tensor) -> Tensor:
        """Applies the LM head: `(..., hidden)` -> `(..., vocab_size)`."""
        if self.config.scale_lm_head_input:
            hidden_states = hidden_states * self.config.hidden_size**-0.5
        logits = self.lm_head(hidden_states)
        if self.config.lm_head_bias:
            logits = logits + self.final_logits_bias
        return soft_cap(logits, self.config.logit_softcap)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        document_ids: Tensor | None = None,
    ) -> BackboneOutput:
        """Runs the decoder on new tokens, attending to the cached past.

        Args:
            input_ids: `(batch, seq)` new token ids.
            attention_mask: `(batch, past + seq)`, 1 for real and 0 for padded
                positions, covering the cached past too (as in `transformers`);
                None means no padding.
            position_ids: `(batch, seq)` positions; None means
                `past .. past + seq - 1`. Left-padded batches should pass
                `(attention_mask.cumsum(-1) - 1).clamp(min=0)` for the new
                positions so each sequence counts from its first real token.
            past_key_values: A cache to read and update in place; None for none.
            use_cache: Return the cache, allocating one (sized to this input;
                it doubles when outgrown) if none is given.
            document_ids: `(batch, past + seq)` for rows that pack several
                examples: each position's example number. A token attends only
                to earlier tokens of its own example; pass `position_ids` that
                restart at 0 with each example, so that each is computed as if
                it were alone in its row.

        Returns:
            `BackboneOutput` with `last_hidden_state` `(batch, seq, hidden)` and
            `past_key_values` when `use_cache`.

        Raises:
            ValueError: On a mask or cache that does not match the input, or a
                sequence longer than the position table.
        """
        config = self.config
        batch, length = input_ids.shape
        cache = past_key_values
        past_length = cache.length if cache is not None else 0
        if cache is not None and cache.batch_size != batch:
            raise ValueError(f"past_key_values holds batch size {cache.batch_size}, input_ids has {batch}")
        total = past_length + length
        if position_ids is None:
            check_positions(config, total)
            position_ids = torch.arange(past_length, total, device=input_ids.device)[None]  # (1, seq)
        x = self.embeddings(input_ids, position_ids)  # (batch, seq, hidden)

        dtype = compute_dtype(x)
        if cache is None and use_cache:
            cache = KVCache.allocate(config, batch, total, dtype=kv_cache_dtype(dtype, x.device), device=x.device)
        if cache is not None:
            cache.reserve(total)
        rotary = local_rotary = None
        if config.position_embedding == "rotary":
            rotary = local_rotary = rotary_cos_sin(position_ids, config, dtype)
            if config.local_rope_theta is not None:  # Gemma 3: sliding-window layers turn at their own base
                local_rotary = rotary_cos_sin(position_ids, config, dtype, sliding=True)
        # Soft-capped attention runs outside SDPA, which would otherwise apply the causal mask itself.
        explicit = config.attention_softcap is not None
        mask, is_causal = make_attention_mask(attention_mask, length, total, causal=True, dtype=dtype, device=x.device,
                                              explicit=explicit, document_ids=document_ids)
        # Sliding-window layers get a second mask only when some key is older than the window.
        # The cache keeps every key and the mask hides the old ones: simplest correct choice
        # (a rolling buffer would save memory but needs its own position bookkeeping).
        window = config.sliding_window
        slides = window is not None and total > window
        sliding = (make_attention_mask(attention_mask, length, total, causal=True, dtype=dtype, device=x.device,
                                       explicit=explicit, sliding_window=window, document_ids=document_ids)
                   if slides else (mask, is_causal))

        for i, layer in enumerate(self.layers):
            if config.layer_window(i) is None:
                x = layer(x, mask, is_causal=is_causal, rotary=rotary, cache=cache)
            else:
                layer_mask, layer_causal = sliding if slides else (mask, is_causal)
                x = layer(x, layer_mask, is_causal=layer_causal, rotary=local_rotary, cache=cache)
        if cache is not None:
            cache.advance(length)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return BackboneOutput(last_hidden_state=x, past_key_values=cache if use_cache else None)
