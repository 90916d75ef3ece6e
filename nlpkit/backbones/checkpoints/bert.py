"""BERT, RoBERTa, XLM-RoBERTa and ELECTRA checkpoints onto the `Encoder`.

References:
    - `transformers/models/bert/modeling_bert.py` and `configuration_bert.py`
      (`BertModel`: post-norm, learned absolute positions, token types,
      embedding LayerNorm).
    - `transformers/models/roberta/modeling_roberta.py`: the same weights;
      positions count from `pad_token_id + 1` and skip padding
      (`create_position_ids_from_input_ids`), so the table has
      `pad_token_id + 1` rows more than there are usable positions.
      `xlm_roberta/modeling_xlm_roberta.py` is RoBERTa with another
      (SentencePiece) vocabulary.
    - `transformers/models/electra/modeling_electra.py`: a BERT whose
      embeddings may be narrower than the layers (`embedding_size`), mapped
      up by `embeddings_project` after the embedding norm; discriminator
      folders (`ElectraForPreTraining`) hold the body under `electra.`.

Head classes (`BertForSequenceClassification`, `RobertaForMaskedLM`, ...)
put the body under `bert.` / `roberta.` / `electra.`; their heads, and the
base model's pooler, are not part of the backbone and come back as extra
state. `HEADS` describes the task-head classes' layouts for the task plugins.
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
from nlpkit.errors import NlpkitError

__all__ = ["ARCHITECTURES", "HEADS", "HEAD_CLASS_PREFIXES", "IGNORED", "MODEL_TYPES", "PREFIXES", "config_from_hf",
           "config_to_hf", "rules"]

MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
ARCHITECTURES = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel",
                 "electra": "ElectraModel"}
PREFIXES = ("bert.", "roberta.", "electra.")
# The base model's attribute in each type's head classes (XLM-R's classes subclass RoBERTa's).
HEAD_CLASS_PREFIXES = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta.", "electra": "electra."}
# The config classes' defaults where ELECTRA's (the small discriminator's) differ from BERT's.
_BERT_DEFAULTS = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
_ELECTRA_DEFAULTS = {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024, "embedding_size": 128}
_ROBERTA_POSITIONS = ("roberta", "xlm-roberta")  # positions counted from pad_token_id + 1


def _heads(stem: str, classification: HeadShape) -> dict[str, HeadShape]:
    return {
        "sequence_classification": classification,
        "token_classification": HeadShape(f"{stem}ForTokenClassification", "classifier", transform=None),
        "question_answering": HeadShape(f"{stem}ForQuestionAnswering", "qa_outputs", transform=None),
    }


# BERT pools with its base model's `pooler` (tanh); RoBERTa's head has its own tanh `classifier.dense`,
# ELECTRA's the same layer with GELU (`ElectraClassificationHead`).
HEADS = {
    "bert": _heads("Bert", HeadShape("BertForSequenceClassification", "classifier", "pooler.dense", "tanh",
                                     inside_base_model=("pooler.dense",))),
    "roberta": _heads("Roberta", HeadShape("RobertaForSequenceClassification", "classifier.out_proj",
                                           "classifier.dense", "tanh")),
    "xlm-roberta": _heads("XLMRoberta", HeadShape("XLMRobertaForSequenceClassification", "classifier.out_proj",
                                                  "classifier.dense", "tanh")),
    "electra": _heads("Electra", HeadShape("ElectraForSequenceClassification", "classifier.out_proj",
                                           "classifier.dense", "gelu")),
}
IGNORED = (r"(.*\.)?embeddings\.position_ids",)  # a buffer that releases before 4.31 saved

_RULES: list[Rule] = [
    ("embeddings.token", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.token_type", "embeddings.token_type_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
    ("embeddings.projection", "embeddings_project"),  # ELECTRA, when embedding_size != hidden_size
    ("layers.{i}.attention.query", "encoder.layer.{i}.attention.self.query"),
    ("layers.{i}.attention.key", "encoder.layer.{i}.attention.self.key"),
    ("layers.{i}.attention.value", "encoder.layer.{i}.attention.self.value"),
    ("layers.{i}.attention.output", "encoder.layer.{i}.attention.output.dense"),
    ("layers.{i}.attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    ("layers.{i}.mlp.up", "encoder.layer.{i}.intermediate.dense"),
    ("layers.{i}.mlp.down", "encoder.layer.{i}.output.dense"),
    ("layers.{i}.mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
]


def rules(config: BackboneConfig) -> list[Rule]:
    """Name rules (the same for every config of these families)."""
    return _RULES


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    """Translates a BERT, RoBERTa, XLM-R or ELECTRA `config.json`.

    Raises:
        NlpkitError: On relative position embeddings, decoder use, or
            cross-attention, which the encoder does not implement.
    """
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise unsupported("position_embedding_type", hf["position_embedding_type"], "only 'absolute' positions")
    for flag in ("is_decoder", "add_cross_attention"):
        if hf.get(flag):
            raise unsupported(flag, hf[flag], "the encoder is bidirectional and has no cross-attention")
    defaults = _ELECTRA_DEFAULTS if model_type == "electra" else _BERT_DEFAULTS
    roberta = model_type in _ROBERTA_POSITIONS
    pad = hf.get("pad_token_id", 1 if roberta else 0)
    if roberta and pad is None:
        raise NlpkitError("pad_token_id is needed by RoBERTa, whose positions count from pad_token_id + 1")
    offset = pad + 1 if roberta else 0  # RoBERTa: the first real token sits at padding_idx + 1
    return make_config(
        kind="encoder",
        vocab_size=hf.get("vocab_size", 30522),
        hidden_size=hf.get("hidden_size", defaults["hidden_size"]),
        num_layers=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", defaults["num_attention_heads"]),
        intermediate_size=hf.get("intermediate_size", defaults["intermediate_size"]),
        embedding_size=_embedding_size(hf) if model_type == "electra" else None,
        max_positions=hf.get("max_position_embeddings", 512) - offset,
        position_embedding="learned",
        position_offset=offset,
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_position="post",
        embedding_norm=True,
        final_norm=False,
        activation=activation_from_hf(hf.get("hidden_act", "gelu"), "hidden_act"),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=pad,
    )


def _embedding_size(hf: Mapping[str, Any]) -> int | None:
    """ELECTRA's embedding width, None where it is the hidden width (no projection then)."""
    size = hf.get("embedding_size", _ELECTRA_DEFAULTS["embedding_size"])
    return None if size == hf.get("hidden_size", _ELECTRA_DEFAULTS["hidden_size"]) else size


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    """The `config.json` fields of a checkpoint of these families for `config`."""
    electra = {"embedding_size": config.resolved_embedding_size} if model_type == "electra" else {}
    return {**electra,
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": activation_to_hf(config.activation),
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_positions + config.position_offset,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
    }
