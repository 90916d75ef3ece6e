"""Gemma, Gemma 2 and Gemma 3 (text) checkpoints onto the `Decoder`.

References:
    - `transformers/models/gemma/`, `gemma2/` and `gemma3/` (5.24), their
      `modeling_*.py` and `configuration_*.py`.
    - Gemma Team 2024, Gemma 2 (https://arxiv.org/abs/2408.00118) and 2025,
      Gemma 3 (https://arxiv.org/abs/2503.19786).

What the families add to Llama's layout, as `BackboneConfig` fields: token
embeddings scaled by `sqrt(hidden_size)` (`scale_embedding`), RMSNorm
weights stored as offsets from one (`norm_unit_offset`), a gelu-tanh gated
feed-forward block, `head_dim` 256 by default, a tied head; Gemma 2 and 3:
norms on each branch's output (`branch_output_norm`: `post_attention_layernorm`
and `post_feedforward_layernorm`, with `pre_feedforward_layernorm` before the
feed-forward block), `query_pre_attn_scalar ** -0.5` as the attention scale,
local sliding-window and global layers (`layer_types`, or the older pattern:
Gemma 2 alternates, Gemma 3's `sliding_window_pattern` makes every sixth layer
global); Gemma 2: soft-capped attention and final logits; Gemma 3: RMSNorm on
queries and keys (`qk_norm`), a rotary base and scaling per layer type
(`rope_parameters.full_attention` / `.sliding_attention`, older
`rope_theta` / `rope_local_base_freq` / `rope_scaling` of the global layers).

A multimodal Gemma 3 folder (`model_type` `gemma3`,
`Gemma3ForConditionalGeneration`) loads its language model as a text decoder:
`text_model` reads its `text_config`, the weights under
`model.language_model.` (or `language_model.model.` before transformers 4.52)
are found by prefix, and the vision tower and projector are left out. Such a
backbone saves (exports) as a `gemma3_text` folder, which `Gemma3ForCausalLM` loads.

Refused naming the field: `use_bidirectional_attention` (EmbeddingGemma's
encoder mode), and what `_rope.py` refuses. In bf16, transformers rounds
the embedding scale to the weight dtype first (`sqrt(3072)` becomes 55.5);
nlpkit multiplies by the exact scale, so bf16 activations differ from it
by up to 0.2% there (fp32 is unaffected).
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

__all__ = ["ARCHITECTURES", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf", "config_to_hf", "rules",
           "text_model"]

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text", "gemma3")
# What a save writes: a multimodal gemma3 backbone is saved as the text model it is.
ARCHITECTURES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                 "gemma3": "Gemma3ForCausalLM"}
PREFIXES = ("model.", "model.language_model.", "language_model.model.")
IGNORED = (r"(.*\.)?rotary_emb\.\w*inv_freq", r"(model\.)?(vision_tower|multi_modal_projector)\..*")

_LAYERS: list[Rule] = [
    ("embeddings.token", "embed_tokens"),
    ("layers.{i}.attention_norm", "layers.{i}.input_layernorm"),
    ("layers.{i}.attention.query", "layers.{i}.self_attn.q_proj"),
    ("layers.{i}.attention.key", "layers.{i}.self_attn.k_proj"),
    ("layers.{i}.attention.value", "layers.{i}.self_attn.v_proj"),
    ("layers.{i}.attention.output", "layers.{i}.self_attn.o_proj"),
    ("layers.{i}.attention.query_norm", "layers.{i}.self_attn.q_norm"),  # Gemma 3
    ("layers.{i}.attention.key_norm", "layers.{i}.self_attn.k_norm"),
    ("layers.{i}.mlp.gate", "layers.{i}.mlp.gate_proj"),
    ("layers.{i}.mlp.up", "layers.{i}.mlp.up_proj"),
    ("layers.{i}.mlp.down", "layers.{i}.mlp.down_proj"),
    ("final_norm", "norm"),
    ("lm_head", "/lm_head"),
    ("lm_head", "/language_model.lm_head"),  # a multimodal Gemma 3 saved before transformers 4.52
]
# Gemma's post_attention_layernorm is the feed-forward block's input norm (as Llama's); Gemma 2 and 3 normalise
# the attention output with it and have a pre- and a post-feed-forward norm.
_GEMMA_NORMS: list[Rule] = [("layers.{i}.mlp_norm", "layers.{i}.post_attention_layernorm")]
_SANDWICH_NORMS: list[Rule] = [
    ("layers.{i}.attention_output_norm", "layers.{i}.post_attention_layernorm"),
    ("layers.{i}.mlp_norm", "layers.{i}.pre_feedforward_layernorm"),
    ("layers.{i}.mlp_output_norm", "layers.{i}.post_feedforward_layernorm"),
]

_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=8192),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=8192,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=131072),
}
_GLOBAL_EVERY = {"gemma2": 2, "gemma3_text": 6}  # the layer pattern before `layer_types`: every n-th layer is global
_ROPE_THETA = {"gemma": 10000.0, "gemma2": 10000.0, "gemma3_text": 1_000_000.0}


def text_model(hf: Mapping[str, Any], model_type: str) -> tuple[str, dict[str, Any]]:
    """The text decoder's model type and `config.json` fields: a multimodal Gemma 3's `text_config`."""
    if model_type != "gemma3":
        return model_type, dict(hf)
    text = hf.get("text_config") or {}
    if not isinstance(text, Mapping):
        raise unsupported("text_config", text, "expected a mapping (the language model's config)")
    return "gemma3_text", {**text, "model_type": "gemma3_text"}


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules: Gemma's norms, or the four norms per layer of Gemma 2 and 3."""
    return _LAYERS + (_SANDWICH_NORMS if config.branch_output_norm else _GEMMA_NORMS)


