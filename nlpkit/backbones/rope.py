"""Rotary inverse frequencies, plain and scaled, and the factor that multiplies cos/sin.

References:
    - Su et al. 2021, RoFormer (https://arxiv.org/abs/2104.09864).
    - `transformers/modeling_rope_utils.py` (5.x): `linear`, `dynamic` (NTK),
      `yarn` (Peng et al. 2023, https://arxiv.org/abs/2309.00071), `llama3`
      and `longrope` (Phi-3); the formulas below are the same, step by step.

`dynamic` and `longrope` depend on the length of the sequence being run, so
`inverse_frequencies` takes `seq_len`: one more than the largest position in
the call (the whole batch). In a full pass that is what `transformers` uses.
In cached decoding `transformers`' `dynamic_rope_update` recomputes the
frequencies on every call from the positions of *that call* (growing as
decoding goes on), while the cached keys keep the rotation they were given;
computing from each call's own positions reproduces this exactly whenever
positions only grow (prefill, then one token at a time). It differs only
after a call shorter than an earlier one but still past `max_positions`,
where `transformers` keeps its longer, stateful frequencies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nlpkit.backbones.config import BackboneConfig, RopeScaling

__all__ = ["depends_on_length", "inverse_frequencies"]


def depends_on_length(config: BackboneConfig) -> bool:
    """Whether the frequencies change with the sequence length (`dynamic`, `longrope`), in any layer."""
    return any(scaling is not None and scaling.type in ("dynamic", "longrope")
               for scaling in (config.rope_scaling, config.local_rope_scaling))


def _needed(value: float | None, name: str) -> float:
    """A field `RopeScaling.__post_init__` already required for this type (narrows the type)."""
    if value is None:
        raise ValueError(f"{name} is needed by this rope type")
    return value


def _exponents(dim: int, device: torch.device | None) -> Tensor:
    """`(0, 2, ..., dim - 2) / dim` in float32: the exponents of the base."""
    return torch.arange(0, dim, 2, device=device).float() / dim


def inverse_frequencies(config: BackboneConfig, seq_len: int | None = None,
                        device: torch.device | None = None, sliding: bool = False) -> tuple[Tensor, float]:
    """The `(rotary_dim / 2,)` float32 inverse frequencies and the cos/sin multiplier.

    Args:
        config: A rotary config (`rope_theta`, `rope_scaling`, `rotary_dim`).
        seq_len: Largest position + 1 in this call; read by `dynamic` and
            `longrope` only (None: the lengths `transformers` initialises with).
        device: Where the frequencies are made.
        sliding: For sliding-window layers (`local_rope_theta` and
            `local_rope_scaling` where set).

    Returns:
        `(inv_freq, attention_scaling)`.
    """
    dim = config.rotary_dim
    base, scaling = config.rope(sliding)
    if scaling is None:
        return 1.0 / (base ** _exponents(dim, device)), 1.0
    if scaling.type == "linear":
        return 1.0 / (base ** _exponents(dim, device)) / (scaling.factor or 1.0), 1.0
    if scaling.type == "dynamic":
        # NTK-aware: the base grows with the length past max_positions (not the original length).
        factor, limit = scaling.factor or 1.0, config.max_positions
        length = max(seq_len or limit, limit)
        base = base * ((factor * length / limit) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** _exponents(dim, device)), 1.0
    original = scaling.original_max_positions or config.max_positions
    if scaling.type == "llama3":
        return _llama3(scaling, base, dim, original, device), 1.0
    if scaling.type == "yarn":
        return _yarn(scaling, base, dim, original, device)
    return _longrope(scaling, base, dim, config.max_positions, original, seq_len, device)


def _llama3(scaling: RopeScaling, base: float, dim: int, original: int, device: torch.device | None) -> Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between."""
    factor = _needed(scaling.factor, "factor")
    low = _needed(scaling.low_freq_factor, "low_freq_factor")
    high = _needed(scaling.high_freq_factor, "high_freq_factor")
    inv_freq = 1.0 / (base ** _exponents(dim, device))
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < original / high) * ~(wavelen > original / low)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(scaling: RopeScaling, base: float, dim: int, original: int,
          device: torch.device | None) -> tuple[Tensor, float]:
    """YaRN: interpolate the low frequencies, extrapolate the high ones, ramp between; scale attention."""
    factor = _needed(scaling.factor, "factor")
    attention = scaling.attention_factor
    if attention is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention = _yarn_mscale(factor, scaling.mscale) / _yarn_mscale(factor, scaling.mscale_all_dim)
        else:
            attention = _yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times in `original`
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(scaling.beta_fast or 32), correction_dim(scaling.beta_slow or 1)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoids a division by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** _exponents(dim, device)
    extrapolation = 1 - ramp  # weight of the unscaled frequency
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention)


def _longrope(scaling: RopeScaling, base: float, dim: int, max_positions: int, original: int, seq_len: int | None,
              device: torch.device | None) -> tuple[Tensor, float]:
    """LongRoPE: per-frequency divisors, the long set once the sequence passes the original length."""
    if scaling.short_factor is None or scaling.long_factor is None:
        raise ValueError("rope_scaling with short_factor and long_factor is needed by _longrope")
    factor = scaling.factor if scaling.factor is not None else max_positions / original
    attention = scaling.attention_factor
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    long = seq_len is not None and seq_len > original
    divisors = torch.tensor(scaling.long_factor if long else scaling.short_factor, dtype=torch.float32, device=device)
    return 1.0 / (divisors * base ** _exponents(dim, device)), float(attention)
