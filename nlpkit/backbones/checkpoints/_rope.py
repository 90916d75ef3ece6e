"""Rotary settings of a decoder's `config.json`, read and written as `transformers` does.

References:
    - `transformers/modeling_rope_utils.py` (5.x), `standardize_rope_params`:
      releases from 5.0 on write `rope_parameters: {rope_type, rope_theta,
      ...}` (nested per layer type where a model has several: Gemma 3's
      `full_attention` / `sliding_attention`); older ones wrote `rope_theta`
      and `partial_rotary_factor` at the top level and the scaling in
      `rope_scaling` (with `type` or `rope_type`).

Rotary types `default`, `linear`, `dynamic`, `yarn`, `llama3` and
`longrope` become a `RopeScaling` (none for `default`); other types and
unknown rotary parameters are refused with an error that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nlpkit.backbones.checkpoints._common import unsupported
from nlpkit.backbones.config import RopeScaling
from nlpkit.errors import NlpkitError
from nlpkit.schema import Context, build

__all__ = ["Rope", "read_rope", "rope_to_hf"]

# rope_parameters keys onto RopeScaling fields (the HF names live only here).
_ROPE_FIELDS = {"factor": "factor", "original_max_position_embeddings": "original_max_positions",
                "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor",
                "beta_fast": "beta_fast", "beta_slow": "beta_slow", "truncate": "truncate",
                "short_factor": "short_factor", "long_factor": "long_factor",
                "attention_factor": "attention_factor", "mscale": "mscale", "mscale_all_dim": "mscale_all_dim"}
_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
_KNOWN_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor", *_ROPE_FIELDS}


@dataclass(frozen=True)
class Rope:
    """The rotary settings of one kind of layer."""

    theta: float
    scaling: RopeScaling | None
    partial_rotary_factor: float = 1.0


def read_rope(hf: Mapping[str, Any], max_positions: int, *, default_theta: float = 10000.0,
              aliases: Mapping[str, str] | None = None, layer_type: str | None = None,
              theta_key: str = "rope_theta") -> Rope:
    """The rotary base, scaling and rotated fraction of `config.json`, as `standardize_rope_params` reads them.

    As `transformers`, a top-level `original_max_position_embeddings` (Phi-3)
    wins over the one inside the parameters, and `yarn`, `llama3` and
    `longrope` default it to `max_position_embeddings`.

    Args:
        hf: The `config.json` dict.
        max_positions: Its `max_position_embeddings` (with the family's default).
        default_theta: The family's base when the file names none.
        aliases: Rotary type names the family reads as another
            (Phi-3: `su` and `yarn` are `longrope`).
        layer_type: For configs with a rope per layer type (Gemma 3): which
            entry of a nested `rope_parameters` to read.
        theta_key: The top-level key of that layer type's base in older files
            (Gemma 3's `rope_local_base_freq`).

    Raises:
        NlpkitError: An unknown rotary type or parameter (naming the field).
    """
    theta = float(hf.get(theta_key) or default_theta)
    partial = hf.get("partial_rotary_factor", 1.0)
    for field in ("rope_parameters", "rope_scaling"):
        params = hf.get(field)
        if not params:
            continue
        if not isinstance(params, Mapping):
            raise unsupported(field, params, "expected a mapping with rope_type and rope_theta")
        if layer_type is not None and ("full_attention" in params or "sliding_attention" in params):
            field, params = f"{field}.{layer_type}", params.get(layer_type) or {}
            if not isinstance(params, Mapping):
                raise unsupported(field, params, "expected a mapping with rope_type and rope_theta")
        elif layer_type == "sliding_attention" and field == "rope_scaling":
            continue  # a flat rope_scaling of a per-layer-type model scales its global layers only (Gemma 3)
        type_key = "rope_type" if "rope_type" in params else "type"
        rope_type = params.get(type_key, "default")
        rope_type = (aliases or {}).get(rope_type, rope_type)
        if rope_type not in _ROPE_TYPES:
            raise unsupported(f"{field}.{type_key}", params[type_key], f"known rotary types: {', '.join(_ROPE_TYPES)}")
        for key in params:
            if key not in _KNOWN_KEYS:
                raise unsupported(f"{field}.{key}", params[key], "not a rotary parameter nlpkit implements")
        theta = float(params.get("rope_theta", theta))
        partial = params.get("partial_rotary_factor", partial)
        if rope_type == "default":
            return Rope(theta, None, partial)
        values = {_ROPE_FIELDS[k]: v for k, v in params.items() if k in _ROPE_FIELDS and v is not None}
        if rope_type in ("yarn", "llama3", "longrope"):
            original = hf.get("original_max_position_embeddings")
            values["original_max_positions"] = original or values.get("original_max_positions", max_positions)
        try:
            scaling = build(RopeScaling, dict(values, type=rope_type), (), Context("", template="{key}: {message}"))
        except NlpkitError as error:
            raise unsupported(field, dict(params), str(error)) from None
        return Rope(theta, scaling, partial)
    return Rope(theta, None, partial)


def rope_to_hf(theta: float, scaling: RopeScaling | None, partial_rotary_factor: float | None = None) -> dict[str, Any]:
    """One `rope_parameters` entry as transformers 5 writes it (only the fields the type reads, and its defaults)."""
    params: dict[str, Any] = {"rope_type": scaling.type if scaling else "default", "rope_theta": theta}
    if partial_rotary_factor is not None:
        params["partial_rotary_factor"] = partial_rotary_factor
    if scaling is not None:
        for key, name in _ROPE_FIELDS.items():
            value = getattr(scaling, name)
            if name == "truncate":
                if scaling.type == "yarn" and not value:  # written only when not transformers' default
                    params[key] = value
            elif value is not None:
                params[key] = value
    return params

