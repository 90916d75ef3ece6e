"""How a sentence-transformers folder turns token states into a sentence embedding.

sentence-transformers stores its pipeline beside the Hugging Face files:
``modules.json`` lists the modules (Transformer, Pooling, Normalize ...),
``1_Pooling/config.json`` (the Pooling module's path) says which pooling, and
``sentence_bert_config.json`` the maximum length. Without ``modules.json`` a
folder is a plain encoder: mean pooling, no normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nlpkit.errors import NlpkitError

__all__ = ["SentencePooling", "read_sentence_pooling"]

_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_KNOWN_MODULES = {"sentence_transformers.models.Transformer", _POOLING, _NORMALIZE}
PoolingMode = Literal["cls", "mean", "max", "mean_sqrt_len"]
# Pooling config flags -> mode, in sentence-transformers' order of precedence for a single mode.
_MODES: dict[str, PoolingMode] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}


@dataclass
class SentencePooling:
    """Attributes: mode (cls / mean / max / mean_sqrt_len), normalize (L2), max_length (or None)."""

    mode: PoolingMode = "mean"
    normalize: bool = False
    max_length: int | None = None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise NlpkitError(f"{path}: cannot read ({error})") from None


def read_sentence_pooling(folder: str | Path) -> SentencePooling:
    """The folder's sentence-embedding recipe (mean pooling, unnormalised, when it has none).

    Raises:
        NlpkitError: a module nlpkit cannot reproduce (say, a Dense projection)
            or several pooling modes at once, rather than a silently different embedding.
    """
    folder = Path(folder)
    modules_file = folder / "modules.json"
    pooling = SentencePooling()
    settings = folder / "sentence_bert_config.json"
    if settings.is_file():
        pooling.max_length = _read(settings).get("max_seq_length")
    if not modules_file.is_file():
        return pooling
    for module in _read(modules_file):
        kind = module.get("type")
        if kind not in _KNOWN_MODULES:
            raise NlpkitError(f"{modules_file}: module {kind} is not supported (nlpkit embeds with Transformer, "
                              "Pooling and Normalize only)")
        if kind == _NORMALIZE:
            pooling.normalize = True
        elif kind == _POOLING:
            config = _read(folder / module.get("path", "") / "config.json")
            modes = [mode for flag, mode in _MODES.items() if config.get(flag)]
            other = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in _MODES]
            if len(modes) != 1 or other:
                raise NlpkitError(f"{folder / module.get('path', '')}/config.json: exactly one of "
                                  f"{', '.join(_MODES)} is supported, found {modes + other}")
            pooling.mode = modes[0]
    return pooling
