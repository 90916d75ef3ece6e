"""Building blocks shared by the encoder, decoder and encoder-decoder backbones.

Read top to bottom: normalisation, positions, embeddings, masks, attention, the feed-forward
block, and the Transformer layer that strings them together.

Every formula mirrors the `transformers` implementation of the family that
needs it, so that a weight mapping gives identical outputs:

- LayerNorm: BERT, GPT-2, BART (`torch.nn.LayerNorm`).
- RMSNorm: Llama's `LlamaRMSNorm` == T5's `T5LayerNorm` (Zhang & Sennrich
  2019, https://arxiv.org/abs/1910.07467), statistics in float32.
- Rotary positions: Su et al. 2021 (https://arxiv.org/abs/2104.09864) in the
  `rotate_half` layout of `modeling_llama.py` (not the interleaved original).
- Sinusoidal positions: Vaswani et al. 2017 in Marian's layout (all sines,
  then all cosines; `MarianSinusoidalPositionalEmbedding`).
- Relative position buckets: Raffel et al. 2020 (T5), copied from
  `T5Attention._relative_position_bucket`.
- Disentangled attention: He et al. 2021 (DeBERTa,
  https://arxiv.org/abs/2006.03654), as `DisentangledSelfAttention` and
  `make_log_bucket_position` of `modeling_deberta_v2.py` compute it.
- Attention goes through `torch.nn.functional.scaled_dot_product_attention`
  so each device picks its fastest kernel.

Linear layers, dropout and attention with dropout come from `cpu.py`: the
same maths as `nn.Linear`, `nn.Dropout` and SDPA (same parameters and state
dict), with fast paths for the CPU, where torch's own are slow in decoding
and in training with dropout.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpkit.backbones.cache import KVCache
from nlpkit.backbones.config import BackboneConfig
from nlpkit.backbones.cpu import (
    Dropout,
    Linear,
    _onednn_linear_available,  # noqa: F401  kept importable here: tests/parity/test_generation.py:268 calls it
    attention_with_dropout,
    pack_for_cpu_inference,  # noqa: F401  kept importable here: benchmarks/README.md and nlpkit.load name this path
)
from nlpkit.backbones.rope import depends_on_length, inverse_frequencies

__all__ = [
    "Attention",
    "Dropout",
    "Embeddings",
    "Linear",
    "MLP",
    "RMSNorm",
    "RelativePositionBias",
    "RelativeEmbeddings",
    "SinusoidalPositions",
    "TransformerLayer",
    "apply_rotary",
    "check_positions",
    "compute_dtype",
    "deberta_relative_positions",
    "disentangled_attention",
    "init_weights",
    "initialisation_skipped",
    "make_attention_mask",
    "make_norm",
    "relative_position_bucket",
    "rotary_cos_sin",
    "soft_cap",
    "softcapped_attention",
    "tie_lm_head",
]


# ---------------------------------------------------------------------------
# Normalisation and activations
# ---------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm without bias or mean subtraction (Llama, T5, Gemma).

    Statistics are taken in float32 and the result is cast back before the
    weight multiplies it, exactly as `LlamaRMSNorm` does, so half-precision
    inputs neither overflow nor drift from the reference. With `unit_offset`
    (Gemma) the stored weight is an offset from one: the float32 result is
    multiplied by `1 + weight` and cast back only then, as `GemmaRMSNorm` does.
    """

    def __init__(self, hidden_size: int, eps: float, unit_offset: bool = False) -> None:
        super().__init__()
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(hidden_size) if unit_offset else torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        input_dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(input_dtype)
        return self.weight * x.to(input_dtype)


def make_norm(config: BackboneConfig, size: int | None = None) -> nn.Module:
    """The normalisation layer the config asks for, over `size` features (default `hidden_size`)."""
    size = size or config.hidden_size
    if config.norm == "rmsnorm":
        return RMSNorm(size, config.norm_eps, config.norm_unit_offset)
    return nn.LayerNorm(size, eps=config.norm_eps, bias=config.norm_bias)


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """`cap * tanh(x / cap)`: keeps logits within `(-cap, cap)` (Gemma 2); `x` unchanged when `cap` is None."""
    return x if cap is None else torch.tanh(x / cap) * cap


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # erf form: BERT's and BART's "gelu"
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,  # Llama's SwiGLU gate, Marian's "swish"
}


