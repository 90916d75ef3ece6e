"""Llama, Mistral and Qwen2 checkpoints onto the `Decoder`.

References:
    - `transformers/models/llama/modeling_llama.py` and
      `configuration_llama.py` (RMSNorm, rotary positions in the
      `rotate_half` layout, SwiGLU, grouped-query attention).
    - `transformers/models/mistral/` (no biases; `sliding_window`) and
      `transformers/models/qwen2/` (biases on query, key and value only).
    - `transformers/modeling_rope_utils.py`: releases from 5.0 on write
      `rope_parameters: {rope_type, rope_theta}`; older ones wrote
      `rope_theta` at the top level and scaling in `rope_scaling`.

The backbone implements plain rotary positions over the whole context, so
scaled rotary variants (Llama 3's `llama3`, `linear`, `dynamic`, `yarn`),
partial rotary and a sliding window shorter than the context are refused
with an error that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nlpkit.backbones.checkpoints._common import (
    Rule,
    activation_from_hf,
    activation_to_hf,
    make_config,
    token_id,
    unsupported,
)
from nlpkit.backbones.config import BackboneConfig

__all__ = ["ARCHITECTURES", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf", "config_to_hf", "rules"]

MODEL_TYPES = ("llama", "mistral", "qwen2")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
PREFIXES = ("model.",)
IGNORED = (r"(.*\.)?rotary_emb\.inv_freq",)  # a buffer that releases before 4.31 saved

_RULES: list[Rule] = [
    ("embeddings.token", "embed_tokens"),
    ("layers.{i}.attention_norm", "layers.{i}.input_layernorm"),
    ("layers.{i}.attention.query", "layers.{i}.self_attn.q_proj"),
    ("layers.{i}.attention.key", "layers.{i}.self_attn.k_proj"),
    ("layers.{i}.attention.value", "layers.{i}.self_attn.v_proj"),
    ("layers.{i}.attention.output", "layers.{i}.self_attn.o_proj"),
    ("layers.{i}.mlp_norm", "layers.{i}.post_attention_layernorm"),
    ("layers.{i}.mlp.gate", "layers.{i}.mlp.gate_proj"),
    ("layers.{i}.mlp.up", "layers.{i}.mlp.up_proj"),
    ("layers.{i}.mlp.down", "layers.{i}.mlp.down_proj"),
    ("final_norm", "norm"),
    ("lm_head", "/lm_head"),
]

_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 131072, "qwen2": 32768}


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for the three model types)."""
    return _RULES


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """The rotary base, from `rope_parameters` (5.x), `rope_scaling` or the top level (4.x)."""
    for field in ("rope_parameters", "rope_scaling"):
        params = hf.get(field)
        if not params:
            continue
        if not isinstance(params, Mapping):
            raise unsupported(field, params, "expected a mapping with rope_type and rope_theta")
        type_key = "rope_type" if "rope_type" in params else "type"
        if params.get(type_key, "default") != "default":
            raise unsupported(f"{field}.{type_key}", params[type_key],
                              "only default rotary positions are implemented (no scaled variants)")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise unsupported(f"{field}.partial_rotary_factor", params["partial_rotary_factor"],
                              "rotary positions turn the whole head")
        if "rope_theta" in params:
            return float(params["rope_theta"])
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise unsupported("partial_rotary_factor", hf["partial_rotary_factor"], "rotary positions turn the whole head")
    return float(hf.get("rope_theta", 10000.0))


def _check_sliding_window(hf: Mapping[str, Any], model_type: str, max_positions: int) -> None:
    """Refuses a sliding window that is shorter than the context the model accepts."""
    if "sliding_attention" in (hf.get("layer_types") or ()):
        raise unsupported("layer_types", "sliding_attention", "attention always sees the whole context")
    window = hf.get("sliding_window")
    uses_window = hf.get("use_sliding_window", True) if model_type == "qwen2" else model_type == "mistral"
    if uses_window and window is not None and window < max_positions:
        raise unsupported("sliding_window", window, f"attention always sees the whole context, so only a window of "
                          f"at least max_position_embeddings ({max_positions}) or null can be expressed")


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a Llama, Mistral or Qwen2 `config.json`.

    Raises:
        NlpkitError: On scaled or partial rotary positions, or a sliding
            window shorter than the context.
    """
    max_positions = hf.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS[model_type])
    _check_sliding_window(hf, model_type, max_positions)
    vocab = hf.get("vocab_size", 151936 if model_type == "qwen2" else 32000)
    heads = hf.get("num_attention_heads", 32)
    if model_type == "qwen2":
        bias, output_bias = True, False  # Qwen2: biases on q, k, v only
    else:
        bias = output_bias = bool(hf.get("attention_bias", False))  # Llama's flag covers o_proj too
    return make_config(
        kind="decoder",
        vocab_size=vocab,
        hidden_size=hf.get("hidden_size", 4096),
        num_layers=hf.get("num_hidden_layers", 32),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or None,
        intermediate_size=hf.get("intermediate_size", 11008),
        max_positions=max_positions,
        position_embedding="rotary",
        rope_theta=_rope_theta(hf),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_position="pre",
        final_norm=True,
        activation=activation_from_hf(hf.get("hidden_act", "silu"), "hidden_act"),
        gated_mlp=True,
        attention_bias=bias,
        attention_output_bias=output_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        dropout=0.0,  # no dropout on the residual stream in these families
        attention_dropout=hf.get("attention_dropout", 0.0),
        pad_token_id=token_id(hf.get("pad_token_id"), vocab),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a Llama, Mistral or Qwen2 checkpoint for `config`.

    `rope_theta` is written both at the top level and in `rope_parameters`,
    so that releases before and after 5.0 read the same value.
    """
    hf: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.resolved_num_kv_heads,
        "head_dim": config.resolved_head_dim,
        "hidden_act": activation_to_hf(config.activation),
        "max_position_embeddings": config.max_positions,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_dropout": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
    }
    if model_type == "llama":
        hf.update(attention_bias=config.attention_bias, mlp_bias=config.mlp_bias)
    elif model_type == "mistral":
        hf.update(sliding_window=None)
    else:
        hf.update(sliding_window=None, use_sliding_window=False)
    return hf
