"""Phi-3, Phi-3.5 and Phi-4-mini checkpoints onto the `Decoder`.

References:
    - `transformers/models/phi3/modeling_phi3.py` and `configuration_phi3.py` (5.24).
    - Abdin et al. 2024, Phi-3 (https://arxiv.org/abs/2404.14219); Ding et
      al. 2024, LongRoPE (https://arxiv.org/abs/2402.13753).

Llama's layout with the query, key and value projections fused into one
`qkv_proj` (rows: the query heads, then the key heads, then the value heads)
and the gate and up projections into one `gate_up_proj` (gate rows first).
`state_from_hf` splits them into Llama's names, so Llama's name rules apply;
`state_to_hf` fuses them again. Rotary positions may turn only part of each
head (`partial_rotary_factor`: Phi-4-mini turns 3/4) and use `longrope`
(Phi-3's `su` and `yarn` are read as `longrope`, as `Phi3Config` does).
`original_max_position_embeddings` is a `Phi3Config` field that defaults to
4096 and, as in transformers, wins over the one inside the rope parameters.
A `sliding_window` applies to every layer (Phi-3-mini-4k's 2047).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from nlpkit.backbones.checkpoints import llama
from nlpkit.backbones.checkpoints._common import (
    Rule,
    activation_from_hf,
    activation_to_hf,
    decoder_shape_to_hf,
    make_config,
    token_id,
)
from nlpkit.backbones.checkpoints._rope import read_rope, rope_to_hf
from nlpkit.backbones.config import BackboneConfig

__all__ = ["ARCHITECTURES", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf", "config_to_hf", "rules",
           "state_from_hf", "state_to_hf"]

MODEL_TYPES = ("phi3",)
ARCHITECTURES = {"phi3": "Phi3ForCausalLM"}
PREFIXES = llama.PREFIXES
IGNORED = llama.IGNORED

_FUSED = re.compile(r"(?P<stem>.*\.)(?P<name>self_attn\.qkv_proj|mlp\.gate_up_proj)\.weight")
_PARTS = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
_ORIGINAL_MAX_POSITIONS = 4096  # Phi3Config's default


def rules(config: BackboneConfig) -> list[Rule]:
    """Llama's name rules: the fused projections are split before they are looked up."""
    return llama.rules(config)


def _sizes(name: str, config: BackboneConfig) -> list[int]:
    """Rows of each part of a fused weight: query, key and value heads, or gate and up."""
    if name == "mlp.gate_up_proj":
        return [config.intermediate_size] * 2
    kv_rows = config.resolved_num_kv_heads * config.resolved_head_dim
    return [config.num_heads * config.resolved_head_dim, kv_rows, kv_rows]


def state_from_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Splits `qkv_proj` and `gate_up_proj` into Llama's separate projections."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        found = _FUSED.fullmatch(key)
        if found is None:
            out[key] = value
            continue
        sizes = _sizes(found["name"], config)
        if value.shape[0] != sum(sizes):
            out[key] = value  # left whole: the missing parts are then reported by name
            continue
        for part, tensor in zip(_PARTS[found["name"]], value.split(sizes, dim=0)):
            out[f"{found['stem']}{part}.weight"] = tensor.clone()  # a view would share the fused storage
    return out


def state_to_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Fuses the separate projections into `qkv_proj` and `gate_up_proj` again."""
    out = dict(state)
    for key in list(state):
        for fused, parts in _PARTS.items():
            if key.endswith(f".{parts[0]}.weight"):
                stem = key[: -len(f"{parts[0]}.weight")]
                out[f"{stem}{fused}.weight"] = torch.cat([out.pop(f"{stem}{part}.weight") for part in parts])
    return out


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a Phi-3 (Phi-3.5, Phi-4-mini) `config.json`.

    Raises:
        NlpkitError: On an unknown rotary type or parameter, or what else the
            backbone cannot express.
    """
    max_positions = hf.get("max_position_embeddings", 4096)
    original = hf.get("original_max_position_embeddings", _ORIGINAL_MAX_POSITIONS)
    rope = read_rope({**hf, "original_max_position_embeddings": original}, max_positions,
                     aliases={"su": "longrope", "yarn": "longrope"})
    vocab = hf.get("vocab_size", 32064)
    heads, hidden = hf.get("num_attention_heads", 32), hf.get("hidden_size", 3072)
    head_dim = hf.get("head_dim")  # not a Phi3Config field, but Phi3Attention reads it when present
    return make_config(
        kind="decoder",
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=hf.get("num_hidden_layers", 32),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim if head_dim and head_dim != hidden // heads else None,
        intermediate_size=hf.get("intermediate_size", 8192),
        max_positions=max_positions,
        position_embedding="rotary",
        rope_theta=rope.theta,
        rope_scaling=rope.scaling,
        partial_rotary_factor=rope.partial_rotary_factor,
        sliding_window=hf.get("sliding_window"),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        norm_position="pre",
        final_norm=True,
        activation=activation_from_hf(hf.get("hidden_act", "silu"), "hidden_act"),
        gated_mlp=True,
        attention_bias=False,
        attention_output_bias=False,
        mlp_bias=False,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        # One rate for both: nlpkit drops embeddings and residual branches alike.
        dropout=max(hf.get("resid_pdrop", 0.0), hf.get("embd_pdrop", 0.0)),
        attention_dropout=hf.get("attention_dropout", 0.0),
        pad_token_id=token_id(hf.get("pad_token_id", 32000), vocab),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a Phi-3 checkpoint for `config`."""
    scaling = config.rope_scaling
    original = scaling.original_max_positions if scaling is not None else None
    return {
        "model_type": model_type,
        **decoder_shape_to_hf(config),
        "hidden_act": activation_to_hf(config.activation),
        "original_max_position_embeddings": original or _ORIGINAL_MAX_POSITIONS,
        "rope_theta": config.rope_theta,
        "partial_rotary_factor": config.partial_rotary_factor,
        "rope_parameters": rope_to_hf(config.rope_theta, scaling, config.partial_rotary_factor),
        "sliding_window": config.sliding_window,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
    }
