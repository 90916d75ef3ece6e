"""DeBERTa-v2, DeBERTa-v3 and mDeBERTa checkpoints (`model_type` `deberta-v2`) onto the `Encoder`.

References:
    - `transformers/models/deberta_v2/modeling_deberta_v2.py` and
      `configuration_deberta_v2.py` (`DebertaV2Model`): post-norm BERT-like
      layers, embeddings multiplied by the attention mask, disentangled
      attention (`DisentangledSelfAttention`) over relative embeddings
      shared by all layers (`encoder.rel_embeddings`, optionally
      normalised by `encoder.LayerNorm`).
    - He et al. 2021, DeBERTa (https://arxiv.org/abs/2006.03654); v3 (He et
      al. 2021, https://arxiv.org/abs/2111.09543) drops the absolute
      positions (`position_biased_input=False`), buckets the distances
      (`position_buckets`) and reuses the content projections for the
      positions (`share_att_key`).

Head classes (`DebertaV2ForSequenceClassification`, ...) put the body under
`deberta.`; their heads come back as extra state (`HEADS` describes them). The
weights map one to one, so the family needs no state hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nlpkit.backbones.checkpoints._common import (
    HeadShape,
    Rule,
    activation_from_hf,
    activation_to_hf,
    make_config,
    unsupported,
)
from nlpkit.backbones.config import BackboneConfig

__all__ = ["ARCHITECTURES", "HEADS", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf", "config_to_hf",
           "rules"]

MODEL_TYPES = ("deberta-v2",)
ARCHITECTURES = {"deberta-v2": "DebertaV2Model"}
PREFIXES = ("deberta.",)
IGNORED = (
    r"embeddings\.position_ids",  # a buffer that older releases saved
    # v3 folders may still hold an unused absolute table; transformers skips it too
    # (`_keys_to_ignore_on_load_unexpected`).
    r"embeddings\.position_embeddings\.weight",
)

# The task-head classes. `ContextPooler` (dropout, `pooler.dense`, `pooler_hidden_act`) on the first token,
# then dropout and `classifier`; the token head is dropout and `classifier`; QA's `qa_outputs` has no dropout.
HEADS = {"deberta-v2": {
    "sequence_classification": HeadShape("DebertaV2ForSequenceClassification", "classifier", "pooler.dense", "gelu",
                                         config={"pooler_hidden_act": "gelu"}),
    "token_classification": HeadShape("DebertaV2ForTokenClassification", "classifier"),
    "question_answering": HeadShape("DebertaV2ForQuestionAnswering", "qa_outputs"),
}}

_RULES: list[Rule] = [
    ("embeddings.token", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.token_type", "embeddings.token_type_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
    ("relative_embeddings.embedding", "encoder.rel_embeddings"),
    ("relative_embeddings.norm", "encoder.LayerNorm"),
    ("layers.{i}.attention.query", "encoder.layer.{i}.attention.self.query_proj"),
    ("layers.{i}.attention.key", "encoder.layer.{i}.attention.self.key_proj"),
    ("layers.{i}.attention.value", "encoder.layer.{i}.attention.self.value_proj"),
    ("layers.{i}.attention.position_key", "encoder.layer.{i}.attention.self.pos_key_proj"),
    ("layers.{i}.attention.position_query", "encoder.layer.{i}.attention.self.pos_query_proj"),
    ("layers.{i}.attention.output", "encoder.layer.{i}.attention.output.dense"),
    ("layers.{i}.attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    ("layers.{i}.mlp.up", "encoder.layer.{i}.intermediate.dense"),
    ("layers.{i}.mlp.down", "encoder.layer.{i}.output.dense"),
    ("layers.{i}.mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
]


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for every DeBERTa-v2 config)."""
    return _RULES


def _terms(hf: Mapping[str, Any]) -> list[str]:
    """`pos_att_type` as a list: older folders spell it `"p2c|c2p"`, as transformers still reads."""
    value = hf.get("pos_att_type")
    if value is None:
        return []
    terms = [term.strip() for term in value.lower().split("|")] if isinstance(value, str) else list(value)
    for term in terms:
        if term not in ("c2p", "p2c"):
            raise unsupported("pos_att_type", value, "only the c2p and p2c terms of DeBERTa-v2 exist")
    return terms


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a DeBERTa-v2 / v3 `config.json`.

    Raises:
        NlpkitError: On the convolution layer (`conv_kernel_size`), a
            factorised embedding (`embedding_size != hidden_size`), or
            relative attention without any position term.
    """
    hidden = hf.get("hidden_size", 1536)
    if hf.get("conv_kernel_size", 0):
        raise unsupported("conv_kernel_size", hf["conv_kernel_size"], "the convolution layer of DeBERTa-v2 xlarge "
                          "models is not implemented")
    if hf.get("embedding_size", hidden) != hidden:
        raise unsupported("embedding_size", hf["embedding_size"], f"embeddings narrower than hidden_size ({hidden}) "
                          "need embed_proj, which is not implemented")
    max_positions = hf.get("max_position_embeddings", 512)
    relative = bool(hf.get("relative_attention", False))
    terms = _terms(hf) if relative else []
    if relative and not terms:
        raise unsupported("pos_att_type", hf.get("pos_att_type"), "relative_attention needs c2p and/or p2c terms")
    # transformers' defaults: no buckets below 1, and max_relative_positions < 1 means max_position_embeddings.
    buckets = hf.get("position_buckets", -1)
    max_relative = hf.get("max_relative_positions", -1)
    norm_rel_ebd = [part.strip() for part in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
    return make_config(
        kind="encoder",
        vocab_size=hf.get("vocab_size", 128100),
        hidden_size=hidden,
        num_layers=hf.get("num_hidden_layers", 24),
        num_heads=hf.get("num_attention_heads", 24),
        intermediate_size=hf.get("intermediate_size", 6144),
        max_positions=max_positions,
        position_embedding="learned" if hf.get("position_biased_input", True) else "none",
        disentangled_attention=terms or None,
        max_relative_positions=(max_relative if max_relative >= 1 else max_positions) if relative else None,
        relative_position_buckets=buckets if relative and buckets > 0 else None,
        shared_position_projections=relative and bool(hf.get("share_att_key", False)),
        relative_embedding_norm=relative and "layer_norm" in norm_rel_ebd,
        mask_embeddings=True,
        type_vocab_size=hf.get("type_vocab_size", 0),
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-7),
        norm_position="post",
        embedding_norm=True,
        final_norm=False,
        activation=activation_from_hf(hf.get("hidden_act", "gelu"), "hidden_act"),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=hf.get("pad_token_id", 0),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a DeBERTa-v2 checkpoint for `config`."""
    relative = config.disentangled_attention is not None
    return {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": activation_to_hf(config.activation),
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_positions,
        "position_biased_input": config.position_embedding == "learned",
        "relative_attention": relative,
        "pos_att_type": list(config.disentangled_attention or []),
        "max_relative_positions": config.max_relative_positions if relative and config.max_relative_positions else -1,
        "position_buckets": config.relative_position_buckets or -1,
        "share_att_key": config.shared_position_projections,
        "norm_rel_ebd": "layer_norm" if config.relative_embedding_norm else "none",
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.norm_eps,
        "pad_token_id": config.pad_token_id,
    }
