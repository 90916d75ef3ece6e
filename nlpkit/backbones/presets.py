"""Named builders of backbone configs for training from scratch (torchtune style).

Three sizes per kind:

| size  | layers | hidden | heads | feed-forward | scale of                          |
| ----- | ------ | ------ | ----- | ------------ | --------------------------------- |
| tiny  | 2      | 128    | 2     | 512          | tests, quickstarts                |
| small | 4      | 256    | 4     | 1024         | laptop experiments                |
| base  | 12     | 768    | 12    | 3072         | BERT-base / GPT-2 small / BART-base |

Settings favour stable from-scratch training over reproducing one family:
pre-norm with a final norm everywhere; encoders use LayerNorm, GELU and
learned positions; decoders are Llama-style (RMSNorm, rotary, SwiGLU, tied
head); encoder-decoders use sinusoidal positions with scaled embeddings
(Vaswani et al.) and a head tied to the shared token table.

`vocab_size` is a placeholder: recipes replace it with the trained
tokenizer's size via `dataclasses.replace(config, vocab_size=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from nlpkit.backbones.config import BackboneConfig

__all__ = [
    "PRESETS",
    "decoder_base",
    "decoder_small",
    "decoder_tiny",
    "encoder_base",
    "encoder_decoder_base",
    "encoder_decoder_small",
    "encoder_decoder_tiny",
    "encoder_small",
    "encoder_tiny",
]

class _Size(TypedDict):
    """The fields a size sets (a TypedDict, so that `**_SIZES[size]` is checked field by field)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int


_SIZES: dict[str, _Size] = {
    "tiny": _Size(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "small": _Size(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "base": _Size(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}


def _encoder(size: str) -> BackboneConfig:
    return BackboneConfig(
        kind="encoder",
        **_SIZES[size],
        max_positions=512,
        position_embedding="learned",
        type_vocab_size=2,  # sentence pairs, as BERT
        norm="layernorm",
        norm_position="pre",
        final_norm=True,
        activation="gelu",
    )


def _decoder(size: str) -> BackboneConfig:
    return BackboneConfig(
        kind="decoder",
        **_SIZES[size],
        max_positions=1024,
        position_embedding="rotary",
        norm="rmsnorm",
        norm_position="pre",
        final_norm=True,
        activation="silu",
        gated_mlp=True,
        attention_bias=False,
        attention_output_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
    )


def _encoder_decoder(size: str) -> BackboneConfig:
    return BackboneConfig(
        kind="encoder-decoder",
        **_SIZES[size],
        max_positions=512,
        position_embedding="sinusoidal",
        scale_embedding=True,
        norm="layernorm",
        norm_position="pre",
        final_norm=True,
        activation="gelu",
        tie_word_embeddings=True,
    )


def encoder_tiny() -> BackboneConfig:
    """Pre-norm encoder: 2 layers, hidden 128, 2 heads."""
    return _encoder("tiny")


def encoder_small() -> BackboneConfig:
    """Pre-norm encoder: 4 layers, hidden 256, 4 heads."""
    return _encoder("small")


def encoder_base() -> BackboneConfig:
    """Pre-norm encoder at BERT-base scale: 12 layers, hidden 768, 12 heads."""
    return _encoder("base")


def decoder_tiny() -> BackboneConfig:
    """Llama-style decoder: 2 layers, hidden 128, 2 heads."""
    return _decoder("tiny")


def decoder_small() -> BackboneConfig:
    """Llama-style decoder: 4 layers, hidden 256, 4 heads."""
    return _decoder("small")


def decoder_base() -> BackboneConfig:
    """Llama-style decoder at GPT-2-small scale: 12 layers, hidden 768, 12 heads."""
    return _decoder("base")


def encoder_decoder_tiny() -> BackboneConfig:
    """Pre-norm encoder-decoder: 2 + 2 layers, hidden 128, 2 heads."""
    return _encoder_decoder("tiny")


def encoder_decoder_small() -> BackboneConfig:
    """Pre-norm encoder-decoder: 4 + 4 layers, hidden 256, 4 heads."""
    return _encoder_decoder("small")


def encoder_decoder_base() -> BackboneConfig:
    """Pre-norm encoder-decoder at BART-base scale: 12 + 12 layers, hidden 768, 12 heads."""
    return _encoder_decoder("base")


PRESETS: dict[str, Callable[[], BackboneConfig]] = {
    "encoder-tiny": encoder_tiny,
    "encoder-small": encoder_small,
    "encoder-base": encoder_base,
    "decoder-tiny": decoder_tiny,
    "decoder-small": decoder_small,
    "decoder-base": decoder_base,
    "encoder-decoder-tiny": encoder_decoder_tiny,
    "encoder-decoder-small": encoder_decoder_small,
    "encoder-decoder-base": encoder_decoder_base,
}