def _layer_types(hf: Mapping[str, Any], model_type: str, layers: int) -> list[str]:
    """Per layer `sliding_attention` or `full_attention`, as the config classes default them."""
    if model_type == "gemma":
        return ["full_attention"] * layers
    types = hf.get("layer_types")
    if types is None:
        every = hf.get("sliding_window_pattern", _GLOBAL_EVERY[model_type])
        types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)]
    return list(types)


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a Gemma, Gemma 2 or Gemma 3 `config.json` (a multimodal one through its `text_config`).

    Raises:
        NlpkitError: On `use_bidirectional_attention`, an unknown rotary type
            or parameter, or what else the backbone cannot express.
    """
    model_type, hf = text_model(hf, model_type)
    if hf.get("use_bidirectional_attention"):
        raise unsupported("use_bidirectional_attention", True, "nlpkit's decoder is causal")
    defaults = _DEFAULTS[model_type]

    def get(key: str, default: Any = None) -> Any:
        return hf.get(key, defaults.get(key, default))

    layers, heads = get("num_hidden_layers"), get("num_attention_heads")
    head_dim = get("head_dim", 256)
    max_positions = get("max_position_embeddings")
    types = _layer_types(hf, model_type, layers)
    window = get("sliding_window", 4096) if "sliding_attention" in types else None
    if window is None:
        types = ["full_attention"] * layers
    full = read_rope(hf, max_positions, default_theta=_ROPE_THETA[model_type], layer_type="full_attention")
    local = full
    if model_type == "gemma3_text":
        local = read_rope(hf, max_positions, default_theta=10000.0, layer_type="sliding_attention",
                          theta_key="rope_local_base_freq")
    for rope in (full, local):
        if rope.partial_rotary_factor != 1.0:
            raise unsupported("partial_rotary_factor", rope.partial_rotary_factor, "Gemma turns the whole head")
    separate_local = window is not None and (local.theta, local.scaling) != (full.theta, full.scaling)
    activation_key = "hidden_act" if model_type == "gemma" else "hidden_activation"
    vocab = get("vocab_size")
    scalar = hf.get("query_pre_attn_scalar", 256) if model_type != "gemma" else None
    bias = bool(hf.get("attention_bias", False))
    return make_config(
        kind="decoder",
        vocab_size=vocab,
        hidden_size=get("hidden_size"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=get("intermediate_size"),
        max_positions=max_positions,
        position_embedding="rotary",
        rope_theta=full.theta,
        rope_scaling=full.scaling,
        local_rope_theta=local.theta if separate_local else None,
        local_rope_scaling=local.scaling if separate_local else None,
        sliding_window=window,
        layer_types=None if window is None or "full_attention" not in types else types,
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_unit_offset=True,
        norm_position="pre",
        branch_output_norm=model_type != "gemma",
        final_norm=True,
        scale_embedding=True,
        activation=activation_from_hf(hf.get(activation_key, "gelu_pytorch_tanh"), activation_key),
        gated_mlp=True,
        attention_bias=bias,
        attention_output_bias=bias,
        qk_norm=model_type == "gemma3_text",
        mlp_bias=False,
        attention_scale=float(scalar) ** -0.5 if scalar is not None else None,
        attention_softcap=get("attn_logit_softcapping"),
        logit_softcap=get("final_logit_softcapping"),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        dropout=0.0,  # no dropout on the residual stream in these families
        attention_dropout=hf.get("attention_dropout", 0.0),
        pad_token_id=token_id(hf.get("pad_token_id", 0), vocab),
    )


def _query_pre_attn_scalar(config: BackboneConfig) -> float:
    """`query_pre_attn_scalar` for the config's attention scale (a whole number where it is one, as configs hold)."""
    scalar = (config.attention_scale or config.resolved_head_dim**-0.5) ** -2
    return round(scalar) if abs(scalar - round(scalar)) < 1e-6 * scalar else scalar


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a Gemma, Gemma 2 or Gemma 3 text checkpoint for `config`.

    A backbone read from a multimodal Gemma 3 folder is written as
    `gemma3_text`: nlpkit holds its language model only.
    """
    if model_type == "gemma3":
        model_type = "gemma3_text"
    hf: dict[str, Any] = {
        "model_type": model_type,
        **decoder_shape_to_hf(config),
        "hidden_act" if model_type == "gemma" else "hidden_activation": (
            "gelu_pytorch_tanh" if config.activation == "gelu_tanh" else activation_to_hf(config.activation)),
        "attention_bias": config.attention_bias,
    }
    full = rope_to_hf(config.rope_theta, config.rope_scaling)
    if model_type == "gemma3_text":
        theta, scaling = config.rope(sliding=True)
        hf["rope_parameters"] = {"full_attention": full, "sliding_attention": rope_to_hf(theta, scaling)}
    else:
        hf.update(rope_theta=config.rope_theta, rope_parameters=full)
    if model_type != "gemma":
        hf.update(
            query_pre_attn_scalar=_query_pre_attn_scalar(config),
            attn_logit_softcapping=config.attention_softcap,
            final_logit_softcapping=config.logit_softcap,
            sliding_window=config.sliding_window,
            layer_types=["sliding_attention" if config.layer_window(i) is not None else "full_attention"
                         for i in range(config.num_layers)],
        )
    return hf
