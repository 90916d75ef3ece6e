"""BART and Marian checkpoints onto the `EncoderDecoder`.

References:
    - `transformers/models/bart/modeling_bart.py` and `configuration_bart.py`
      (post-norm, learned positions offset by 2, `layernorm_embedding`,
      `final_logits_bias`).
    - `transformers/models/marian/modeling_marian.py`: the same layer with
      fixed sinusoidal positions (sines, then cosines), no embedding norm,
      usually scaled embeddings and the `swish` activation.

Both keep one token table (`shared`) that the encoder, the decoder and the
LM head share; the stacks' `embed_tokens` entries are tied copies of it, and
Marian's stored `embed_positions` are the fixed sinusoids the backbone
rebuilds itself. `final_logits_bias` is stored `(1, vocab)`; the backbone
keeps it flat.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

MODEL_TYPES = ("bart", "marian")
ARCHITECTURES = {"bart": "BartForConditionalGeneration", "marian": "MarianMTModel"}
PREFIXES = ("model.",)
IGNORED = (r"(.*\.)?(encoder|decoder)\.embed_tokens\.weight", r"(.*\.)?(encoder|decoder)\.embed_positions\.weight")

_RULES: list[Rule] = [
    ("token_embedding", "shared"),
    # Fallbacks for files that kept a tied copy instead of `shared`.
    ("token_embedding", "encoder.embed_tokens"),
    ("token_embedding", "decoder.embed_tokens"),
    ("{s}.embeddings.position", "{s}.embed_positions"),
    ("{s}.embeddings.norm", "{s}.layernorm_embedding"),
    ("{s}.layers.{i}.attention.query", "{s}.layers.{i}.self_attn.q_proj"),
    ("{s}.layers.{i}.attention.key", "{s}.layers.{i}.self_attn.k_proj"),
    ("{s}.layers.{i}.attention.value", "{s}.layers.{i}.self_attn.v_proj"),
    ("{s}.layers.{i}.attention.output", "{s}.layers.{i}.self_attn.out_proj"),
    ("{s}.layers.{i}.attention_norm", "{s}.layers.{i}.self_attn_layer_norm"),
    ("{s}.layers.{i}.cross_attention.query", "{s}.layers.{i}.encoder_attn.q_proj"),
    ("{s}.layers.{i}.cross_attention.key", "{s}.layers.{i}.encoder_attn.k_proj"),
    ("{s}.layers.{i}.cross_attention.value", "{s}.layers.{i}.encoder_attn.v_proj"),
    ("{s}.layers.{i}.cross_attention.output", "{s}.layers.{i}.encoder_attn.out_proj"),
    ("{s}.layers.{i}.cross_attention_norm", "{s}.layers.{i}.encoder_attn_layer_norm"),
    ("{s}.layers.{i}.mlp.up", "{s}.layers.{i}.fc1"),
    ("{s}.layers.{i}.mlp.down", "{s}.layers.{i}.fc2"),
    ("{s}.layers.{i}.mlp_norm", "{s}.layers.{i}.final_layer_norm"),
    ("lm_head", "/lm_head"),
    ("final_logits_bias", "/final_logits_bias"),
]


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for BART and Marian; Marian has no position or norm weights)."""
    return _RULES


def state_from_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Flattens `final_logits_bias` from `(1, vocab)` to `(vocab,)`."""
    return {key: value.flatten() if key == "final_logits_bias" else value for key, value in state.items()}


def state_to_hf(state: dict[str, Tensor], config: BackboneConfig) -> dict[str, Tensor]:
    """Stores `final_logits_bias` as `(1, vocab)`, as `transformers` registers it."""
    return {key: value[None] if key == "final_logits_bias" else value for key, value in state.items()}


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a BART or Marian `config.json`.

    The encoder and decoder may differ in layers, heads and feed-forward
    width (`num_decoder_layers`, `num_decoder_heads`,
    `decoder_intermediate_size`).

    Raises:
        NlpkitError: When (Marian) the stacks do not share one vocabulary.
    """
    marian = model_type == "marian"
    vocab = hf.get("vocab_size", 58101 if marian else 50265)
    if marian:
        if not hf.get("share_encoder_decoder_embeddings", True):
            raise unsupported("share_encoder_decoder_embeddings", False, "one token table serves both stacks")
        if hf.get("decoder_vocab_size") not in (None, vocab):
            raise unsupported("decoder_vocab_size", hf["decoder_vocab_size"], f"must equal vocab_size ({vocab})")
    return make_config(
        kind="encoder-decoder",
        vocab_size=vocab,
        hidden_size=hf.get("d_model", 1024),
        num_layers=hf.get("encoder_layers", 12),
        num_decoder_layers=hf.get("decoder_layers", 12),
        num_heads=hf.get("encoder_attention_heads", 16),
        num_decoder_heads=hf.get("decoder_attention_heads", 16),
        intermediate_size=hf.get("encoder_ffn_dim", 4096),
        decoder_intermediate_size=hf.get("decoder_ffn_dim", 4096),
        max_positions=hf.get("max_position_embeddings", 1024),
        position_embedding="sinusoidal" if marian else "learned",
        position_offset=0 if marian else 2,  # BartLearnedPositionalEmbedding's fixed offset
        norm="layernorm",
        norm_eps=1e-5,  # nn.LayerNorm's default, which both families use
        norm_position="post",
        embedding_norm=not marian,
        final_norm=False,
        scale_embedding=bool(hf.get("scale_embedding", False)),
        activation=activation_from_hf(hf.get("activation_function", "gelu"), "activation_function"),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        lm_head_bias=True,
        dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.0),
        pad_token_id=token_id(hf.get("pad_token_id", 58100 if marian else 1), vocab),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a BART or Marian checkpoint for `config`."""
    hf: dict[str, Any] = {
        "model_type": model_type,
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "d_model": config.hidden_size,
        "encoder_layers": config.num_layers,
        "decoder_layers": config.resolved_num_decoder_layers,
        "encoder_attention_heads": config.num_heads,
        "decoder_attention_heads": config.resolved_num_decoder_heads,
        "encoder_ffn_dim": config.intermediate_size,
        "decoder_ffn_dim": config.resolved_decoder_intermediate_size,
        "max_position_embeddings": config.max_positions,
        "scale_embedding": config.scale_embedding,
        "activation_function": activation_to_hf(config.activation),
        "tie_word_embeddings": config.tie_word_embeddings,
        "dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": 0.0,
        "pad_token_id": config.pad_token_id,
    }
    if model_type == "marian":
        hf.update(share_encoder_decoder_embeddings=True, decoder_vocab_size=config.vocab_size)
    return hf
