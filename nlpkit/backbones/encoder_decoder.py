"""Encoder-decoder Transformer with an LM head (BART, Marian, T5).

References:
    - Vaswani et al. 2017, Attention Is All You Need
      (https://arxiv.org/abs/1706.03762): post-norm, sinusoidal positions,
      scaled embeddings (Marian keeps all three).
    - Lewis et al. 2020, BART (https://arxiv.org/abs/1910.13461);
      `transformers/models/bart/modeling_bart.py` (learned positions offset
      by 2, embedding LayerNorm, `final_logits_bias`).
    - Raffel et al. 2020, T5 (https://arxiv.org/abs/1910.10683);
      `transformers/models/t5/modeling_t5.py` (pre-norm RMSNorm, relative
      position buckets, unscaled attention, decoder output scaled by
      `d_model ** -0.5` before a tied head).

One token table is shared by the encoder, the decoder and (when tied) the LM
head, as in all three families. Each stack has its own positions, embedding
norm, relative-position bias and final norm; the decoder its own layer count,
head count and feed-forward width (`BackboneConfig.decoder_side`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nlpkit.backbones.config import BackboneConfig
from nlpkit.backbones.cache import BackboneOutput, KVCache, kv_cache_dtype
from nlpkit.backbones.layers import (
    Embeddings,
    Linear,
    RelativePositionBias,
    TransformerLayer,
    check_positions,
    compute_dtype,
    init_weights,
    make_attention_mask,
    make_norm,
    rotary_cos_sin,
    tie_lm_head,
)

__all__ = ["EncoderDecoder"]


class Stack(nn.Module):
    """One side of the encoder-decoder: bidirectional encoder or causal decoder.

    The decoder side adds cross-attention to every layer and reads/writes the
    KV cache. Token lookup happens in the parent (the table is shared); this
    stack adds positions, norm and dropout through `embeddings`.
    """

    def __init__(self, config: BackboneConfig, num_layers: int, causal: bool) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.embeddings = Embeddings(config, with_token=False)
        self.relative_position_bias = (
            RelativePositionBias(config, bidirectional=not causal) if config.position_embedding == "relative" else None
        )
        self.layers = nn.ModuleList(TransformerLayer(config, i, cross_attention=causal) for i in range(num_layers))
        self.final_norm = make_norm(config) if config.final_norm else None

    def forward(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Runs the stack.

        Args:
            inputs_embeds: `(batch, seq, hidden)` unscaled token embeddings.
            attention_mask: `(batch, past + seq)` 1/0 padding mask, or None.
            cache: Decoder only: KV cache to read and update, or None.
            memory: Decoder only: `(batch, source_seq, hidden)` encoder output;
                may be None when the cache already holds cross-attention K/V.
            memory_attention_mask: Decoder only: `(batch, source_seq)` 1/0
                padding mask of the source, or None.

        Returns:
            `(batch, seq, hidden)`.
        """
        config = self.config
        length = inputs_embeds.shape[1]
        past_length = cache.length if cache is not None else 0
        total = past_length + length
        check_positions(config, total)
        position_ids = torch.arange(past_length, total, device=inputs_embeds.device)[None]  # (1, seq)
        x = self.embeddings(position_ids=position_ids, inputs_embeds=inputs_embeds)

        dtype = compute_dtype(x)
        rotary = None
        if config.position_embedding == "rotary":
            rotary = rotary_cos_sin(position_ids, config, dtype)
        mask, is_causal = make_attention_mask(
            attention_mask, length, total, causal=self.causal, dtype=dtype, device=x.device,
            explicit=self.relative_position_bias is not None,
        )
        if self.relative_position_bias is not None:
            # Computed once per stack and shared by all its layers, as T5 does.
            mask = mask + self.relative_position_bias(length, total, past_length).to(dtype)  # (batch, heads, q, k)
        memory_mask = None
        if self.causal and memory_attention_mask is not None:
            source_length = memory_attention_mask.shape[1]
            memory_mask, _ = make_attention_mask(
                memory_attention_mask, length, source_length, causal=False, dtype=dtype, device=x.device
            )  # (batch, 1, seq, source_seq)

        if cache is not None:
            cache.reserve(total)
        for layer in self.layers:
            x = layer(x, mask, is_causal=is_causal, rotary=rotary, cache=cache, memory=memory, memory_mask=memory_mask)
        if cache is not None:
            cache.advance(length)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


