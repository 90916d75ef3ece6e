"""GPT-2 checkpoints onto the `Decoder`.

References:
    - `transformers/models/gpt2/modeling_gpt2.py` and `configuration_gpt2.py`.
    - karpathy/nanoGPT `model.py` (`from_pretrained`), which does the same
      transposition: GPT-2's `Conv1D` stores weights as `(in, out)`, the
      transpose of `nn.Linear`, and fuses query, key and value in `c_attn`.

On load, `state_from_hf` transposes the `Conv1D` weights and splits `c_attn`
into three tensors named `...attn.c_attn.query` / `.key` / `.value` (names
that exist only between the file and the backbone); `state_to_hf` undoes
both on save.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from nlpkit.backbones.checkpoints._common import (
    Rule,
    activation_from_hf,
    activation_to_hf,
    make_config,
    token_id,
    unsupported,
)
from nlpkit.backbones.config import BackboneConfig

__all__ = [
    "ARCHITECTURES",
    "IGNORED",
    "MODEL_TYPES",
    "PREFIXES",
    "config_from_hf",
    "config_to_hf",
    "rules",
    "state_from_hf",
    "state_to_hf",
]

MODEL_TYPES = ("gpt2",)
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel"}
PREFIXES = ("transformer.",)
IGNORED = (r"(.*\.)?h\.\d+\.attn\.(masked_)?bias",)  # causal-mask buffers older releases saved

_QKV = ("query", "key", "value")
_CONV1D = re.compile(r"(.*\.)?h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")

_RULES: list[Rule] = [
    ("embeddings.token", "wte"),
    ("embeddings.position", "wpe"),
    ("layers.{i}.attention_norm", "h.{i}.ln_1"),
    ("layers.{i}.attention.query", "h.{i}.attn.c_attn.query"),
    ("layers.{i}.attention.key", "h.{i}.attn.c_attn.key"),
    ("layers.{i}.attention.value", "h.{i}.attn.c_attn.value"),
    ("layers.{i}.attention.output", "h.{i}.attn.c_proj"),
    ("layers.{i}.mlp_norm", "h.{i}.ln_2"),
    ("layers.{i}.mlp.up", "h.{i}.mlp.c_fc"),
    ("layers.{i}.mlp.down", "h.{i}.mlp.c_proj"),
    ("final_norm", "ln_f"),
    ("lm_head", "/lm_head"),
]


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for every GPT-2 config)."""
    return _RULES


def state_from_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Transposes `Conv1D` weights to `nn.Linear` layout and splits the fused `c_attn`."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if _CONV1D.fullmatch(key):
            value = value.t()  # (in, out) -> (out, in)
        if ".attn.c_attn." in key:
            stem, _, parameter = key.rpartition(".")
            for name, part in zip(_QKV, value.chunk(3, dim=0)):
                out[f"{stem}.{name}.{parameter}"] = part.contiguous()
            continue
        out[key] = value.contiguous()
    return out


def state_to_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Fuses query, key and value into `c_attn` and transposes `Conv1D` weights back."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        stem, _, parameter = key.rpartition(".")
        if stem.endswith(".attn.c_attn.query"):
            base = stem.removesuffix(".query")
            value = torch.cat([state[f"{base}.{name}.{parameter}"] for name in _QKV], dim=0)
            key = f"{base}.{parameter}"
        elif stem.endswith((".attn.c_attn.key", ".attn.c_attn.value")):
            continue
        out[key] = value.t().contiguous() if _CONV1D.fullmatch(key) else value
    return out


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a GPT-2 `config.json`.

    Raises:
        NlpkitError: On `scale_attn_by_inverse_layer_idx` or cross-attention,
            which the decoder does not implement.
    """
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise unsupported("scale_attn_by_inverse_layer_idx", True, "attention is scaled the same in every layer")
    if hf.get("add_cross_attention"):
        raise unsupported("add_cross_attention", True, "the decoder has no cross-attention")
    hidden = hf.get("n_embd", 768)
    vocab = hf.get("vocab_size", 50257)
    return make_config(
        kind="decoder",
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=hf.get("n_layer", 12),
        num_heads=hf.get("n_head", 12),
        intermediate_size=hf.get("n_inner") or 4 * hidden,
        max_positions=hf.get("n_positions", hf.get("n_ctx", 1024)),
        position_embedding="learned",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        norm_position="pre",
        final_norm=True,
        activation=activation_from_hf(hf.get("activation_function", "gelu_new"), "activation_function"),
        # scale_attn_weights=False drops the 1/sqrt(head_dim) of the dot products.
        attention_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("resid_pdrop", 0.1),
        attention_dropout=hf.get("attn_pdrop", 0.1),
        pad_token_id=token_id(hf.get("pad_token_id"), vocab),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a GPT-2 checkpoint for `config`."""
    return {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "n_embd": config.hidden_size,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.intermediate_size,
        "n_positions": config.max_positions,
        "layer_norm_epsilon": config.norm_eps,
        "activation_function": activation_to_hf(config.activation),
        "scale_attn_weights": config.attention_scale is None,
        "scale_attn_by_inverse_layer_idx": False,
        "tie_word_embeddings": config.tie_word_embeddings,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
    }
