"""ModernBERT checkpoints onto the `Encoder`.

References:
    - `transformers/models/modernbert/modeling_modernbert.py` and
      `configuration_modernbert.py` (5.24).
    - Warner et al. 2024, ModernBERT (https://arxiv.org/abs/2412.13663).

A pre-norm encoder with bias-less LayerNorms (`norm_bias`), rotary
positions and no position table: the embeddings are the token table and a
norm, and layer 0 has no attention norm (`attn_norm` is an `nn.Identity`,
`first_layer_attention_norm=False`). Every `global_attn_every_n_layers`-th
layer (from layer 0) attends globally, the others see `|i - j| <=
local_attention // 2` (`sliding_window = local_attention // 2 + 1` in
nlpkit's `|i - j| < sliding_window`), each kind with its own rotary base:
`rope_parameters.full_attention` / `.sliding_attention` in transformers 5,
`global_rope_theta` / `local_rope_theta` (and a flat `rope_scaling` for
both) before.

The weights hold two fused projections, split by `state_from_hf` and fused
again by `state_to_hf` (as `phi3.py` does):

- `attn.Wqkv`: the query, key and value rows, in that order;
- `mlp.Wi`: hidden -> 2 * intermediate, chunked into `input` and `gate`
  with `Wo(act(input) * gate)`. nlpkit's gated MLP computes
  `down(act(gate(x)) * up(x))`, so Wi's first (activated) half is nlpkit's
  `gate` and its second half nlpkit's `up`.

Dropout: nlpkit has one rate for embeddings and residual branches, so the
larger of `embedding_dropout` and `mlp_dropout` is read (both are 0 in the
released checkpoints); `attention_dropout` is the attention rate.
Head classes (`ModernBertForMaskedLM`, `...ForSequenceClassification`, ...)
put the body under `model.`; their `head.*`, `classifier.*` and `decoder.*`
weights come back as extra state. `HEADS` describes those heads for the task plugins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from nlpkit.backbones.checkpoints._common import (
    HeadShape,
    Rule,
    activation_from_hf,
    activation_to_hf,
    make_config,
    token_id,
    unsupported,
)
from nlpkit.backbones.checkpoints._rope import read_rope, rope_to_hf
from nlpkit.backbones.config import BackboneConfig

__all__ = ["ARCHITECTURES", "HEADS", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf", "config_to_hf",
           "rules", "state_from_hf", "state_to_hf"]

MODEL_TYPES = ("modernbert",)
ARCHITECTURES = {"modernbert": "ModernBertModel"}
PREFIXES = ("model.",)
IGNORED: tuple[str, ...] = ()

# All three head classes run `ModernBertPredictionHead` on the hidden states: `head.dense` (a bias only with
# `classifier_bias`, False by default), `classifier_activation` (gelu), `head.norm` (a LayerNorm, biased only
# with `norm_bias`: False in the released checkpoints); then dropout and the `classifier` Linear. The sequence
# head first pools by `classifier_pooling`: the first token, or the mask-weighted mean as nlpkit's `mean`.
_HEAD_CONFIG = {"classifier_activation": "gelu", "classifier_bias": False}


def _head(architecture: str, poolings: tuple[str, ...] = ("cls",), **config: Any) -> HeadShape:
    return HeadShape(architecture, "classifier", "head.dense", "gelu", transform_bias=False, norm="head.norm",
                     norm_bias=False, poolings=poolings, config={**_HEAD_CONFIG, **config})


HEADS = {"modernbert": {
    "sequence_classification": _head("ModernBertForSequenceClassification", ("cls", "mean"),
                                     classifier_pooling="{pooling}"),
    "token_classification": _head("ModernBertForTokenClassification"),
    "question_answering": _head("ModernBertForQuestionAnswering"),
}}

_RULES: list[Rule] = [
    ("embeddings.token", "embeddings.tok_embeddings"),
    ("embeddings.norm", "embeddings.norm"),
    ("layers.{i}.attention_norm", "layers.{i}.attn_norm"),
    # The three parts of attn.Wqkv and mlp.Wi, named by state_from_hf.
    ("layers.{i}.attention.query", "layers.{i}.attn.Wqkv_query"),
    ("layers.{i}.attention.key", "layers.{i}.attn.Wqkv_key"),
    ("layers.{i}.attention.value", "layers.{i}.attn.Wqkv_value"),
    ("layers.{i}.attention.output", "layers.{i}.attn.Wo"),
    ("layers.{i}.mlp_norm", "layers.{i}.mlp_norm"),
    ("layers.{i}.mlp.gate", "layers.{i}.mlp.Wi_input"),
    ("layers.{i}.mlp.up", "layers.{i}.mlp.Wi_gate"),
    ("layers.{i}.mlp.down", "layers.{i}.mlp.Wo"),
    ("final_norm", "final_norm"),
]

_FUSED = re.compile(r"(?P<stem>.*\.)(?P<name>attn\.Wqkv|mlp\.Wi)\.(?P<parameter>weight|bias)")
_PARTS = {"attn.Wqkv": ("attn.Wqkv_query", "attn.Wqkv_key", "attn.Wqkv_value"),
          "mlp.Wi": ("mlp.Wi_input", "mlp.Wi_gate")}

# ModernBertConfig's defaults where nlpkit's differ.
_GLOBAL_ROPE_THETA, _LOCAL_ROPE_THETA = 160_000.0, 10_000.0
_GLOBAL_EVERY, _LOCAL_ATTENTION = 3, 128


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for every ModernBERT config); the fused weights are split before they are looked up."""
    return _RULES


