"""The translation head as ``transformers`` sequence-to-sequence LM classes (export).

The task adds no weights of its own: the backbone's LM head writes the
target, and the checkpoint families already save it under the names of
their generation classes (``BartForConditionalGeneration``, ``MarianMTModel``,
``T5ForConditionalGeneration``, ``MT5ForConditionalGeneration``).
"""

from __future__ import annotations

from typing import Any

from nlpkit.tasks import HFHead

_ARCHITECTURES = {"bart": "BartForConditionalGeneration", "marian": "MarianMTModel", "t5": "T5ForConditionalGeneration",
                  "mt5": "MT5ForConditionalGeneration"}


def seq2seq_lm_head(family: str, generation_defaults: dict[str, Any]) -> HFHead | None:
    """The HF class of a translation model of ``family``, with its decoding token ids in ``config.json``."""
    if family not in _ARCHITECTURES:
        return None
    keys = ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
    config = {key: generation_defaults[key] for key in keys if generation_defaults.get(key) is not None}
    return HFHead(_ARCHITECTURES[family], {}, config)
