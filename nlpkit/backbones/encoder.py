"""Bidirectional Transformer encoder (BERT, RoBERTa, DistilBERT, ModernBERT, T5's encoder).

References:
    - Devlin et al. 2019, BERT (https://arxiv.org/abs/1810.04805);
      `transformers/models/bert/modeling_bert.py`.
    - Liu et al. 2019, RoBERTa (https://arxiv.org/abs/1907.11692): positions
      count from `padding_idx + 1` and skip padding
      (`create_position_ids_from_input_ids`).
    - Sanh et al. 2019, DistilBERT (https://arxiv.org/abs/1910.01108).
    - Warner et al. 2024, ModernBERT (https://arxiv.org/abs/2412.13663):
      global layers alternate with local ones that see a window on both
      sides (`sliding_window`, `layer_types`), each kind with its own rotary
      base; `transformers/models/modernbert/modeling_modernbert.py`.
    - He et al. 2021, DeBERTa (https://arxiv.org/abs/2006.03654):
      disentangled attention over relative embeddings shared by all layers;
      `transformers/models/deberta_v2/modeling_deberta_v2.py`.

The encoder has no LM head: tasks put their own head on `last_hidden_state`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nlpkit.backbones.config import BackboneConfig
from nlpkit.backbones.cache import BackboneOutput
from nlpkit.backbones.layers import (
    Embeddings,
    RelativeEmbeddings,
    RelativePositionBias,
    TransformerLayer,
    check_positions,
    compute_dtype,
    init_weights,
    make_attention_mask,
    make_norm,
    rotary_cos_sin,
)

__all__ = ["Encoder"]


class Encoder(nn.Module):
    """A stack of bidirectional Transformer layers over token embeddings.

    Sub-modules: `embeddings.{token,position,token_type,norm}`,
    `relative_position_bias.embedding` (relative positions only),
    `relative_embeddings.{embedding,norm}` (disentangled attention only),
    `layers.N.{attention,attention_norm,mlp,mlp_norm}` (layer 0's `attention_norm` an
    `nn.Identity` without `first_layer_attention_norm`), `final_norm`.

    Args:
        config: A config with `kind="encoder"`.

    Example:
        >>> from nlpkit.backbones.presets import encoder_tiny
        >>> encoder = Encoder(encoder_tiny())
        >>> encoder(torch.tensor([[101, 2023, 102]])).last_hidden_state.shape
        torch.Size([1, 3, 128])
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if config.kind != "encoder":
            raise ValueError(f"kind must be 'encoder' for Encoder, got {config.kind!r}")
        self.config = config
        self.embeddings = Embeddings(config)
        self.relative_position_bias = (
            RelativePositionBias(config, bidirectional=True) if config.position_embedding == "relative" else None
        )
        self.relative_embeddings = (
            RelativeEmbeddings(config) if config.disentangled_attention is not None else None
        )
        self.layers = nn.ModuleList(TransformerLayer(config, i) for i in range(config.num_layers))
        self.final_norm = make_norm(config) if config.final_norm else None
        self.apply(init_weights)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table."""
        token = self.embeddings.token
        if token is None:  # never: these embeddings are built with their token table
            raise RuntimeError("the embeddings have no token table")
        return token

    def _position_ids(self, input_ids: Tensor) -> Tensor:
        """`(batch or 1, seq)` positions before `position_offset` is added."""
        length = input_ids.shape[1]
        if self.config.position_offset > 0 and self.embeddings.position is not None:
            # RoBERTa counts only real tokens: the k-th real token gets offset + k
            # and every pad gets offset - 1 (its padding_idx), whatever the padding side.
            pad_token_id = self.config.pad_token_id
            if pad_token_id is None:  # never: BackboneConfig requires it for these positions
                raise ValueError("pad_token_id is needed by an encoder with position_offset > 0 (RoBERTa positions)")
            not_pad = (input_ids != pad_token_id).long()
            return torch.cumsum(not_pad, dim=1) * not_pad - 1
        return torch.arange(length, device=input_ids.device)[None]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> BackboneOutput:
        """Encodes a batch of token sequences.

        Args:
            input_ids: `(batch, seq)` token ids.
            attention_mask: `(batch, seq)`, 1 for real tokens and 0 for padding;
                None means no padding.
            token_type_ids: `(batch, seq)` segment ids; None means all 0. Used
                only when `type_vocab_size > 0`.

        Returns:
            `BackboneOutput` with `last_hidden_state` `(batch, seq, hidden)`.

        Raises:
            ValueError: If the sequence is longer than the position table or
                the mask does not match the input.
        """
        config = self.config
        batch, length = input_ids.shape
        check_positions(config, length)
        position_ids = self._position_ids(input_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids)  # (batch, seq, hidden)
        if config.mask_embeddings and attention_mask is not None:
            # DeBERTa zeroes the padding rows; padded keys are masked anyway, this keeps their outputs equal too.
            x = x * attention_mask[..., None].to(x.dtype)

        dtype = compute_dtype(x)
        rotary = local_rotary = None
        if config.position_embedding == "rotary":
            rotary = local_rotary = rotary_cos_sin(position_ids, config, dtype)
            if config.local_rope_theta is not None:  # ModernBERT: local layers turn at their own base
                local_rotary = rotary_cos_sin(position_ids, config, dtype, sliding=True)
        mask, _ = make_attention_mask(
            attention_mask, length, length, causal=False, dtype=dtype, device=x.device,
            explicit=self.relative_position_bias is not None or self.relative_embeddings is not None,
        )
        # Local layers get a second mask only when some key lies outside the window.
        window = config.sliding_window
        local_mask = mask
        if window is not None and length > window:
            local_mask, _ = make_attention_mask(attention_mask, length, length, causal=False, dtype=dtype,
                                                device=x.device, explicit=self.relative_position_bias is not None,
                                                sliding_window=window)
        if self.relative_position_bias is not None and mask is not None and local_mask is not None:
            # Computed once and shared by all layers, as T5 does from its first layer.
            bias = self.relative_position_bias(length, length, past_length=0).to(dtype)  # (1, heads, q, k)
            mask, local_mask = mask + bias, (mask + bias if local_mask is mask else local_mask + bias)

        relative = self.relative_embeddings(length) if self.relative_embeddings is not None else None
        for i, layer in enumerate(self.layers):
            if config.layer_window(i) is None:
                x = layer(x, mask, rotary=rotary, relative=relative)
            else:
                x = layer(x, local_mask, rotary=local_rotary, relative=relative)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return BackboneOutput(last_hidden_state=x)
