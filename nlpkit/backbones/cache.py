"""What a backbone returns, and the key/value cache it takes and gives back.

The cache is allocated once with a capacity and written in place, so decoding
does not grow tensors by concatenation at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nlpkit.backbones.config import BackboneConfig

__all__ = ["BackboneOutput", "KVCache", "kv_cache_dtype"]


def kv_cache_dtype(compute: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype a KV cache keeps for layers that compute in `compute` on `device`.

    On the CPU, a half-precision model's keys and values are kept in float32,
    and its attention over the cache runs in float32 (`Attention` casts the
    queries up and the result back): SDPA's CPU kernels are 2-5x slower in
    bfloat16 than in float32 at decoding's shapes (torch 2.13 on 2 AMD EPYC
    cores, one query over 96 keys in 12 heads of 64: 0.69 against 0.16-0.28
    ms at batch 8), a fifth of a GPT-2 small decoding step at batch 8 once its
    matrix products were packed. A half value widens to float32 exactly, so
    the cache holds the same keys. Under autocast SDPA would cast them back
    down, so there the cache keeps the autocast dtype.
    """
    if torch.device(device).type == "cpu" and compute in (torch.bfloat16, torch.float16) \
            and not torch.is_autocast_enabled("cpu"):
        return torch.float32
    return compute


@dataclass
class BackboneOutput:
    """The result of a backbone call.

    Attributes:
        last_hidden_state: `(batch, seq, hidden)` output of the last layer (for
            an encoder-decoder: of the decoder).
        past_key_values: The updated cache when `use_cache=True`, else None.
        encoder_last_hidden_state: `(batch, source_seq, hidden)` encoder output
            of an encoder-decoder, else None.
    """

    last_hidden_state: Tensor
    past_key_values: KVCache | None = None
    encoder_last_hidden_state: Tensor | None = None


class KVCache:
    """Keys and values of past positions, preallocated and written in place.

    Each layer owns a `(batch, kv_heads, capacity, head_dim)` buffer for keys
    and one for values. A forward pass writes its new positions at
    `[length : length + seq]` and attends over `[: length + seq]`, so decoding
    one token costs no `torch.cat` (the growing concatenation of a dynamic
    cache reallocates every layer at every step). If a call needs more than
    the capacity, the buffers are reallocated at double size.

    For an encoder-decoder the cache also keeps each decoder layer's
    cross-attention keys and values, computed once from the encoder output.

    Attributes:
        keys: One `(batch, kv_heads, capacity, head_dim)` tensor per layer.
        values: Same shape as `keys`.
        length: Number of positions filled.
        cross_keys: Per decoder layer `(batch, kv_heads, source_seq, head_dim)`
            or None until the first forward pass fills it.
        cross_values: Same as `cross_keys`.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], length: int = 0) -> None:
        if len(keys) != len(values):
            raise ValueError(f"keys and values need one tensor per layer, got {len(keys)} and {len(values)}")
        self.keys = keys
        self.values = values
        self.length = length
        self.cross_keys: list[Tensor | None] = [None] * len(keys)
        self.cross_values: list[Tensor | None] = [None] * len(keys)

    @classmethod
    def allocate(
        cls,
        config_or_dims: BackboneConfig | tuple[int, int, int],
        batch_size: int,
        max_length: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Allocates an empty cache.

        Args:
            config_or_dims: A backbone config (a decoder, or the decoder side of
                an encoder-decoder) or `(num_layers, num_kv_heads, head_dim)`.
            batch_size: Number of sequences (beams included).
            max_length: Capacity in positions; prompt plus generated tokens.
            dtype: Element type; None means the default float type.
            device: Where the buffers live.

        Returns:
            A cache with `length == 0`.
        """
        if isinstance(config_or_dims, BackboneConfig):
            config = config_or_dims
            if config.kind == "encoder":
                raise ValueError("kind 'encoder' has no KV cache; use a decoder or encoder-decoder config")
            if config.kind == "encoder-decoder":
                config = config.decoder_side()  # the decoder's layers and heads, which may differ from the encoder's
            num_layers, num_kv_heads, head_dim = config.num_layers, config.resolved_num_kv_heads, config.resolved_head_dim
        else:
            num_layers, num_kv_heads, head_dim = config_or_dims
        if batch_size <= 0 or max_length <= 0:
            raise ValueError(f"batch_size and max_length must be positive, got {batch_size} and {max_length}")
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        return cls(keys, values)

    @property
    def dtype(self) -> torch.dtype:
        """Element type of the buffers (see `kv_cache_dtype`)."""
        return self.keys[0].dtype

    @property
    def batch_size(self) -> int:
        """Number of sequences in the cache."""
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        """Number of positions the buffers hold before they must grow."""
        return self.keys[0].shape[2]

    def reserve(self, total_length: int) -> None:
        """Makes room for `total_length` positions, doubling the buffers if needed."""
        if total_length <= self.capacity:
            return
        new_capacity = max(total_length, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                batch, heads, _, head_dim = old.shape
                new = old.new_zeros(batch, heads, new_capacity, head_dim)
                new[:, :, : self.length] = old[:, :, : self.length]
                store[i] = new

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Writes one layer's new keys/values and returns all filled positions.

        Call `reserve` before and `advance` after the layers of one forward
        pass: every layer writes at the same offset `length`.

        Args:
            layer: Layer index.
            keys: `(batch, kv_heads, seq, head_dim)` keys of the new positions.
            values: Same shape as `keys`.

        Returns:
            Keys and values of positions `[0, length + seq)`, as views into the
            buffers, in the cache's dtype (which may be wider than that of
            `keys`: `kv_cache_dtype`).
        """
        end = self.length + keys.shape[2]
        self.keys[layer][:, :, self.length : end] = keys
        self.values[layer][:, :, self.length : end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, num_positions: int) -> None:
        """Marks `num_positions` more positions as filled (after all layers wrote them)."""
        self.length += num_positions

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Selects sequences along the batch dimension, for beam search.

        Args:
            index: `(new_batch,)` long tensor of source rows; `new_batch` may
                differ from the current batch size (e.g. expanding to beams).
            cross: Reorder the cross-attention keys and values too. Beam search
                passes False once the beams exist: it only permutes the beams
                of one source, whose cross-attention rows are all the same.
        """
        index = index.to(self.keys[0].device)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                if index.numel() == old.shape[0]:
                    # Same batch size: reuse the buffer, copy only filled positions.
                    old[:, :, : self.length] = old[:, :, : self.length].index_select(0, index)
                else:
                    store[i] = old.index_select(0, index)
        if not cross:
            return
        for cross_store in (self.cross_keys, self.cross_values):
            for i, cached in enumerate(cross_store):
                if cached is not None:
                    cross_store[i] = cached.index_select(0, index)
