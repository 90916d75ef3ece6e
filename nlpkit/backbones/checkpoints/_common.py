"""Shared machinery of the checkpoint families: folders, weight files, name rules.

A family file (`bert.py`, `gpt2.py`, ...) holds only what differs between
families: the weight-name rules and the `config.json` translation. This file
holds what they share:

- reading a folder: `config.json`, then `model.safetensors`, sharded
  safetensors (`model.safetensors.index.json` and its `weight_map`), or
  `pytorch_model.bin` (also sharded), in the order `transformers` prefers
  them (`transformers/modeling_utils.py`, `_get_resolved_checkpoint_files`);
- name rules: pairs of dotted module-path templates, nlpkit on the left and
  Hugging Face on the right, with `{placeholders}` that stand for one dotted
  component each (`("layers.{i}.mlp.up", "encoder.layer.{i}.intermediate.dense")`).
  One table serves both ways (loading looks each backbone weight's names up
  in the file, saving writes it under its first name), so loading and
  saving cannot drift apart. A right-hand side starting with `/` names a top-level weight
  of a head class (`/lm_head`), which sits outside the base model's prefix;
- the translation of activation names shared by several families;
- `HeadShape`, the layout of a family's `transformers` task-head classes
  that the family files' `HEADS` tables describe.

Every user-facing failure raises `NlpkitError` with a one-line message that
names the file or the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from nlpkit.backbones.config import Activation, BackboneConfig
from nlpkit.errors import NlpkitError

__all__ = [
    "CONFIG_FILE",
    "Family",
    "HeadShape",
    "Rule",
    "WEIGHTS_FILE",
    "activation_from_hf",
    "activation_to_hf",
    "check_folder",
    "decoder_shape_to_hf",
    "fingerprint",
    "hf_names",
    "make_config",
    "read_config",
    "read_weights",
    "token_id",
    "unsupported",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_WEIGHT_SOURCES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")

Rule = tuple[str, str]

@dataclass(frozen=True)
class HeadShape:
    """How one `transformers` task-head class of a family lays out its head.

    Every encoder head class in `transformers` is an optional transform (a
    Linear, an activation, an optional norm) followed by dropout and an output
    Linear; the families differ in names and activations (BERT's
    `pooler.dense` + tanh, RoBERTa's `classifier.dense` + tanh, ELECTRA's
    `classifier.dense` + GELU, DeBERTa's `pooler.dense` + GELU, ModernBERT's
    `head.dense` + GELU + `head.norm`). The task plugins build their heads
    from this shape, so an exported run loads into the family's class with
    the same outputs, and a pretrained checkpoint's head starts the task's.

    Attributes:
        architecture: The head class written to `architectures`
            (`BertForSequenceClassification`).
        output: The output Linear's name without the base-model prefix
            (`classifier`, `classifier.out_proj`, `qa_outputs`).
        transform: The Linear before the activation (`pooler.dense`), or None
            for a head that is dropout and the output only.
        activation: The transform's activation, an `activation_to_hf` name or
            `tanh`.
        transform_bias: Whether that Linear has a bias (not ModernBERT's by default).
        norm: A LayerNorm after the activation (`head.norm`), or None.
        norm_bias: Whether that norm has a bias.
        poolings: For sequence classification, the poolings the class offers
            (`cls`: the first token; `mean`: the mean over real tokens).
        config: `config.json` entries that make the class build this layout
            (the activation's key, the pooling's key: `{pooling}` is replaced
            by the pooling used).
        inside_base_model: The head's layers the class keeps inside its base
            model (BERT's `pooler.dense` is `bert.pooler.dense`); the others
            sit at the class's top level.
    """

    architecture: str
    output: str
    transform: str | None = None
    activation: str = "tanh"
    _: KW_ONLY
    transform_bias: bool = True
    norm: str | None = None
    norm_bias: bool = True
    poolings: tuple[str, ...] = ("cls",)
    config: Mapping[str, Any] = field(default_factory=dict)
    inside_base_model: tuple[str, ...] = ()


class Family(Protocol):
    """What a family file offers: each is a plain module with these names.

    The constants are read-only properties here only so that a module's
    `tuple[str, str]` satisfies `tuple[str, ...]` for mypy. A family may also
    define `state_from_hf(state, config)` and `state_to_hf(state, config)` to
    reshape tensors between the file and the backbone (GPT-2's fused,
    transposed `c_attn`; Phi-3's fused `qkv_proj`, split by the config's head
    counts). A family whose folders may wrap the text model in a multimodal
    one defines `text_model(hf, model_type)`, returning the text model's
    `model_type` and `config.json` fields (Gemma 3's `text_config`). An
    encoder family describes its task-head classes in `HEADS`: per model
    type, per head kind (`sequence_classification`, `token_classification`,
    `question_answering`), a `HeadShape`. Where its types' head classes name
    their base model differently, `HEAD_CLASS_PREFIXES` maps each type to its
    prefix there (`xlm-roberta`: `roberta.`); otherwise it is `PREFIXES[0]`.
    """

    @property
    def MODEL_TYPES(self) -> tuple[str, ...]:
        """The `model_type` values of `config.json` the file reads."""

    @property
    def ARCHITECTURES(self) -> Mapping[str, str]:
        """Per model type, the `transformers` class written to `architectures` when saving."""

    @property
    def PREFIXES(self) -> tuple[str, ...]:
        """Base-model prefixes head classes put before the body (`bert.` in `BertForMaskedLM`)."""

    @property
    def IGNORED(self) -> tuple[str, ...]:
        """Regular expressions of checkpoint keys that are no weights of their own (buffers, tied copies)."""

    def config_from_hf(self, hf: Mapping[str, Any], model_type: str) -> BackboneConfig:
        """Translates a `config.json` dict, raising NlpkitError on what cannot be expressed."""

    def config_to_hf(self, config: BackboneConfig, model_type: str) -> dict[str, Any]:
        """Writes the `config.json` fields that describe `config`."""

    def rules(self, config: BackboneConfig) -> list[Rule]:
        """The name rules for this config; the first rule of an nlpkit name is the one saved."""


# ---------------------------------------------------------------------------
# Folders and files
# ---------------------------------------------------------------------------

# `org/name` or a bare `name` (`bert-base-uncased`): what a Hugging Face Hub id looks like. Only a
# path that does not exist is read so, and the message says to pass a local folder either way.
_HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


def check_folder(path: str | Path) -> Path:
    """Returns `path` as a folder holding `config.json`, or raises NlpkitError saying why not.

    nlpkit never downloads (see `shared/docs/architecture.md`), so a string
    that is no local path but looks like a Hub id gets a message that says how
    to fetch it once.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        text = str(path)
        if _HUB_ID.fullmatch(text):
            raise NlpkitError(
                f"checkpoint {text!r} is not a local folder; it looks like a Hugging Face Hub id, and nlpkit never "
                f"downloads: fetch it once (e.g. `huggingface-cli download {text} --local-dir "
                f"models/{text.split('/')[-1]}`) and pass a local folder"
            )
        raise NlpkitError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise NlpkitError(f"checkpoint {folder} is not a folder; pass the folder holding config.json and the weights")
    if not (folder / CONFIG_FILE).is_file():
        raise NlpkitError(f"no {CONFIG_FILE} in {folder}: not a Hugging Face-format checkpoint folder")
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    """Reads `folder/config.json` as a dict."""
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NlpkitError(f"cannot read {path}: {_first_line(error)}") from None
    if not isinstance(config, dict):
        raise NlpkitError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def read_weights(folder: Path) -> dict[str, Tensor]:
    """Reads every tensor of the folder's weights, whichever of the four layouts it uses.

    Safetensors comes first, as in `transformers`; `.bin` files load with
    `weights_only=True`, so a pickle cannot run code.

    Raises:
        NlpkitError: No weights file, a shard named by an index that is
            absent, or a file that cannot be read (corrupt or truncated).
    """
    files = _weight_files(folder)
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(_read_safetensors(file) if file.suffix == ".safetensors" else _read_bin(file))
    return state


def _weight_files(folder: Path) -> list[Path]:
    """The weight files in use: the first of `_WEIGHT_SOURCES` present, an index read into its shards."""
    for name in _WEIGHT_SOURCES:
        if (folder / name).is_file():
            break
    else:
        raise NlpkitError(f"no weights in {folder}: expected one of {', '.join(_WEIGHT_SOURCES)}")
    return _shard_files(folder / name) if name.endswith(".index.json") else [folder / name]


def fingerprint(folder: Path) -> str:
    """A digest that changes when the folder's checkpoint does, cheap for a 10 GB folder.

    It reads `config.json` and, of each weight file in use (shards included),
    its name, its size and, for safetensors, its header (every tensor's name,
    dtype, shape and offsets), never the tensors themselves.
    """
    import hashlib
    import struct

    digest = hashlib.sha256((folder / CONFIG_FILE).read_bytes())
    files = _weight_files(folder)
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        if file.suffix == ".safetensors":
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))  # the header's size, then the header (JSON)
                digest.update(handle.read(min(length, 100_000_000)))
    return digest.hexdigest()


def _shard_files(index: Path) -> list[Path]:
    """The shard files an index's `weight_map` names, in first-seen order."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise NlpkitError(f"cannot read the shard index {index}: {_first_line(error)}") from None
    files = [index.parent / name for name in names]
    for file in files:
        if not file.is_file():
            raise NlpkitError(f"shard {file.name} named by {index} is missing from {index.parent}")
    return files


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:  # safetensors raises its own error types, torch and OSError others
        raise NlpkitError(f"cannot read weights file {path} (corrupt or truncated?): {_first_line(error)}") from None


def load_torch_file(path: Path, what: str, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain values, never code.

    Args:
        path: a ``.bin`` weights file or a Lightning checkpoint.
        what: names the file in messages ("weights file", "checkpoint").
        mmap: map the tensors instead of reading them (a look at metadata
            that costs no memory); only for torch's zip format.

    Raises:
        NlpkitError: one line of nlpkit's own (torch's message advises loading
            the file unsafely): a file that would unpickle code, or one that
            cannot be read.
    """
    import pickle
    import warnings
    import zipfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of files it then refuses
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        would = f"it would load {found.group(1)}" if found else "it is no torch file of tensors and plain values"
        raise NlpkitError(f"cannot read {what} {path}: not a safe checkpoint: {would}, and nlpkit never "
                          f"unpickles code") from None
    except Exception as error:  # zip, OS and EOF errors all mean: this file cannot be used
        raise NlpkitError(f"cannot read {what} {path} (corrupt or truncated?): {_first_line(error)}") from None


def _read_bin(path: Path) -> dict[str, Tensor]:
    state = load_torch_file(path, "weights file")
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise NlpkitError(f"weights file {path} does not hold a flat dict of tensors (a state dict)")
    return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# ---------------------------------------------------------------------------
# Name rules
# ---------------------------------------------------------------------------

_PARAMETERS = ("weight", "bias")


def _split(key: str) -> tuple[str, str]:
    """`layers.0.mlp.up.weight` -> (`layers.0.mlp.up`, `.weight`); a buffer name stays whole."""
    module, _, last = key.rpartition(".")
    return (module, f".{last}") if module and last in _PARAMETERS else (key, "")


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _match(template: str, path: str) -> dict[str, str] | None:
    """Matches a dotted path against a template whose `{name}` stands for one component."""
    pattern = _PATTERNS.get(template)
    if pattern is None:
        source = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^.]+)", re.escape(template))
        pattern = _PATTERNS[template] = re.compile(source)
    found = pattern.fullmatch(path)
    return found.groupdict() if found else None


