"""Llama, Mistral, Qwen2 and Qwen3 checkpoints onto the `Decoder`.

References:
    - `transformers/models/llama/modeling_llama.py` and
      `configuration_llama.py` (RMSNorm, rotary positions in the
      `rotate_half` layout, SwiGLU, grouped-query attention).
    - `transformers/models/mistral/` (no biases; `sliding_window`) and
      `transformers/models/qwen2/` (biases on query, key and value only).
    - `transformers/models/qwen3/`: Qwen2's layout with an RMSNorm over
      `head_dim` on queries and keys before rotary (`q_norm`, `k_norm`),
      Llama's `attention_bias` (q, k, v and o), `head_dim` 128 by default,
      and Qwen2's sliding-window fields.
    - `transformers/modeling_rope_utils.py`: the rotary settings, read by
      `_rope.py` (rope types `default`, `linear`, `dynamic`, `yarn`, `llama3`,
      `longrope` and its alias `su`) and written back as `rope_parameters`.

Refused with an error that names the field: other rotary types (e.g.
`proportional`), unknown rotary parameters, `partial_rotary_factor`
(transformers' Llama ignores it for plain rotary and fails with scaled
rotary, so there is nothing to match; Phi-3 reads it, see `phi3.py`) and
sliding layers in a Llama config. Mistral's `sliding_window` and Qwen2's (and Qwen3's) `use_sliding_window`,
`max_window_layers` and `layer_types` become `sliding_window` and
`layer_types`, read as transformers 5.24 reads them, and are written back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nlpkit.backbones.checkpoints._common import (
    Rule,
    activation_from_hf,
    activation_to_hf,
    decoder_shape_to_hf,
    make_config,
    token_id,
    unsupported,
)
from nlpkit.backbones.checkpoints._rope import read_rope, rope_to_hf
from nlpkit.backbones.config import BackboneConfig

__all__ = ["ARCHITECTURES", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf", "config_to_hf", "rules"]

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
PREFIXES = ("model.",)
IGNORED = (r"(.*\.)?rotary_emb\.inv_freq",)  # a buffer that releases before 4.31 saved

_RULES: list[Rule] = [
    ("embeddings.token", "embed_tokens"),
    ("layers.{i}.attention_norm", "layers.{i}.input_layernorm"),
    ("layers.{i}.attention.query", "layers.{i}.self_attn.q_proj"),
    ("layers.{i}.attention.key", "layers.{i}.self_attn.k_proj"),
    ("layers.{i}.attention.value", "layers.{i}.self_attn.v_proj"),
    ("layers.{i}.attention.output", "layers.{i}.self_attn.o_proj"),
    ("layers.{i}.attention.query_norm", "layers.{i}.self_attn.q_norm"),  # Qwen3
    ("layers.{i}.attention.key_norm", "layers.{i}.self_attn.k_norm"),
    ("layers.{i}.mlp_norm", "layers.{i}.post_attention_layernorm"),
    ("layers.{i}.mlp.gate", "layers.{i}.mlp.gate_proj"),
    ("layers.{i}.mlp.up", "layers.{i}.mlp.up_proj"),
    ("layers.{i}.mlp.down", "layers.{i}.mlp.down_proj"),
    ("final_norm", "norm"),
    ("lm_head", "/lm_head"),
]

_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768}


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for the four model types; only Qwen3 has query and key norms)."""
    return _RULES


def _sliding_window(hf: Mapping[str, Any], model_type: str) -> tuple[int | None, list[str] | None]:
    """`sliding_window` and `layer_types` as transformers 5.24 reads them.

    Mistral: every layer slides when `sliding_window` is set (its default is
    4096; `MistralAttention` ignores `layer_types`). Qwen2 and Qwen3: only with
    `use_sliding_window` (default false); `layer_types` if given, else layers
    from `max_window_layers` (default 28) on slide (`Qwen2Config`). Llama
    has no window: a sliding layer there is refused.
    """
    if model_type == "llama":
        if "sliding_attention" in (hf.get("layer_types") or ()):
            raise unsupported("layer_types", "sliding_attention", "transformers' Llama has no sliding window")
        return None, None
    window = hf.get("sliding_window", 4096)
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        window = None
    if window is None:
        return None, None
    layers = hf.get("num_hidden_layers", 32)
    if model_type == "mistral":
        return window, None
    types = hf.get("layer_types")
    if types is None:
        start = hf.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= start else "full_attention" for i in range(layers)]
    types = list(types)
    if all(t == "sliding_attention" for t in types):
        return window, None
    return window, types


