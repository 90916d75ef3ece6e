"""A plugin that adds a checkpoint family: ``toybert``, a BERT under other names.

Its ``config.json`` spells BERT's fields its own way (``width`` for
``hidden_size``, ``depth`` for ``num_hidden_layers`` ...) and its weights sit
under other names (``blocks.0.q.weight`` for
``encoder.layer.0.attention.self.query.weight``). This module is the family
file as well as the plugin: the names a family offers (``ARCHITECTURES``,
``PREFIXES``, ``IGNORED``, ``config_from_hf``, ``config_to_hf``, ``rules``)
are defined below, and the hook registers the module itself.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import nlpkit
from nlpkit.backbones import BackboneConfig

MODEL_TYPES = ("toybert",)
ARCHITECTURES = {"toybert": "ToyBertModel"}
PREFIXES = ("toybert.",)  # where a head class of this made-up model would put the body
IGNORED: tuple[str, ...] = ()

# nlpkit module path -> toybert module path; `{i}` is a layer index.
_RULES = [
    ("embeddings.token", "tok"),
    ("embeddings.position", "pos"),
    ("embeddings.token_type", "seg"),
    ("embeddings.norm", "tok_norm"),
    ("layers.{i}.attention.query", "blocks.{i}.q"),
    ("layers.{i}.attention.key", "blocks.{i}.k"),
    ("layers.{i}.attention.value", "blocks.{i}.v"),
    ("layers.{i}.attention.output", "blocks.{i}.o"),
    ("layers.{i}.attention_norm", "blocks.{i}.attn_norm"),
    ("layers.{i}.mlp.up", "blocks.{i}.fc_in"),
    ("layers.{i}.mlp.down", "blocks.{i}.fc_out"),
    ("layers.{i}.mlp_norm", "blocks.{i}.ffn_norm"),
]
# config.json key -> BackboneConfig field, with BERT-base's values as defaults.
_FIELDS = {
    "vocab": ("vocab_size", 30522),
    "width": ("hidden_size", 768),
    "depth": ("num_layers", 12),
    "heads": ("num_heads", 12),
    "ffn": ("intermediate_size", 3072),
    "context": ("max_positions", 512),
    "segments": ("type_vocab_size", 2),
    "eps": ("norm_eps", 1e-12),
    "pad": ("pad_token_id", 0),
}


def rules(config: BackboneConfig) -> list[tuple[str, str]]:
    return _RULES


def config_from_hf(hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
    values = {field: hf.get(key, default) for key, (field, default) in _FIELDS.items()}
    # What BERT fixes and toybert never writes down: post-norm blocks, a normed embedding, GELU.
    return BackboneConfig(kind="encoder", position_embedding="learned", norm="layernorm", norm_position="post",
                          embedding_norm=True, final_norm=False, activation="gelu", **values)


def config_to_hf(config: BackboneConfig, model_type: str) -> dict[str, Any]:
    return {"model_type": model_type, **{key: getattr(config, field) for key, (field, _) in _FIELDS.items()}}


@nlpkit.hookimpl
def nlpkit_register_checkpoint_families():
    return {model_type: sys.modules[__name__] for model_type in MODEL_TYPES}
