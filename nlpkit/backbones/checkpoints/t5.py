"""T5 checkpoints (v1.0, v1.1 / Flan-T5, and mT5) onto the `EncoderDecoder`.

References:
    - `transformers/models/t5/modeling_t5.py` and `configuration_t5.py`
      (pre-norm RMSNorm, relative position buckets held by the first layer
      of each stack, unscaled attention, `DenseReluDense` or gated
      `DenseGatedActDense` feed-forward).
    - Raffel et al. 2020 (https://arxiv.org/abs/1910.10683); the v1.1
      changes (gated-GELU, untied head, no output rescaling) in
      google-research/text-to-text-transfer-transformer
      `released_checkpoints.md`.
    - `transformers/models/mt5/modeling_mt5.py` and `configuration_mt5.py`:
      the v1.1 layout under its own model type (gated-GELU by default, 250112
      tokens); its head never rescales the decoder output.
    - `transformers/models/umt5/modeling_umt5.py`: every layer holds its own
      relative position bias, which the shared stacks (one bias per stack,
      held by the first layer) cannot express; `umt5` is refused.

Tied head and output scaling, across releases: before 5.0, `config.json`
said `tie_word_embeddings: false` for v1.1 and the model both untied the
head and skipped the `d_model ** -0.5` rescaling of the decoder output.
From 5.0 on, `T5Config` always writes `tie_word_embeddings: true` and keeps
the rescaling in `scale_decoder_outputs`; a file that still holds its own
`lm_head.weight` (different from `shared`) then stays untied. So the
rescaling comes from `scale_decoder_outputs` when present (else from
`tie_word_embeddings`), and tying is settled by the weights themselves in
`checkpoints/__init__.py`. mT5 has no `scale_decoder_outputs`: its model
never rescales, whatever `tie_word_embeddings` says (5.x always writes true).
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

MODEL_TYPES = ("t5", "mt5", "umt5")
ARCHITECTURES = {"t5": "T5ForConditionalGeneration", "mt5": "MT5ForConditionalGeneration",
                 "umt5": "UMT5ForConditionalGeneration"}
PREFIXES = ()  # T5's head class keeps the base model's names
IGNORED = (
    r"(encoder|decoder)\.embed_tokens\.weight",  # tied copies of `shared`
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",  # unused; some files hold it
)

_PROJECTIONS = (("query", "q"), ("key", "k"), ("value", "v"), ("output", "o"))


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules; the feed-forward names depend on `gated_mlp` (`wi` or `wi_0` / `wi_1`)."""
    found: list[Rule] = [
        ("token_embedding", "shared"),
        # Fallbacks for files that kept a tied copy instead of `shared`.
        ("token_embedding", "encoder.embed_tokens"),
        ("token_embedding", "decoder.embed_tokens"),
        ("lm_head", "/lm_head"),
    ]
    # Each block is a list of sublayers: self-attention, (decoder) cross-attention, feed-forward.
    for stack, mlp_index in (("encoder", 1), ("decoder", 2)):
        ours, block = f"{stack}.layers.{{i}}", f"{stack}.block.{{i}}.layer"
        found += [
            (f"{stack}.relative_position_bias.embedding",
             f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias"),
            (f"{ours}.attention_norm", f"{block}.0.layer_norm"),
            *((f"{ours}.attention.{name}", f"{block}.0.SelfAttention.{short}") for name, short in _PROJECTIONS),
            (f"{ours}.mlp_norm", f"{block}.{mlp_index}.layer_norm"),
            (f"{ours}.mlp.down", f"{block}.{mlp_index}.DenseReluDense.wo"),
            (f"{stack}.final_norm", f"{stack}.final_layer_norm"),
        ]
        if config.gated_mlp:
            found += [(f"{ours}.mlp.gate", f"{block}.{mlp_index}.DenseReluDense.wi_0"),
                      (f"{ours}.mlp.up", f"{block}.{mlp_index}.DenseReluDense.wi_1")]
        else:
            found.append((f"{ours}.mlp.up", f"{block}.{mlp_index}.DenseReluDense.wi"))
    found.append(("decoder.layers.{i}.cross_attention_norm", "decoder.block.{i}.layer.1.layer_norm"))
    found += [(f"decoder.layers.{{i}}.cross_attention.{name}", f"decoder.block.{{i}}.layer.1.EncDecAttention.{short}")
              for name, short in _PROJECTIONS]
    return found


def _activation(projection: Any) -> tuple[str, bool]:
    """`feed_forward_proj` ("relu", "gated-gelu", ...) -> (activation, gated), as `T5Config` reads it."""
    parts = str(projection).split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise unsupported("feed_forward_proj", projection, "expected 'ACT' or 'gated-ACT'")
    name = parts[-1]
    gated = len(parts) == 2
    if gated and name == "gelu":
        name = "gelu_new"  # T5Config's backwards-compatible reading of "gated-gelu" (tanh GELU)
    return activation_from_hf(name, "feed_forward_proj"), gated


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a T5 or mT5 `config.json` written by any `transformers` release.

    Raises:
        NlpkitError: For `umt5`, and a `feed_forward_proj` that is not
            `ACT` or `gated-ACT`.
    """
    if model_type == "umt5":
        raise unsupported("model_type", model_type, "UMT5 gives every layer its own relative position bias; "
                          "nlpkit's T5 stacks share one, held by their first layer")
    mt5 = model_type == "mt5"
    activation, gated = _activation(hf.get("feed_forward_proj", "gated-gelu" if mt5 else "relu"))
    tied = hf.get("tie_word_embeddings", True)
    # MT5ForConditionalGeneration never rescales the decoder output before its head.
    scale = False if mt5 else hf.get("scale_decoder_outputs", tied is not False)
    vocab = hf.get("vocab_size", 250112 if mt5 else 32128)
    layers = 8 if mt5 else 6  # the configuration classes' defaults
    return make_config(
        kind="encoder-decoder",
        vocab_size=vocab,
        hidden_size=hf.get("d_model", 512),
        num_layers=hf.get("num_layers", layers),
        num_decoder_layers=hf.get("num_decoder_layers") or hf.get("num_layers", layers),
        num_heads=hf.get("num_heads", 6 if mt5 else 8),
        head_dim=hf.get("d_kv", 64),
        intermediate_size=hf.get("d_ff", 1024 if mt5 else 2048),
        max_positions=hf.get("n_positions", 512),  # unused by relative positions; kept for the round trip
        position_embedding="relative",
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        norm_position="pre",
        final_norm=True,
        activation=activation,
        gated_mlp=gated,
        attention_bias=False,
        attention_output_bias=False,
        mlp_bias=False,
        attention_scale=1.0,  # T5 folds the 1/sqrt(d) into its initialisation instead
        tie_word_embeddings=bool(tied),
        scale_lm_head_input=bool(scale),
        dropout=hf.get("dropout_rate", 0.1),
        attention_dropout=hf.get("dropout_rate", 0.1),
        pad_token_id=token_id(hf.get("pad_token_id", 0), vocab),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a T5 or mT5 checkpoint for `config`, readable before and after 5.0."""
    act = activation_to_hf(config.activation)
    if config.gated_mlp:
        act = "gated-gelu" if act == "gelu_new" else f"gated-{act}"
    hf: dict[str, Any] = {
        "model_type": model_type,
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "d_model": config.hidden_size,
        "d_kv": config.resolved_head_dim,
        "d_ff": config.intermediate_size,
        "num_layers": config.num_layers,
        "num_decoder_layers": config.resolved_num_decoder_layers,
        "num_heads": config.num_heads,
        "n_positions": config.max_positions,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": act,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dropout_rate": config.dropout,
        "pad_token_id": config.pad_token_id,
    }
    if model_type != "mt5":  # mT5 never rescales: a rescaled config reads back different and is refused
        hf["scale_decoder_outputs"] = config.scale_lm_head_input
    return hf