def _sliding_window_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The window fields of `config.json`: Mistral's one window, or Qwen2's (Qwen3's) switch, window and layer types."""
    window = config.sliding_window
    types = config.layer_types
    if model_type == "llama":
        if window is not None:
            raise ValueError("a Llama checkpoint cannot express sliding_window; export as mistral or qwen2")
        return {}
    if model_type == "mistral":
        if window is not None and types is not None and "full_attention" in types:
            raise ValueError("a Mistral checkpoint slides in every layer; layer_types with full_attention layers "
                             "need qwen2")
        return {"sliding_window": window}
    per_layer = [("sliding_attention" if config.layer_window(i) is not None else "full_attention")
                 for i in range(config.num_layers)]
    leading_full = next((i for i, t in enumerate(per_layer) if t == "sliding_attention"), config.num_layers)
    return {"use_sliding_window": window is not None, "sliding_window": window,
            "max_window_layers": leading_full, "layer_types": per_layer}


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a Llama, Mistral, Qwen2 or Qwen3 `config.json`.

    Raises:
        NlpkitError: On an unknown rotary type or parameter, partial rotary
            positions, or sliding layers in a Llama config.
    """
    max_positions = hf.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS[model_type])
    sliding_window, layer_types = _sliding_window(hf, model_type)
    rope = read_rope(hf, max_positions, aliases={"su": "longrope"})
    if rope.partial_rotary_factor != 1.0:
        # transformers' Llama ignores it (plain rope turns the whole head) or fails (scaled rope): no parity.
        raise unsupported("partial_rotary_factor", rope.partial_rotary_factor,
                          "transformers' Llama family turns the whole head")
    vocab = hf.get("vocab_size", 151936 if model_type in ("qwen2", "qwen3") else 32000)
    heads = hf.get("num_attention_heads", 32)
    if model_type == "qwen2":
        bias, output_bias = True, False  # Qwen2: biases on q, k, v only
    else:
        bias = output_bias = bool(hf.get("attention_bias", False))  # Llama's and Qwen3's flag covers o_proj too
    return make_config(
        kind="decoder",
        vocab_size=vocab,
        hidden_size=hf.get("hidden_size", 4096),
        num_layers=hf.get("num_hidden_layers", 32),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        # Qwen3Config defaults head_dim to 128 whatever hidden_size / heads is.
        head_dim=hf.get("head_dim", 128 if model_type == "qwen3" else None) or None,
        intermediate_size=hf.get("intermediate_size", 11008),
        max_positions=max_positions,
        position_embedding="rotary",
        rope_theta=rope.theta,
        rope_scaling=rope.scaling,
        sliding_window=sliding_window,
        layer_types=layer_types,
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_position="pre",
        final_norm=True,
        activation=activation_from_hf(hf.get("hidden_act", "silu"), "hidden_act"),
        gated_mlp=True,
        attention_bias=bias,
        attention_output_bias=output_bias,
        qk_norm=model_type == "qwen3",
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        dropout=0.0,  # no dropout on the residual stream in these families
        attention_dropout=hf.get("attention_dropout", 0.0),
        pad_token_id=token_id(hf.get("pad_token_id"), vocab),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a Llama, Mistral, Qwen2 or Qwen3 checkpoint for `config`.

    `rope_theta` is written both at the top level and in `rope_parameters`,
    so that releases before and after 5.0 read the same value.
    """
    hf: dict[str, Any] = {
        "model_type": model_type,
        **decoder_shape_to_hf(config),
        "hidden_act": activation_to_hf(config.activation),
        "rope_theta": config.rope_theta,
        "rope_parameters": rope_to_hf(config.rope_theta, config.rope_scaling),
    }
    if model_type == "llama":
        hf.update(attention_bias=config.attention_bias, mlp_bias=config.mlp_bias)
    if model_type == "qwen3":
        hf.update(attention_bias=config.attention_bias)
    hf.update(_sliding_window_to_hf(config, model_type))
    return hf