def state_from_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Splits `attn.Wqkv` into query, key and value and `mlp.Wi` into its activated and gating halves."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        found = _FUSED.fullmatch(key)
        parts = _PARTS[found["name"]] if found is not None else ()
        if found is None or value.shape[0] % len(parts) != 0:
            out[key] = value  # left whole: a wrong shape is then reported by name as a missing part
            continue
        for part, tensor in zip(parts, value.chunk(len(parts), dim=0)):
            out[f"{found['stem']}{part}.{found['parameter']}"] = tensor.clone()  # a view would share the fused storage
    return out


def state_to_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Fuses the separate projections into `attn.Wqkv` and `mlp.Wi` again."""
    out = dict(state)
    for key in state:
        for fused, parts in _PARTS.items():
            for parameter in ("weight", "bias"):
                if key.endswith(f".{parts[0]}.{parameter}"):
                    stem = key[: -len(f"{parts[0]}.{parameter}")]
                    out[f"{stem}{fused}.{parameter}"] = torch.cat(
                        [out.pop(f"{stem}{part}.{parameter}") for part in parts])
    return out


def _layer_types(hf: Mapping[str, Any], layers: int) -> list[str]:
    """Per layer `full_attention` or `sliding_attention`, as `ModernBertConfig.__post_init__` defaults them."""
    types = hf.get("layer_types")
    if types is None:
        every = hf.get("global_attn_every_n_layers", _GLOBAL_EVERY)
        types = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    if len(types) != layers:
        raise unsupported("layer_types", types, f"needs one entry per layer ({layers})")
    return list(types)


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a ModernBERT `config.json`.

    Raises:
        NlpkitError: On a rotary type or parameter nlpkit does not implement,
            a partial rotary head, or an unknown activation.
    """
    layers, heads = hf.get("num_hidden_layers", 22), hf.get("num_attention_heads", 12)
    max_positions = hf.get("max_position_embeddings", 8192)
    types = _layer_types(hf, layers)
    full = read_rope(hf, max_positions, default_theta=_GLOBAL_ROPE_THETA, layer_type="full_attention",
                     theta_key="global_rope_theta")
    # A flat rope_scaling of the older files scales both kinds of layer (ModernBertConfig.convert_rope_params_to_dict).
    flat_scaling = hf.get("rope_scaling") if not hf.get("rope_parameters") else None
    local = read_rope({**hf, "rope_parameters": flat_scaling} if flat_scaling else hf, max_positions,
                      default_theta=_LOCAL_ROPE_THETA, layer_type="sliding_attention", theta_key="local_rope_theta")
    for rope in (full, local):
        if rope.partial_rotary_factor != 1.0:
            raise unsupported("partial_rotary_factor", rope.partial_rotary_factor, "ModernBERT turns the whole head")
    sliding = "sliding_attention" in types
    separate_local = sliding and (local.theta, local.scaling) != (full.theta, full.scaling)
    vocab = hf.get("vocab_size", 50368)
    return make_config(
        kind="encoder",
        vocab_size=vocab,
        hidden_size=hf.get("hidden_size", 768),
        num_layers=layers,
        num_heads=heads,
        intermediate_size=hf.get("intermediate_size", 1152),
        max_positions=max_positions,
        position_embedding="rotary",
        rope_theta=full.theta,
        rope_scaling=full.scaling,
        local_rope_theta=local.theta if separate_local else None,
        local_rope_scaling=local.scaling if separate_local else None,
        # transformers' sliding_window is local_attention // 2 and inclusive; nlpkit's bound is exclusive.
        sliding_window=hf.get("local_attention", _LOCAL_ATTENTION) // 2 + 1 if sliding else None,
        layer_types=types if sliding and "full_attention" in types else None,
        norm="layernorm",
        norm_eps=hf.get("norm_eps", 1e-5),
        norm_bias=hf.get("norm_bias", False),
        norm_position="pre",
        embedding_norm=True,
        first_layer_attention_norm=False,
        final_norm=True,
        activation=activation_from_hf(hf.get("hidden_activation", "gelu"), "hidden_activation"),
        gated_mlp=True,
        attention_bias=hf.get("attention_bias", False),
        attention_output_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        dropout=max(hf.get("embedding_dropout", 0.0), hf.get("mlp_dropout", 0.0)),
        attention_dropout=hf.get("attention_dropout", 0.0),
        pad_token_id=token_id(hf.get("pad_token_id", 50283), vocab),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a ModernBERT checkpoint for `config`."""
    theta, scaling = config.rope(sliding=True)
    window = config.sliding_window
    return {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "max_position_embeddings": config.max_positions,
        "hidden_activation": activation_to_hf(config.activation),
        "norm_eps": config.norm_eps,
        "norm_bias": config.norm_bias,
        "attention_bias": config.attention_bias,
        "mlp_bias": config.mlp_bias,
        "layer_types": ["sliding_attention" if config.layer_window(i) is not None else "full_attention"
                        for i in range(config.num_layers)],
        # Without local layers the window is never read; ModernBertConfig's default keeps the file ordinary.
        "local_attention": 2 * (window - 1) if window is not None else _LOCAL_ATTENTION,
        "rope_parameters": {"full_attention": rope_to_hf(config.rope_theta, config.rope_scaling),
                            "sliding_attention": rope_to_hf(theta, scaling)},
        "embedding_dropout": config.dropout,
        "mlp_dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
    }