def hf_names(key: str, rules: list[Rule]) -> list[str]:
    """The Hugging Face names of nlpkit weight `key`, preferred first (the one saved).

    A leading `/` marks a top-level head weight that sits outside the base
    model's prefix.

    Raises:
        KeyError: If no rule covers `key` (a bug in the family's rules).
    """
    module, parameter = _split(key)
    names = [hf.format(**groups) + parameter
             for ours, hf in rules if (groups := _match(ours, module)) is not None]
    if not names:
        raise KeyError(f"no checkpoint name rule covers nlpkit weight {key!r}")
    return names


# ---------------------------------------------------------------------------
# Config translation helpers
# ---------------------------------------------------------------------------

# `transformers.activations.ACT2FN` names -> the backbone's closed set.
_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACTIVATION_NAMES: dict[str, str] = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def activation_from_hf(name: Any, field: str) -> Activation:
    """Translates an activation name, raising NlpkitError naming `field` when it has no equivalent."""
    if name not in _ACTIVATIONS:
        raise NlpkitError(f"{field}={name!r} cannot be expressed; supported: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


def activation_to_hf(activation: str) -> str:
    """The `transformers` name of one of the backbone's activations."""
    return _ACTIVATION_NAMES[activation]


def unsupported(field: str, value: Any, why: str) -> NlpkitError:
    """An error for a `config.json` field nlpkit cannot express (the caller raises it)."""
    return NlpkitError(f"{field}={value!r} cannot be expressed by nlpkit's backbones: {why}")


def token_id(value: Any, vocab_size: int) -> int | None:
    """A special-token id for the config, or None when absent or outside the vocabulary.

    Only for kinds whose outputs never read it (decoders and encoder-decoders
    use arange positions); tiny test configs often keep ids of the full-size
    vocabulary, which transformers also tolerates.
    """
    return value if isinstance(value, int) and 0 <= value < vocab_size else None


def make_config(**fields: Any) -> BackboneConfig:
    """Builds a BackboneConfig from translated `config.json` fields, checking their types and ranges."""
    return BackboneConfig.from_dict(fields, source=None)  # the caller names config.json


def decoder_shape_to_hf(config: BackboneConfig) -> dict[str, Any]:
    """The `config.json` shape fields every Llama-style decoder family writes the same way (Llama, Phi-3, Gemma)."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.resolved_num_kv_heads,
        "head_dim": config.resolved_head_dim,
        "max_position_embeddings": config.max_positions,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_dropout": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
    }
