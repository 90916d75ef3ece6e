"""The three Transformer backbones: encoder, decoder and encoder-decoder.

Plain torch modules configured by one `BackboneConfig`. They know nothing of
tasks, training, recipes or files on disk; `checkpoints/` maps pretrained
weights onto them.

Example:
    >>> from nlpkit.backbones import PRESETS, build_backbone
    >>> backbone = build_backbone(PRESETS["encoder-tiny"]())
"""

from __future__ import annotations

from torch import nn

from nlpkit.backbones.config import BackboneConfig
from nlpkit.backbones.decoder import Decoder
from nlpkit.backbones.encoder import Encoder
from nlpkit.backbones.encoder_decoder import EncoderDecoder
from nlpkit.backbones.cache import BackboneOutput, KVCache
from nlpkit.backbones.checkpoints import from_pretrained
from nlpkit.backbones.cpu import pack_for_cpu_inference
from nlpkit.backbones.presets import PRESETS

__all__ = [
    "KINDS",
    "PRESETS",
    "BackboneConfig",
    "BackboneOutput",
    "Decoder",
    "Encoder",
    "EncoderDecoder",
    "KVCache",
    "build_backbone",
    "from_pretrained",
    "pack_for_cpu_inference",
]

KINDS: dict[str, type[nn.Module]] = {
    "encoder": Encoder,
    "decoder": Decoder,
    "encoder-decoder": EncoderDecoder,
}


def build_backbone(config: BackboneConfig) -> nn.Module:
    """Builds the backbone module for `config.kind`, randomly initialised.

    Args:
        config: The backbone config.

    Returns:
        An `Encoder`, `Decoder` or `EncoderDecoder`.

    Raises:
        ValueError: If `config.kind` is not a known kind.
    """
    if config.kind not in KINDS:
        raise ValueError(f"unknown backbone kind {config.kind!r}; known: {', '.join(KINDS)}")
    return KINDS[config.kind](config)
