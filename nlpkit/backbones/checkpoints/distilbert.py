"""DistilBERT checkpoints onto the `Encoder`.

References:
    - `transformers/models/distilbert/modeling_distilbert.py` and
      `configuration_distilbert.py`: BERT's post-norm layer under other names
      (`q_lin`, `sa_layer_norm`, `ffn.lin1`, ...), no token types, and a
      LayerNorm epsilon fixed at 1e-12 rather than read from the config.
    - Sanh et al. 2019 (https://arxiv.org/abs/1910.01108).

`sinusoidal_pos_embds: true` only changes how the position table was
initialised; the table is stored in the weights either way, so it loads as
a learned table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nlpkit.backbones.checkpoints._common import HeadShape, Rule, activation_from_hf, activation_to_hf, make_config
from nlpkit.backbones.config import BackboneConfig

__all__ = ["ARCHITECTURES", "HEADS", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf", "config_to_hf", "rules"]

MODEL_TYPES = ("distilbert",)
ARCHITECTURES = {"distilbert": "DistilBertModel"}
PREFIXES = ("distilbert.",)
HEADS = {"distilbert": {
    # `DistilBertForSequenceClassification`: pre_classifier, ReLU, dropout, classifier.
    "sequence_classification": HeadShape("DistilBertForSequenceClassification", "classifier", "pre_classifier", "relu"),
    "token_classification": HeadShape("DistilBertForTokenClassification", "classifier"),
    "question_answering": HeadShape("DistilBertForQuestionAnswering", "qa_outputs"),
}}
IGNORED = (r"(.*\.)?embeddings\.position_ids",)

_LAYER_NORM_EPS = 1e-12  # hard-coded in `modeling_distilbert.py`

_RULES: list[Rule] = [
    ("embeddings.token", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
    ("layers.{i}.attention.query", "transformer.layer.{i}.attention.q_lin"),
    ("layers.{i}.attention.key", "transformer.layer.{i}.attention.k_lin"),
    ("layers.{i}.attention.value", "transformer.layer.{i}.attention.v_lin"),
    ("layers.{i}.attention.output", "transformer.layer.{i}.attention.out_lin"),
    ("layers.{i}.attention_norm", "transformer.layer.{i}.sa_layer_norm"),
    ("layers.{i}.mlp.up", "transformer.layer.{i}.ffn.lin1"),
    ("layers.{i}.mlp.down", "transformer.layer.{i}.ffn.lin2"),
    ("layers.{i}.mlp_norm", "transformer.layer.{i}.output_layer_norm"),
]


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for every DistilBERT config)."""
    return _RULES


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a DistilBERT `config.json`."""
    return make_config(
        kind="encoder",
        vocab_size=hf.get("vocab_size", 30522),
        hidden_size=hf.get("dim", 768),
        num_layers=hf.get("n_layers", 6),
        num_heads=hf.get("n_heads", 12),
        intermediate_size=hf.get("hidden_dim", 3072),
        max_positions=hf.get("max_position_embeddings", 512),
        position_embedding="learned",
        type_vocab_size=0,
        norm="layernorm",
        norm_eps=_LAYER_NORM_EPS,
        norm_position="post",
        embedding_norm=True,
        final_norm=False,
        activation=activation_from_hf(hf.get("activation", "gelu"), "activation"),
        dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.1),
        pad_token_id=hf.get("pad_token_id", 0),
    )


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a DistilBERT checkpoint for `config`."""
    return {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "dim": config.hidden_size,
        "n_layers": config.num_layers,
        "n_heads": config.num_heads,
        "hidden_dim": config.intermediate_size,
        "max_position_embeddings": config.max_positions,
        "sinusoidal_pos_embds": False,
        "activation": activation_to_hf(config.activation),
        "dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
    }