# ---------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position table in Marian's layout (sines, then cosines).

    The table is built in float64 (the reference builds it with numpy) and
    kept as a non-persistent buffer: it is not a weight, so it stays out of
    the state dict.
    """

    table: Tensor  # (positions, dim), a buffer

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        half = (dim + 1) // 2  # Marian's "sentinel": the sine half gets the odd column
        exponent = torch.arange(half, dtype=torch.float64) * 2 / dim
        angle = torch.arange(num_positions, dtype=torch.float64)[:, None] / torch.pow(10000.0, exponent)[None, :]
        table = torch.cat([angle.sin(), angle[:, : dim - half].cos()], dim=-1)  # (positions, dim)
        self.register_buffer("table", table.to(torch.get_default_dtype()), persistent=False)

    def forward(self, position_ids: Tensor) -> Tensor:
        return F.embedding(position_ids, self.table)


def rotary_cos_sin(position_ids: Tensor, config: BackboneConfig, dtype: torch.dtype,
                   sliding: bool = False) -> tuple[Tensor, Tensor]:
    """Cosines and sines of rotary positions, computed in float32.

    The inverse frequencies are recomputed per call instead of living in a
    buffer, so that `module.to(torch.bfloat16)` cannot round them, and so
    that the length-dependent kinds (`dynamic`, `longrope`) follow the
    positions of this call (see `nlpkit/backbones/rope.py` for the rule).

    Args:
        position_ids: `(batch, seq)` positions.
        config: The rotary settings (`rope_theta`, `rope_scaling`, `rotary_dim`).
        dtype: Dtype of the returned tensors.
        sliding: For sliding-window layers (their own base where
            `local_rope_theta` is set).

    Returns:
        `(cos, sin)`, each `(batch, 1, seq, rotary_dim)` to broadcast over
        heads, already multiplied by the scaling's attention factor.
    """
    seq_len = int(position_ids.max()) + 1 if depends_on_length(config) else None
    inv_freq, scale = inverse_frequencies(config, seq_len, position_ids.device, sliding)
    freqs = position_ids[..., None].float() * inv_freq  # (batch, seq, rotary_dim / 2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (batch, seq, rotary_dim): HF's rotate_half layout
    return (angles.cos() * scale).to(dtype)[:, None], (angles.sin() * scale).to(dtype)[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates `(batch, heads, seq, head_dim)` queries or keys by their positions.

    With partial rotary (`cos` narrower than the head) only the first
    `rotary_dim` dimensions turn and the rest pass through (GPT-NeoX, Phi).
    """
    rotary_dim = cos.shape[-1]
    if rotary_dim < x.shape[-1]:
        return torch.cat([apply_rotary(x[..., :rotary_dim], cos, sin), x[..., rotary_dim:]], dim=-1)
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)  # rotate_half
    return x * cos + rotated * sin


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Maps key-minus-query distances to T5's log-spaced buckets.

    Half the buckets hold exact small distances, the rest grow
    logarithmically up to `max_distance`; a bidirectional stack spends half
    its buckets on positive distances, a causal one only sees the past.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # clamp(min=1) only avoids log(0) where is_small picks the exact bucket anyway.
    large = max_exact + (
        torch.log(relative_position.clamp(min=1).float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


class RelativePositionBias(nn.Module):
    """T5's learned per-head bias over relative position buckets.

    One instance per stack: the reference computes it in the first layer and
    passes the same tensor to all later layers.
    """

    def __init__(self, config: BackboneConfig, bidirectional: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance

    def forward(self, query_length: int, key_length: int, past_length: int) -> Tensor:
        """Returns the `(1, heads, query_length, key_length)` additive bias."""
        device = self.embedding.weight.device
        query_position = torch.arange(past_length, past_length + query_length, device=device)[:, None]
        key_position = torch.arange(key_length, device=device)[None, :]
        bucket = relative_position_bucket(
            key_position - query_position, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.embedding(bucket).permute(2, 0, 1)[None]  # (1, heads, query, key)


def deberta_relative_positions(length: int, buckets: int | None, max_distance: int, device: torch.device) -> Tensor:
    """`(length, length)` query-minus-key distances, log-bucketed as DeBERTa-v3 does when `buckets` is set.

    Distances under `buckets // 2` stay exact; longer ones map to
    `sign * (mid + ceil(log(|d| / mid) / log((max_distance - 1) / mid) * (mid - 1)))`
    (`make_log_bucket_position`), an odd function of the distance.
    """
    positions = torch.arange(length, device=device)
    relative = positions[:, None] - positions[None, :]
    if buckets is None:
        return relative
    mid = buckets // 2
    # Inside (-mid, mid) the log below is not taken: mid - 1 only keeps it finite there.
    absolute = torch.where(relative.abs() < mid, torch.full_like(relative, mid - 1), relative.abs()).float()
    log_position = torch.ceil(torch.log(absolute / mid) / math.log((max_distance - 1) / mid) * (mid - 1)) + mid
    return torch.where(absolute <= mid, relative.float(), log_position * torch.sign(relative)).long()


class RelativeEmbeddings(nn.Module):
    """DeBERTa's table of relative-position embeddings, shared by all layers (`encoder.rel_embeddings`).

    Row `span + d` embeds the (bucketed, clamped) distance `d` from query to
    key. One instance per encoder: the table, its optional LayerNorm and the
    distance index are computed once per forward pass.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.span = config.relative_position_span
        self.buckets = config.relative_position_buckets
        self.max_distance = (config.max_relative_positions if config.max_relative_positions is not None
                             else config.max_positions)
        self.embedding = nn.Embedding(2 * self.span, config.hidden_size)
        self.norm = make_norm(config) if config.relative_embedding_norm else None
        self.dropout = Dropout(config.dropout)

    def forward(self, length: int) -> tuple[Tensor, Tensor]:
        """The `(2 * span, hidden)` embeddings and the `(length, length)` row of each query-key pair."""
        table = self.embedding.weight
        if self.norm is not None:
            table = self.norm(table)
        distance = deberta_relative_positions(length, self.buckets, self.max_distance, table.device)
        # c2p reads row span + d(q, k) and p2c row span - d(k, q): the distances are odd in (q, k),
        # so one index serves both terms.
        index = (distance + self.span).clamp(0, 2 * self.span - 1)
        return self.dropout(table), index


# ---------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------


class Embeddings(nn.Module):
    """Token, position and token-type embeddings, then scale, norm, dropout and a projection onto the stream.

    The projection exists only when `embedding_size` differs from
    `hidden_size` (ELECTRA).

    With `with_token=False` the caller looks tokens up itself and passes
    `inputs_embeds`; the encoder-decoder does this so its two stacks share one
    token table owned by the parent module.
    """

    def __init__(self, config: BackboneConfig, with_token: bool = True) -> None:
        super().__init__()
        self.config = config
        width = config.resolved_embedding_size
        self.token = nn.Embedding(config.vocab_size, width) if with_token else None
        num_positions = config.max_positions + config.position_offset
        if config.position_embedding == "learned":
            self.position: nn.Module | None = nn.Embedding(num_positions, width)
        elif config.position_embedding == "sinusoidal":
            self.position = SinusoidalPositions(num_positions, width)
        else:
            self.position = None  # rotary and relative act inside attention
        self.token_type = nn.Embedding(config.type_vocab_size, width) if config.type_vocab_size else None
        self.norm = make_norm(config, width) if config.embedding_norm else None
        self.dropout = Dropout(config.dropout)
        self.projection = nn.Linear(width, config.hidden_size) if width != config.hidden_size else None
        self.scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0

    def forward(
        self,
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Embeds `(batch, seq)` ids (or takes `inputs_embeds`) into `(batch, seq, hidden)`.

        `position_ids` are the positions before `position_offset` is added.
        """
        if inputs_embeds is not None:
            x = inputs_embeds
        elif self.token is not None and input_ids is not None:
            x = self.token(input_ids)
        else:
            raise ValueError("embeddings need input_ids (and a token table) or inputs_embeds")
        if self.scale != 1.0:
            x = x * self.scale
        if self.position is not None:
            if position_ids is None:
                raise ValueError("learned and sinusoidal positions need position_ids")
            x = x + self.position(position_ids + self.config.position_offset)
        if self.token_type is not None:
            # No ids means segment 0 everywhere, as in BERT.
            x = x + (self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        return self.projection(x) if self.projection is not None else x


def check_positions(config: BackboneConfig, total_length: int) -> None:
    """Raises ValueError when a position table is too short for `total_length` positions."""
    if config.position_embedding in ("learned", "sinusoidal") and total_length > config.max_positions:
        raise ValueError(f"sequence of {total_length} positions exceeds max_positions={config.max_positions}")


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype attention runs in: the autocast dtype if active, else `x.dtype`.

    Masks are built in this dtype: an fp32 `finfo.min` cast down to bf16
    would round to -inf, and fully masked rows would turn into NaN.
    """
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def make_attention_mask(
    attention_mask: Tensor | None,
    query_length: int,
    key_length: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device,
    explicit: bool = False,
    sliding_window: int | None = None,
    document_ids: Tensor | None = None,
) -> tuple[Tensor | None, bool]:
    """Builds the additive attention mask once per forward pass.

    Masked entries get `torch.finfo(dtype).min` rather than -inf: a fully
    masked row (a padding query) then softmaxes to uniform weights instead of
    NaN, and its output is ignored anyway.

    Args:
        attention_mask: `(batch, key_length)` with 1 for real and 0 for padded
            positions (past and current), or None for no padding.
        query_length: Number of new positions.
        key_length: Past plus new positions.
        causal: Whether a query may only see keys at or before its position.
        dtype: Dtype of the additive mask.
        device: Where to build it.
        explicit: Always return a tensor (the caller adds a bias to it).
        sliding_window: Also hide keys `window` or more indices older than the
            query (`transformers`' `sliding_window_causal_mask`: query `i` sees
            `i - window < j <= i`) and, without `causal`, as many indices
            newer too (`sliding_window_bidirectional_overlay`: `|i - j| <
            window`). Indices count padding too, as in `transformers`; a
            row's real tokens are contiguous, so index and position distances
            agree. Ignored (no extra work) when `key_length <= sliding_window`,
            where no key is that far away.
        document_ids: `(batch, key_length)` the number of the example each
            position belongs to, for rows that pack several examples: a query
            sees only keys of its own example (a block-diagonal mask, causal
            inside each block). None: one example per row. Positions of
            packed examples restart at 0 (the caller's `position_ids`), so
            window distances inside an example are position distances too.

    Returns:
        `(mask, is_causal)`: mask is `(batch or 1, 1, query_length, key_length)`
        or None; is_causal tells SDPA to apply its own causal mask (only when
        there is no mask, no past and more than one query).
    """
    past_length = key_length - query_length
    needs_causal = causal and query_length > 1
    window = sliding_window if sliding_window is not None and key_length > sliding_window else None
    if document_ids is not None and document_ids.shape[-1] != key_length:
        raise ValueError(f"document_ids must cover past and current positions ({key_length}), got {document_ids.shape[-1]}")
    if attention_mask is not None:
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask must cover past and current positions ({key_length}), got {attention_mask.shape[-1]}"
            )
        if _no_padding(attention_mask):
            # A mask of ones changes nothing; without it attention skips the mask add (and
            # SDPA may take its fused or causal kernels), as `transformers` does for sdpa.
            attention_mask = None
    if attention_mask is None and not explicit and window is None and document_ids is None:
        if not needs_causal:
            return None, False
        if past_length == 0:
            return None, True  # SDPA's fused causal path
    allowed = torch.ones(1, 1, query_length, key_length, dtype=torch.bool, device=device)
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    if document_ids is not None:
        documents = document_ids.to(device)
        allowed = allowed & (documents[:, None, -query_length:, None] == documents[:, None, None, :])
    if needs_causal or window is not None:
        query_position = torch.arange(past_length, key_length, device=device)[:, None]  # (query, 1)
        key_position = torch.arange(key_length, device=device)[None, :]  # (1, key)
        if needs_causal:
            allowed = allowed & (key_position <= query_position)
        if window is not None:
            allowed = allowed & (key_position > query_position - window)
            if not causal:  # an encoder's window reaches as far ahead as behind
                allowed = allowed & (key_position < query_position + window)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min), False


def _no_padding(attention_mask: Tensor) -> bool:
    """Whether a `(batch, keys)` padding mask is all ones (one host sync, as in `transformers`).

    Not while tracing or compiling, where a data-dependent branch would be
    baked in or break the graph: the mask is then kept.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return bool(attention_mask.all())


# ---------------------------------------------------------------------------
# Attention, feed-forward, layer
# ---------------------------------------------------------------------------



class Attention(nn.Module):
    """Multi-head (or grouped-query) attention over SDPA.

    Query, key, value and output are separate Linear layers so that each
    family's checkpoint maps onto them by name (GPT-2's fused `c_attn` is
    split at load time). Self-attention reads and writes the cache's
    per-layer buffers; cross-attention projects the encoder output once and
    keeps it in the cache's `cross_keys`/`cross_values`.
    """

    def __init__(self, config: BackboneConfig, layer_index: int, cross: bool = False) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.cross = cross
        self.num_heads = config.num_heads
        self.num_kv_heads = config.resolved_num_kv_heads
        self.head_dim = config.resolved_head_dim
        self.scale = config.attention_scale  # None: SDPA's default head_dim ** -0.5
        self.softcap = config.attention_softcap
        self.dropout_p = config.attention_dropout
        hidden, inner, kv_inner = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.query = Linear(hidden, inner, bias=config.attention_bias)
        self.key = Linear(hidden, kv_inner, bias=config.attention_bias)
        self.value = Linear(hidden, kv_inner, bias=config.attention_bias)
        self.output = Linear(inner, hidden, bias=config.attention_output_bias)
        # Qwen3, Gemma 3: one RMSNorm over head_dim for every query head and one for every key head.
        use_qk_norm = config.qk_norm and not cross
        self.query_norm = make_norm(config, self.head_dim) if use_qk_norm else None
        self.key_norm = make_norm(config, self.head_dim) if use_qk_norm else None
        # DeBERTa: relative-position terms of the scores; with shared projections they reuse query and key.
        self.disentangled = list(config.disentangled_attention or [])
        if self.disentangled and self.scale is None:
            self.scale = (self.head_dim * (1 + len(self.disentangled))) ** -0.5
        separate = self.disentangled and not config.shared_position_projections
        self.position_key = Linear(hidden, inner) if separate and "c2p" in self.disentangled else None
        self.position_query = Linear(hidden, inner) if separate and "p2c" in self.disentangled else None

    def _split_kv(self, states: Tensor) -> tuple[Tensor, Tensor]:
        batch, length, _ = states.shape
        k = self.key(states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.value(states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return k, v  # each (batch, kv_heads, length, head_dim)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        memory: Tensor | None = None,
        relative: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attends from `x` to itself (or to `memory` for cross-attention).

        Args:
            x: `(batch, seq, hidden)` queries' input.
            mask: Additive mask broadcastable to `(batch, heads, seq, keys)`.
            is_causal: Let SDPA apply the causal mask (no `mask` then).
            rotary: `(cos, sin)` from `rotary_cos_sin`, for self-attention.
            cache: KV cache to read and write, or None.
            memory: `(batch, source_seq, hidden)` encoder output for
                cross-attention; may be None when the cache already holds it.
            relative: `(embeddings, index)` from `RelativeEmbeddings`, for
                disentangled attention (DeBERTa).

        Returns:
            `(batch, seq, hidden)`.
        """
        batch, length, _ = x.shape
        q = self.query(x).view(batch, length, self.num_heads, self.head_dim)
        q = q.transpose(1, 2)  # (batch, heads, seq, head_dim)
        if self.cross:
            cached_k = cache.cross_keys[self.layer_index] if cache is not None else None
            cached_v = cache.cross_values[self.layer_index] if cache is not None else None
            if cached_k is not None and cached_v is not None:  # keys and values are filled together
                k, v = cached_k, cached_v
            else:
                if memory is None:
                    raise ValueError("cross-attention needs encoder outputs when the cache holds none")
                k, v = self._split_kv(memory)
                if cache is not None:
                    k, v = k.to(cache.dtype), v.to(cache.dtype)
                    cache.cross_keys[self.layer_index], cache.cross_values[self.layer_index] = k, v
        else:
            k, v = self._split_kv(x)
            if self.query_norm is not None and self.key_norm is not None:
                q, k = self.query_norm(q), self.key_norm(k)  # over head_dim, before rotary (Qwen3)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if cache is not None:
                k, v = cache.update(self.layer_index, k, v)  # (batch, kv_heads, past + seq, head_dim)
        dtype = q.dtype
        if k.dtype != dtype:  # a half-precision model's float32 cache on the CPU: attend in float32 (kv_cache_dtype)
            q = q.to(k.dtype)
            mask = mask.to(k.dtype) if mask is not None and mask.is_floating_point() else mask
        if self.disentangled:
            if relative is None:
                raise ValueError("disentangled attention needs the relative embeddings and their index")
            y = disentangled_attention(q, k, v, mask, self._relative_terms(*relative), self.scale or 1.0,
                                       self.dropout_p if self.training else 0.0)
        elif self.softcap is not None:
            y = softcapped_attention(q, k, v, mask, is_causal, self.scale, self.softcap,
                                     self.dropout_p if self.training else 0.0)
        elif self.training and self.dropout_p > 0.0 and q.device.type == "cpu":
            # SDPA's only CPU kernel with dropout is its slow `math` path; this is the same maths.
            y = attention_with_dropout(q, k, v, mask, is_causal, self.scale, self.dropout_p)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=self.dropout_p if self.training else 0.0,
                is_causal=is_causal,
                scale=self.scale,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )  # (batch, heads, seq, head_dim)
        y = y.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.output(y.to(dtype))


    def _relative_terms(self, embeddings: Tensor, index: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per disentangled term, the `(heads, 2 * span, head_dim)` projected relative embeddings and the index."""
        heads = self.num_heads

        def project(linear: Linear) -> Tensor:
            return linear(embeddings).view(-1, heads, self.head_dim).transpose(0, 1)

        terms = {}
        if "c2p" in self.disentangled:
            terms["c2p"] = (project(self.position_key or self.key), index)
        if "p2c" in self.disentangled:
            terms["p2c"] = (project(self.position_query or self.query), index)
        return terms


def disentangled_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                           terms: dict[str, tuple[Tensor, Tensor]], scale: float, dropout_p: float) -> Tensor:
    """DeBERTa's attention: content scores plus content-to-position and position-to-content scores.

    `scores[q, k] = (q . k + q . Pk[i(q, k)] + k . Pq[i(q, k)]) * scale`,
    where `Pk` / `Pq` are the projected relative embeddings and `i` their
    row for the pair; then the additive mask, softmax, dropout, the values.

    The scores are computed in float32, with autocast off: under fp16
    autocast `q . k` of a trained DeBERTa can pass fp16's 65504 (the reason
    `transformers` divides the key by the scale first), and even scaled
    first, the sum of three terms can (measured: transformers' scale-first
    forward gives inf/NaN under fp16 autocast on `tests/parity/test_deberta.py`'s
    input where each term is ~30,000; this path stays within 4e-4 of fp32
    there). float32 costs a `(batch, heads, q, k)`
    float32 tensor, which an encoder of a few hundred tokens affords, and it
    removes the overflow instead of moving it; the weights go back to the
    values' dtype for the last product.

    Args:
        q: `(batch, heads, queries, head_dim)`.
        k: `(batch, heads, keys, head_dim)`, keys == queries (self-attention).
        v: Same shape as `k`.
        mask: Additive mask broadcastable to `(batch, heads, queries, keys)`, or None.
        terms: `c2p` and/or `p2c` -> (projected relative embeddings
            `(heads, 2 * span, head_dim)`, `(queries, keys)` row index).
        scale: Multiplier of every term.
        dropout_p: Probability of dropping an attention weight (0 in eval).

    Returns:
        `(batch, heads, queries, head_dim)`.
    """
    batch, heads, queries, _ = q.shape
    with torch.autocast(q.device.type, enabled=False):
        q32, k32 = q.float(), k.float()
        scores = torch.matmul(q32, k32.transpose(2, 3))
        for term, (projected, index) in terms.items():
            # c2p scores each query against every relative key and picks the key's row; p2c the same from the key.
            expanded = index.expand(batch, heads, queries, queries)
            if term == "c2p":
                scores = scores + torch.gather(torch.matmul(q32, projected.float().transpose(1, 2)), -1, expanded)
            else:
                by_key = torch.matmul(k32, projected.float().transpose(1, 2))  # (batch, heads, keys, 2 * span)
                scores = scores + torch.gather(by_key, -1, expanded.transpose(2, 3)).transpose(2, 3)
        scores = scores * scale
        if mask is not None:
            scores = scores + mask.float()
        weights = F.dropout(F.softmax(scores, dim=-1), p=dropout_p)
    return torch.matmul(weights.to(v.dtype), v)


def softcapped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None,
                         softcap: float, dropout_p: float) -> Tensor:
    """Attention whose logits are soft-capped before the mask (Gemma 2), which SDPA has no option for.

    The same steps as `transformers`' `eager_attention_forward` of Gemma 2:
    scaled dot products, `softcap * tanh(. / softcap)`, the additive mask, a
    float32 softmax cast back, dropout, then the values.

    Args:
        q: `(batch, heads, queries, head_dim)`.
        k: `(batch, kv_heads, keys, head_dim)`; `heads` a multiple of `kv_heads`.
        v: Same shape as `k`.
        mask: Additive mask broadcastable to `(batch, heads, queries, keys)`, or None.
        is_causal: Mask keys after each query (when there is no `mask`).
        scale: Multiplier of the dot products; None means `head_dim ** -0.5`.
        softcap: The cap.
        dropout_p: Probability of dropping an attention weight (0 in eval).

    Returns:
        `(batch, heads, queries, head_dim)`.
    """
    heads, queries, keys = q.shape[1], q.shape[2], k.shape[2]
    if k.shape[1] != heads:  # grouped-query attention: query head h reads kv head h // group
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    scores = soft_cap(torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5 if scale is None else scale), softcap)
    if mask is not None:
        scores = scores + mask
    elif is_causal:
        hidden = torch.ones(queries, keys, dtype=torch.bool, device=q.device).triu(keys - queries + 1)
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
    weights = F.dropout(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), p=dropout_p)
    return torch.matmul(weights, v)


class MLP(nn.Module):
    """Feed-forward block: `down(act(up(x)))`, or gated `down(act(gate(x)) * up(x))`.

    The gated form is SwiGLU in Llama (`gate_proj`, `up_proj`, `down_proj`)
    and gated-GELU in T5 v1.1 (`wi_0` is the gate, `wi_1` the up projection).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate = Linear(hidden, inner, bias=config.mlp_bias) if config.gated_mlp else None
        self.up = Linear(hidden, inner, bias=config.mlp_bias)
        self.down = Linear(inner, hidden, bias=config.mlp_bias)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            return self.down(self.activation(self.gate(x)) * self.up(x))
        return self.down(self.activation(self.up(x)))


class TransformerLayer(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each a residual branch.

    Pre-norm (GPT-2, Llama, T5) normalises the branch input:
    `x + branch(norm(x))`. Post-norm (BERT, BART, Marian) normalises the sum:
    `norm(x + branch(x))`. With `branch_output_norm` (Gemma 2 and 3) a
    pre-norm layer also normalises the branch output:
    `x + output_norm(branch(norm(x)))`. Each norm is named after the branch
    it belongs to.
    """

    def __init__(self, config: BackboneConfig, layer_index: int, cross_attention: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attention = Attention(config, layer_index)
        # ModernBERT's first layer reads the already normalised embeddings as they are.
        normalised_input = layer_index == 0 and not config.first_layer_attention_norm
        self.attention_norm = nn.Identity() if normalised_input else make_norm(config)
        if cross_attention:
            self.cross_attention: Attention | None = Attention(config, layer_index, cross=True)
            self.cross_attention_norm: nn.Module | None = make_norm(config)
        else:
            self.cross_attention = self.cross_attention_norm = None
        self.mlp = MLP(config)
        self.mlp_norm = make_norm(config)
        # Gemma 2 and 3: the self-attention and feed-forward outputs are normalised too.
        self.attention_output_norm = make_norm(config) if config.branch_output_norm else None
        self.mlp_output_norm = make_norm(config) if config.branch_output_norm else None
        self.dropout = Dropout(config.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, branch: Callable[[Tensor], Tensor],
                  output_norm: nn.Module | None = None) -> Tensor:
        if self.pre_norm:
            out = branch(norm(x))
            return x + self.dropout(out if output_norm is None else output_norm(out))
        return norm(x + self.dropout(branch(x)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        relative: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Runs one layer on `(batch, seq, hidden)` and returns the same shape.

        `relative` holds DeBERTa's relative embeddings and their index (see
        `RelativeEmbeddings`) for disentangled attention.
        """
        x = self._residual(x, self.attention_norm,
                           lambda h: self.attention(h, mask, is_causal, rotary, cache, relative=relative),
                           self.attention_output_norm)
        cross_attention, cross_attention_norm = self.cross_attention, self.cross_attention_norm
        if cross_attention is not None and cross_attention_norm is not None:  # set together in __init__
            x = self._residual(
                x, cross_attention_norm, lambda h: cross_attention(h, memory_mask, cache=cache, memory=memory)
            )
        return self._residual(x, self.mlp_norm, self.mlp, self.mlp_output_norm)


# ---------------------------------------------------------------------------
# Initialisation and weight tying
# ---------------------------------------------------------------------------


def init_weights(module: nn.Module) -> None:
    """From-scratch init as in `transformers`' `_init_weights`: N(0, 0.02), zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, RMSNorm) and module.unit_offset:
        nn.init.zeros_(module.weight)  # stored as an offset from one
    elif isinstance(module, (nn.LayerNorm, RMSNorm)):
        nn.init.ones_(module.weight)
        bias = getattr(module, "bias", None)
        if bias is not None:
            nn.init.zeros_(bias)


# The `torch.nn.init` functions modules initialise their weights with (`reset_parameters`, `init_weights`).
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")


@contextlib.contextmanager
def initialisation_skipped() -> Iterator[None]:
    """Modules built inside keep their weights as allocated (uninitialised memory) instead of drawing them.

    For a model whose every weight is about to be loaded: drawing them first
    costs seconds (GPT-2 small: 1.5 s of a 4.4 s load on 2 cores) and
    advances the user's seeded random stream. The `torch.nn.init` functions
    do nothing meanwhile, as in `transformers`' `no_init_weights`, which its
    `from_pretrained` builds models inside. Buffers computed from the config
    (sinusoidal tables) are still made. The functions are torch's, shared by
    the process: a module another thread builds meanwhile is not initialised
    either.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, _leave_as_is)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _leave_as_is(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return tensor


def tie_lm_head(model: nn.Module, head_name: str, token_name: str) -> None:
    """Shares the token embedding's Parameter with the LM head, and keeps it shared.

    Sharing the Parameter object survives `.to()` and in-place loading. Two
    load-state-dict hooks cover the rest: a checkpoint that stores the tied
    tensor once (safetensors drops duplicates) gets the missing name filled
    from the other, and `load_state_dict(..., assign=True)`, which replaces
    Parameters, is followed by re-tying. The hooks are module-level functions
    that look the names up on the module they are called with, so deep copies
    and pickles of the model stay correct.

    Args:
        model: The module that owns both.
        head_name: Dotted name of the `nn.Linear` LM head inside `model`.
        token_name: Dotted name of the token `nn.Embedding` inside `model`.
    """
    model.get_submodule(head_name).weight = model.get_submodule(token_name).weight
    if getattr(model, "_tied_lm_head", None) is None:
        # A plain attribute, set and read with setattr/getattr: nn.Module types the ones it does not declare as
        # tensors or modules.
        setattr(model, "_tied_lm_head", (head_name, token_name))
        model.register_load_state_dict_pre_hook(_fill_tied_weight)
        model.register_load_state_dict_post_hook(_retie_lm_head)


def _fill_tied_weight(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
    head_key, token_key = (f"{prefix}{name}.weight" for name in getattr(module, "_tied_lm_head"))
    if head_key not in state_dict and token_key in state_dict:
        state_dict[head_key] = state_dict[token_key]
    elif token_key not in state_dict and head_key in state_dict:
        state_dict[token_key] = state_dict[head_key]


def _retie_lm_head(module: nn.Module, incompatible_keys: object) -> None:
    head_name, token_name = getattr(module, "_tied_lm_head")
    module.get_submodule(head_name).weight = module.get_submodule(token_name).weight