class EncoderDecoder(nn.Module):
    """Encoder and causal decoder joined by cross-attention, with an LM head.

    Sub-modules: `token_embedding` (shared), `encoder` and `decoder` (each
    `embeddings.{position,norm}`, `relative_position_bias.embedding`,
    `layers.N.{attention,attention_norm,mlp,mlp_norm}`, `final_norm`; decoder
    layers add `cross_attention` and `cross_attention_norm`), `lm_head`
    (plus the `final_logits_bias` buffer when `lm_head_bias`).

    Args:
        config: A config with `kind="encoder-decoder"`.

    Example:
        >>> from nlpkit.backbones.presets import encoder_decoder_tiny
        >>> model = EncoderDecoder(encoder_decoder_tiny())
        >>> source = torch.tensor([[5, 6, 7, 2]])
        >>> encoded = model.encode(source)
        >>> out = model(decoder_input_ids=torch.tensor([[0]]), encoder_outputs=encoded, use_cache=True)
        >>> model.logits(out.last_hidden_state).shape
        torch.Size([1, 1, 30522])
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if config.kind != "encoder-decoder":
            raise ValueError(f"kind must be 'encoder-decoder' for EncoderDecoder, got {config.kind!r}")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = Stack(config, config.num_layers, causal=False)
        # The decoder may differ from the encoder in layers, heads and feed-forward width (BART, Marian).
        self.decoder = Stack(config.decoder_side(), config.resolved_num_decoder_layers, causal=True)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.lm_head_bias:
            # A buffer, not a Parameter: BART/Marian keep it fixed during training.
            self.register_buffer("final_logits_bias", torch.zeros(config.vocab_size))
        self.apply(init_weights)
        if config.tie_word_embeddings:
            tie_lm_head(self, "lm_head", "token_embedding")

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table shared by both stacks."""
        return self.token_embedding

    def logits(self, hidden_states: Tensor) -> Tensor:
        """Applies the LM head: `(..., hidden)` -> `(..., vocab_size)`."""
        if self.config.scale_lm_head_input:
            # T5 with a tied head rescales the decoder output (Mesh TensorFlow convention).
            hidden_states = hidden_states * self.config.hidden_size**-0.5
        logits = self.lm_head(hidden_states)
        if self.config.lm_head_bias:
            logits = logits + self.final_logits_bias
        return logits

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> BackboneOutput:
        """Runs the encoder alone, so generation encodes the source once.

        Args:
            input_ids: `(batch, source_seq)` source token ids.
            attention_mask: `(batch, source_seq)` 1/0 padding mask, or None.

        Returns:
            `BackboneOutput` whose `last_hidden_state` is the encoder output.
        """
        hidden = self.encoder(self.token_embedding(input_ids), attention_mask)
        return BackboneOutput(last_hidden_state=hidden)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_outputs: BackboneOutput | Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> BackboneOutput:
        """Encodes the source (unless given) and decodes the target.

        Args:
            input_ids: `(batch, source_seq)` source ids; not needed when
                `encoder_outputs` is given or the cache already holds the
                cross-attention keys and values.
            attention_mask: `(batch, source_seq)` 1/0 source padding mask, or
                None. Pass it at every decoding step: it masks cross-attention.
            decoder_input_ids: `(batch, seq)` target ids (already shifted right
                by the caller).
            decoder_attention_mask: `(batch, past + seq)` 1/0 target padding
                mask covering the cached past, or None.
            encoder_outputs: The result of `encode` (or its tensor) to reuse.
            past_key_values: A cache to read and update in place; None for none.
                A cache belongs to one source batch: its cross-attention keys
                and values are computed on the first call and reused after.
            use_cache: Return the cache, allocating one (sized to this input;
                it doubles when outgrown) if none is given.

        Returns:
            `BackboneOutput` with the decoder's `last_hidden_state`
            `(batch, seq, hidden)`, `encoder_last_hidden_state` (None when the
            encoder output was neither given nor computed) and
            `past_key_values` when `use_cache`.

        Raises:
            ValueError: On missing inputs or shapes that do not match.
        """
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required (the caller shifts the labels right)")
        batch, length = decoder_input_ids.shape
        if isinstance(encoder_outputs, BackboneOutput):
            memory: Tensor | None = encoder_outputs.last_hidden_state
        else:
            memory = encoder_outputs
        cache = past_key_values
        has_cross = cache is not None and cache.cross_keys[0] is not None
        if memory is None and input_ids is not None:
            memory = self.encode(input_ids, attention_mask).last_hidden_state
        if memory is None and not has_cross:
            raise ValueError("pass input_ids or encoder_outputs (or a cache holding cross-attention keys)")
        if cache is not None and cache.batch_size != batch:
            raise ValueError(f"past_key_values holds batch size {cache.batch_size}, decoder_input_ids has {batch}")

        target = self.token_embedding(decoder_input_ids)  # (batch, seq, hidden)
        if cache is None and use_cache:
            cache = KVCache.allocate(self.config, batch, length, dtype=kv_cache_dtype(compute_dtype(target), target.device),
                                    device=target.device)
        hidden = self.decoder(
            target, decoder_attention_mask, cache=cache, memory=memory, memory_attention_mask=attention_mask
        )
        return BackboneOutput(
            last_hidden_state=hidden,
            past_key_values=cache if use_cache else None,
            encoder_last_hidden_state=memory,
        )
