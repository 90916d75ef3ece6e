"""Hugging Face-format checkpoint folders in and out: the only code that touches them.

A folder holds `config.json` and weights (`model.safetensors`, sharded
safetensors with an index, or `pytorch_model.bin`, also sharded). Loading
detects the family from `config.json`, translates the config into a
`BackboneConfig`, maps the weights onto the matching backbone and returns it;
saving writes the same layout back so that `transformers` (and everything
built on it) loads a model nlpkit trained.

One small file per family holds its name rules and config translation
(`bert.py`, `distilbert.py`, `gpt2.py`, `llama.py`, `bart.py`, `t5.py`);
`_common.py` holds what they share. This file knows none of them: families
are registered by plugins (`nlpkit_register_checkpoint_families`; nlpkit's
own by the core plugin, `nlpkit/core.py`) and looked up by `model_type` in
the registries of a plugin set, as is the module class of the config's
`kind`. Correctness is measured, not assumed: `tests/parity/` compares hidden
states and logits with `transformers` for every family.

References:
    - `transformers/modeling_utils.py` (`from_pretrained`, `save_pretrained`):
      weight-file precedence, base-model prefixes of head classes, and the
      rule that a tied head stays untied when the file holds a different one.
    - litgpt `scripts/convert_hf_checkpoint.py`: one name table per family.

Example:
    >>> from nlpkit.backbones import from_pretrained
    >>> encoder = from_pretrained("../shared/models/all-minilm-l6-v2")
    >>> encoder(input_ids, attention_mask=mask).last_hidden_state.shape
    torch.Size([2, 7, 384])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nlpkit._files import file_mode
from nlpkit.backbones.checkpoints._common import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Family,
    HeadShape,
    Rule,
    check_folder,
    hf_names,
    read_config,
    read_weights,
)
from nlpkit.backbones.config import BackboneConfig
from nlpkit.backbones.layers import initialisation_skipped
from nlpkit.errors import NlpkitError
from nlpkit.registry import Registries, Registry

__all__ = [
    "CheckpointConfig",
    "HeadShape",
    "LoadedCheckpoint",
    "checkpoint_config",
    "detect_family",
    "from_pretrained",
    "generation_defaults",
    "head_class_prefix",
    "head_shape",
    "hf_module_names",
    "infer_family",
    "load_checkpoint",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

GENERATION_CONFIG_FILE = "generation_config.json"

# A `transformers` class name: the architecture's stem, then a base or head class suffix
# (`BertModel`, `GPT2LMHeadModel`, `MarianMTModel`, `DistilBertForMaskedLM`).
_CLASS_NAME = re.compile(r"(\w+?)(Model|LMHeadModel|MTModel|For[A-Z]\w*)")

# nlpkit weights that may be absent: an untied LM head of a folder saved from
# a base class (it starts fresh), and BART's bias (zeros, as `transformers` does).
_OPTIONAL = ("lm_head.weight", "final_logits_bias")
_TOKEN_EMBEDDING = {"decoder": "embeddings.token.weight", "encoder-decoder": "token_embedding.weight"}


@dataclass
class CheckpointConfig:
    """What a checkpoint folder's `config.json` says; no weight is read.

    Cheap enough for validating a recipe. `config.tie_word_embeddings` can
    still change once the weights are read: a folder whose LM head differs
    from its token embedding is untied whatever its config says (see
    `load_checkpoint`).

    Attributes:
        folder: The checkpoint folder.
        family: The detected `model_type` (a registered checkpoint family).
        config: The backbone config translated from `config.json`.
        hf_config: The raw `config.json`.
    """

    folder: Path
    family: str
    config: BackboneConfig
    hf_config: dict[str, Any]


@dataclass
class LoadedCheckpoint:
    """A checkpoint folder read and mapped onto nlpkit's names, not yet a module.

    Attributes:
        config: The backbone config translated from `config.json`.
        family: The detected `model_type` (a registered checkpoint family).
        backbone_state: The backbone's weights under nlpkit names, ready for
            `load_state_dict` (a tied LM head is not repeated).
        extra_state: Checkpoint tensors that are not backbone weights (the
            pooler, task heads such as `classifier.*`, `cls.predictions.*`),
            under their checkpoint names with the base-model prefix
            (`bert.`, `model.`, ...) removed.
        hf_config: The raw `config.json`.
        backbone_class: The module class registered for `config.kind`, from
            the registries the folder was read with, so that
            `build_from_checkpoint` builds what the weights were mapped onto.
        fresh: Backbone weights the folder lacks, left at their initial
            values (an untied LM head of a folder saved from a base class).
    """

    config: BackboneConfig
    family: str
    backbone_state: dict[str, Tensor]
    extra_state: dict[str, Tensor]
    hf_config: dict[str, Any]
    backbone_class: Callable[[BackboneConfig], nn.Module]
    fresh: list[str] = field(default_factory=list)


def _registries(registries: Registries | None, knows: Callable[[Registries], bool]) -> Registries:
    """The registries to look families and kinds up in: those given, else the installed plugins'.

    `from_pretrained(path)` and the other functions here take no plugin set, so
    without one they answer as the installed plugins would (the set
    `nlpkit.load` loads when it is given none). The core plugin is asked
    alone first: a set of it builds in milliseconds, where importing the
    task plugins takes seconds, and its answer is the installed plugins'
    answer, since no other plugin can register its names (a name registered
    twice is an error) and it cannot be blocked.

    Args:
        registries: The registries of a loaded plugin set, or None.
        knows: Whether a set of registries can answer the question at hand
            (it holds the folder's model type, or a family for the backbone).
    """
    if registries is not None:
        return registries
    from nlpkit.plugins import load_plugins

    core = load_plugins(entry_points=False).registries
    return core if knows(core) else load_plugins().registries


def _model_type(config_json: Mapping[str, Any], registries: Registries) -> str | None:
    """The registered family a `config.json` names, or None: its `model_type`, else its class name."""
    families = registries.checkpoint_families
    model_type = config_json.get("model_type")
    if model_type is not None:
        return model_type if isinstance(model_type, str) and model_type in families else None
    # Old configs without `model_type` still name their class. Comparing stems, not prefixes, keeps
    # `DistilBertModel` from reading as BERT and `Qwen2MoeForCausalLM` as Qwen2.
    stems: dict[str, str] = {}
    for name, family in families.items():
        if found := _CLASS_NAME.fullmatch(family.ARCHITECTURES[name]):
            stems.setdefault(found.group(1), name)
    for architecture in config_json.get("architectures") or ():
        if (found := _CLASS_NAME.fullmatch(str(architecture))) and found.group(1) in stems:
            return stems[found.group(1)]
    return None


def detect_family(config_json: Mapping[str, Any], *, registries: Registries | None = None) -> str:
    """The family of a checkpoint from its `config.json`: its `model_type`.

    Args:
        config_json: The parsed `config.json`.
        registries: Where families are registered (`load_plugins(...).registries`);
            None: the installed plugins' (see `from_pretrained`).

    Returns:
        A registered checkpoint family.

    Raises:
        NlpkitError: If the model type is not registered (the message lists
            the registered ones).
    """
    registries = _registries(registries, lambda found: _model_type(config_json, found) is not None)
    model_type = _model_type(config_json, registries)
    if model_type is not None:
        return model_type
    supported = _supported(registries.checkpoint_families)
    if config_json.get("model_type") is None:
        raise NlpkitError(f"config.json names no model_type (nor a known architecture); supported: {supported}")
    raise NlpkitError(f"unsupported model_type {config_json['model_type']!r}; supported: {supported}")


def head_shape(model_type: str | None, kind: str, *, registries: Registries | None = None) -> HeadShape | None:
    """The layout of a family's `transformers` head class of one kind, from its family file's `HEADS`.

    Args:
        model_type: The checkpoint family (`bert`, `electra` ...); None for a
            backbone no family expresses.
        kind: `sequence_classification`, `token_classification`,
            `question_answering`, or a kind a plugin's family describes.
        registries: Where families are registered; None: the installed plugins'.

    Returns:
        The head's shape, or None where the family has no such class (or no
        family is known).
    """
    if model_type is None:
        return None
    found = _registries(registries, lambda candidate: model_type in candidate.checkpoint_families)
    if model_type not in found.checkpoint_families:
        return None
    heads = getattr(found.checkpoint_families.get(model_type), "HEADS", {})
    shape: HeadShape | None = heads.get(model_type, {}).get(kind)
    return shape


def checkpoint_config(path: str | Path, *, registries: Registries | None = None) -> CheckpointConfig:
    """Reads and translates a checkpoint folder's `config.json`, without its weights.

    Args:
        path: A local folder holding `config.json` and the weights.
        registries: Where families are registered; None: the installed
            plugins' (see `from_pretrained`).

    Returns:
        The folder, its family and its backbone config.

    Raises:
        NlpkitError: On a path that is not a checkpoint folder (a Hub id
            included: nlpkit never downloads), an unsupported model type, or
            a config the backbones cannot express (naming the field).
    """
    return _describe(path, registries)[0]


def _describe(path: str | Path, registries: Registries | None) -> tuple[CheckpointConfig, Registries]:
    """`checkpoint_config`, and the registries its family came from (for the weights and the module)."""
    folder = check_folder(path)
    hf_config = read_config(folder)
    found = _registries(registries, lambda candidate: _model_type(hf_config, candidate) is not None)
    try:
        model_type = detect_family(hf_config, registries=found)
        family = found.checkpoint_families.get(model_type)
        if hasattr(family, "text_model"):  # a multimodal folder: its language model is the backbone
            model_type, hf_config = family.text_model(hf_config, model_type)
        config = family.config_from_hf(hf_config, model_type)
    except NlpkitError as error:
        raise NlpkitError(f"{folder / CONFIG_FILE}: {error}") from None
    return CheckpointConfig(folder=folder, family=model_type, config=config, hf_config=hf_config), found


def load_checkpoint(path: str | Path, *, registries: Registries | None = None) -> LoadedCheckpoint:
    """Reads a checkpoint folder and maps it onto nlpkit's backbone names.

    Args:
        path: A local folder holding `config.json` and the weights.
        registries: Where families and backbone kinds are registered; None:
            the installed plugins' (see `from_pretrained`).

    Returns:
        The translated config, the mapped backbone weights and the rest.

    Raises:
        NlpkitError: As `checkpoint_config`, or on an unreadable weights
            file, a missing or misshapen weight, or a config whose kind no
            plugin registers.
    """
    described, found = _describe(path, registries)
    family = found.checkpoint_families.get(described.family)
    try:
        backbone_class = found.backbone_kinds.get(described.config.kind)
    except NlpkitError as error:
        raise NlpkitError(f"{described.folder / CONFIG_FILE}: {error}") from None
    hf_state = {_modern_name(key): value for key, value in read_weights(described.folder).items()}
    if hasattr(family, "state_from_hf"):
        hf_state = family.state_from_hf(hf_state, described.config)
    return _map_state(family, described, hf_state, backbone_class)


def from_pretrained(path: str | Path, dtype: torch.dtype | str | None = None, *,
                    registries: Registries | None = None) -> nn.Module:
    """Builds the backbone a checkpoint folder describes, with its weights.

    The LM head of a decoder or encoder-decoder comes with it (tied where the
    checkpoint ties it). The module is returned in eval mode, as
    `transformers` does; training code switches it back.

    The folder's `model_type` is looked up among the checkpoint families
    plugins register, and its config's `kind` among the backbone kinds.
    Without `registries` those are the installed plugins' (nlpkit's own, and
    third-party ones unless `NLPKIT_DISABLE_PLUGIN_AUTOLOAD` is set), the
    plugins `nlpkit.load` loads when given none; a folder of one of nlpkit's
    own families is read without importing any task plugin.

    Args:
        path: A local folder holding `config.json` and the weights.
        dtype: Parameter dtype (`torch.bfloat16` or `"bfloat16"`); None means
            the default float dtype (float32), `"auto"` the dtype recorded in
            `config.json`.
        registries: The registries of a loaded plugin set, for a family of a
            plugin that is not installed
            (`nlpkit.plugins.load_plugins(["my_plugin"]).registries`).

    Returns:
        An `Encoder`, `Decoder` or `EncoderDecoder` (or a plugin's kind);
        called as `backbone(input_ids, attention_mask=mask)` (the
        encoder-decoder also with `decoder_input_ids=...`) it returns a
        `BackboneOutput` whose `last_hidden_state` equals that of
        `transformers.AutoModel`.

    Raises:
        NlpkitError: As `load_checkpoint`, or on an unknown dtype. An
            unregistered model type is one line listing the registered ones.

    Example:
        >>> decoder = from_pretrained("checkpoints/tiny-llama")
        >>> logits = decoder.logits(decoder(input_ids).last_hidden_state)
    """
    return build_from_checkpoint(load_checkpoint(path, registries=registries), dtype)


def build_from_checkpoint(loaded: LoadedCheckpoint, dtype: torch.dtype | str | None = None) -> nn.Module:
    """The backbone module of a checkpoint already read with `load_checkpoint` (see `from_pretrained`)."""
    target = _resolve_dtype(dtype, loaded.hf_config)
    # Every weight is about to be replaced by the checkpoint's, so none is drawn first (GPT-2 small: 1.5 s of
    # a 4.4 s load on 2 cores). A weight the folder lacks needs its real draw: then the module is built again
    # (buffers it lacks, such as BART's zero bias, are made as they are either way).
    with initialisation_skipped():
        backbone = loaded.backbone_class(loaded.config)
    if set(loaded.fresh) & {name for name, _ in backbone.named_parameters()}:
        backbone = loaded.backbone_class(loaded.config)
    state = {name: tensor.to(target) for name, tensor in loaded.backbone_state.items()}
    # assign=True adopts the loaded tensors (in the target dtype) instead of copying them: one copy in memory,
    # not two; `.to` after it converts only what the folder did not hold, not the weights about to be replaced.
    result = backbone.load_state_dict(state, strict=False, assign=True)
    backbone = backbone.to(target)
    missing = set(result.missing_keys) - set(loaded.fresh)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint mapping out of step with the backbone: missing {sorted(missing)}, "
                           f"unexpected {sorted(result.unexpected_keys)}")
    for name in loaded.fresh:
        if name != "final_logits_bias":  # zeros are what transformers uses too
            logger.warning("the %s checkpoint has no %s (saved from a base class?): it starts from a random "
                           "initialisation", loaded.family, name)
    return backbone.eval()


def generation_defaults(path: str | Path) -> dict[str, Any]:
    """A checkpoint's decoding defaults, where `transformers` finds them.

    `generation_config.json` when the folder has one, else `config.json`
    (older checkpoints keep `num_beams`, `max_length` and the special token
    ids there). The caller picks the keys it knows.

    Args:
        path: A local checkpoint folder.

    Returns:
        The file's entries (an empty dict when neither file says anything).

    Raises:
        NlpkitError: On a file that is not valid JSON.
    """
    folder = check_folder(path)
    file = folder / GENERATION_CONFIG_FILE
    if not file.is_file():
        return dict(read_config(folder))
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NlpkitError(f"{file}: not valid JSON: {error}") from None
    return data if isinstance(data, dict) else {}


def save_pretrained(
    backbone: nn.Module,
    folder: str | Path,
    family: str | None = None,
    extra_state: Mapping[str, Tensor] | None = None,
    hf_config: Mapping[str, Any] | None = None,
    *,
    registries: Registries | None = None,
) -> Path:
    """Writes a backbone as a Hugging Face-format folder (`config.json` + `model.safetensors`).

    Weights take the base model's names (`embeddings.*`, `encoder.*`, ...),
    with a decoder's untied LM head and BART's `final_logits_bias` at the top
    level, as the family's head class stores them; `transformers` loads such
    a folder with `AutoModel` and with the matching head class alike.

    Args:
        backbone: An `Encoder`, `Decoder` or `EncoderDecoder`.
        folder: Where to write; created if needed, existing files replaced.
        family: The `model_type` to write (`LoadedCheckpoint.family` of the
            checkpoint it came from); None picks the first family that can
            express the backbone's config.
        extra_state: More tensors under their `transformers` names, written
            as given (a task head: `classifier.weight`, or `pooler.*`).
        hf_config: A `config.json` to start from (the original one, keeping
            token ids, labels and `architectures`); the fields that describe
            the backbone are overwritten from its config.
        registries: Where families are registered; None: the installed
            plugins' (see `from_pretrained`).

    Returns:
        The folder.

    Raises:
        NlpkitError: If `backbone` is not an nlpkit backbone, the family is
            unknown or cannot express the backbone's config (the message
            names the field), or an extra tensor collides with a backbone
            weight.
    """
    config = getattr(backbone, "config", None)
    if not isinstance(config, BackboneConfig):
        raise NlpkitError(f"save_pretrained needs an nlpkit backbone (with a BackboneConfig), "
                          f"got {type(backbone).__name__}")
    if family is None:
        model_type, registries = _inferred(config, registries)
    else:
        model_type, registries = family, _registries(registries, lambda found: family in found.checkpoint_families)
    families = registries.checkpoint_families
    if model_type not in families:
        raise NlpkitError(f"unsupported model_type {model_type!r}; supported: {_supported(families)}")
    module = families.get(model_type)
    dtype = next(backbone.parameters()).dtype
    fields = {key: value for key, value in (hf_config or {}).items() if key != "torch_dtype"}
    fields.update(module.config_to_hf(config, model_type))
    fields.setdefault("architectures", [module.ARCHITECTURES[model_type]])
    fields["dtype"] = str(dtype).removeprefix("torch.")
    mismatch = _mismatch(module, model_type, fields, config)
    if mismatch:
        raise NlpkitError(f"cannot save this backbone as a {model_type} checkpoint: {mismatch}")

    state = _hf_state(backbone.state_dict(), config, module)
    for key, tensor in (extra_state or {}).items():
        if key in state:
            raise NlpkitError(f"extra_state tensor {key!r} has the name of a backbone weight")
        state[key] = tensor.detach()

    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_unshared(state), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    os.chmod(out / WEIGHTS_FILE, file_mode())  # safetensors writes 0600, whatever the umask
    (out / CONFIG_FILE).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _hf_state(backbone_state: Mapping[str, Tensor], config: BackboneConfig, module: Family) -> dict[str, Tensor]:
    """A backbone's weights under its family's names (base-model names; `/` head weights at the top)."""
    rules = module.rules(config)
    state: dict[str, Tensor] = {}
    for name, tensor in backbone_state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the token embedding holds it
        state[hf_names(name, rules)[0].lstrip("/")] = tensor.detach()
    if hasattr(module, "state_to_hf"):
        state = module.state_to_hf(state, config)
    return state


def hf_module_names(backbone: nn.Module, family: str, *, registries: Registries | None = None) -> dict[str, str | None]:
    """Each Linear layer of a backbone -> its module's full name in the family's `transformers` head class.

    Full names: under the head class's base-model attribute (`bert.encoder.layer.0.attention.self.query`,
    `model.layers.0.self_attn.q_proj`), as peft names the layers it adapts. None where the family fuses
    the layer with others into one weight (GPT-2's `c_attn`, Phi-3's `qkv_proj`, ModernBERT's `Wqkv`)
    or stores it elsewhere, so that no module of the class is that layer alone.

    Raises:
        NlpkitError: an unknown family.
    """
    module = _family(family, registries)
    config: BackboneConfig = backbone.config  # type: ignore[assignment]
    # On meta tensors: only the names matter, and fusing a 10 GB model's layers would copy them.
    written = _hf_state({key: value.to("meta") for key, value in backbone.state_dict().items()}, config, module)
    rules, prefix = module.rules(config), _head_class_prefix(family, module)
    names: dict[str, str | None] = {}
    for name, layer in backbone.named_modules():
        if isinstance(layer, nn.Linear):
            hf_weight = hf_names(f"{name}.weight", rules)[0]
            kept = not hf_weight.startswith("/") and hf_weight in written
            names[name] = prefix + hf_weight.removesuffix(".weight") if kept else None
    return names


def head_class_prefix(family: str, *, registries: Registries | None = None) -> str:
    """The base-model attribute of a family's head classes (`bert.`, `roberta.`, `model.`; T5's none).

    Raises:
        NlpkitError: an unknown family.
    """
    return _head_class_prefix(family, _family(family, registries))


def _family(family: str, registries: Registries | None) -> Family:
    found = _registries(registries, lambda candidate: family in candidate.checkpoint_families)
    if family not in found.checkpoint_families:
        raise NlpkitError(f"unsupported model_type {family!r}; supported: {_supported(found.checkpoint_families)}")
    module: Family = found.checkpoint_families.get(family)
    return module


def _head_class_prefix(family: str, module: Family) -> str:
    prefixes: Mapping[str, str] = getattr(module, "HEAD_CLASS_PREFIXES", {})
    return prefixes.get(family, module.PREFIXES[0] if module.PREFIXES else "")


# ---------------------------------------------------------------------------
# Loading, step by step
# ---------------------------------------------------------------------------


def _modern_name(key: str) -> str:
    """`LayerNorm.gamma`/`.beta` (files converted from TensorFlow) -> `.weight`/`.bias`, as transformers reads them."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def _skeleton(config: BackboneConfig, backbone_class: Callable[[BackboneConfig], nn.Module]) -> dict[str, torch.Size]:
    """Names and shapes of the backbone's state, from a module built on the meta device (no memory)."""
    with torch.device("meta"):
        return {name: tensor.shape for name, tensor in backbone_class(config).state_dict().items()}


def _detect_prefix(hf_state: Mapping[str, Tensor], prefixes: tuple[str, ...], body: list[str]) -> str:
    """The base-model prefix of a head class (`bert.`, `model.`, ...) or "" for a base class.

    Whichever candidate finds the most body weights wins, so a stray key never decides.
    """
    def hits(prefix: str) -> int:
        return sum(prefix + name in hf_state for name in body)

    return max(("", *prefixes), key=hits)


def _map_state(family: Family, described: CheckpointConfig, hf_state: dict[str, Tensor],
               backbone_class: Callable[[BackboneConfig], nn.Module]) -> LoadedCheckpoint:
    """Looks every backbone weight up in the checkpoint, checks its shape and sorts the rest."""
    config, folder = described.config, described.folder
    rules: list[Rule] = family.rules(config)
    shapes = _skeleton(config, backbone_class)
    names = {name: hf_names(name, rules) for name in shapes}
    prefix = _detect_prefix(hf_state, family.PREFIXES,
                            [hf for candidates in names.values() for hf in candidates if not hf.startswith("/")])

    def find(name: str) -> list[str]:
        """Checkpoint keys present for nlpkit `name`, preferred first."""
        keys = [hf[1:] if hf.startswith("/") else prefix + hf for hf in names[name]]
        return [key for key in keys if key in hf_state]

    tied = config.kind != "encoder" and config.tie_word_embeddings
    if tied:
        head, token = find("lm_head.weight"), find(_TOKEN_EMBEDDING[config.kind])
        if head and token and not torch.equal(hf_state[head[0]], hf_state[token[0]]):
            # transformers' rule: a file holding its own, different head is untied whatever the config says.
            logger.info("%s: %s differs from the token embedding; the LM head is loaded untied", folder, head[0])
            config = dataclasses.replace(config, tie_word_embeddings=False)
            tied = False

    backbone_state: dict[str, Tensor] = {}
    consumed: set[str] = set()
    fresh: list[str] = []
    for name, shape in shapes.items():
        present = find(name)
        consumed.update(present)
        if tied and name == "lm_head.weight":
            continue  # shares the token embedding
        if not present:
            if name in _OPTIONAL:
                fresh.append(name)
                continue
            expected = names[name][0]
            expected = expected[1:] if expected.startswith("/") else prefix + expected
            raise NlpkitError(f"missing weight {expected} (nlpkit {name}) in {folder}")
        tensor = hf_state[present[0]]
        if tensor.shape != shape:
            raise NlpkitError(f"weight {present[0]} in {folder} has shape {tuple(tensor.shape)}, but "
                              f"{CONFIG_FILE} implies {tuple(shape)}")
        backbone_state[name] = tensor

    ignored = [re.compile(pattern) for pattern in family.IGNORED]
    extra_state = {
        key.removeprefix(prefix): tensor
        for key, tensor in hf_state.items()
        if key not in consumed and not any(pattern.fullmatch(key.removeprefix(prefix)) for pattern in ignored)
    }
    return LoadedCheckpoint(config=config, family=described.family, backbone_state=backbone_state,
                            extra_state=extra_state, hf_config=described.hf_config, fresh=fresh,
                            backbone_class=backbone_class)


def _resolve_dtype(dtype: torch.dtype | str | None, hf_config: Mapping[str, Any]) -> torch.dtype:
    """None -> the default float dtype; "auto" -> config.json's `dtype` (or older `torch_dtype`)."""
    if dtype is None:
        return torch.get_default_dtype()
    if dtype == "auto":
        dtype = hf_config.get("dtype") or hf_config.get("torch_dtype") or torch.get_default_dtype()
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise NlpkitError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
        dtype = resolved
    if not dtype.is_floating_point:
        raise NlpkitError(f"dtype must be a floating-point type, got {dtype}")
    return dtype


# ---------------------------------------------------------------------------
# Saving, step by step
# ---------------------------------------------------------------------------


def _effective(config: BackboneConfig) -> dict[str, Any]:
    """The config fields that change what the backbone computes at inference, defaults resolved.

    Dropout rates only matter in training, rotary or relative settings only
    where those positions are used, head options only where there is a head.
    """
    values = config.to_dict()
    values.update(num_kv_heads=config.resolved_num_kv_heads, head_dim=config.resolved_head_dim,
                  attention_scale=config.attention_scale or config.resolved_head_dim**-0.5)
    encoder_decoder = config.kind == "encoder-decoder"
    values["num_decoder_layers"] = config.resolved_num_decoder_layers if encoder_decoder else None
    values["num_decoder_heads"] = config.resolved_num_decoder_heads if encoder_decoder else None
    values["decoder_intermediate_size"] = config.resolved_decoder_intermediate_size if encoder_decoder else None
    dropped = ["dropout", "attention_dropout"]
    if config.position_embedding != "rotary":
        dropped += ["rope_theta", "rope_scaling", "partial_rotary_factor"]
    if config.position_embedding != "rotary" or all(config.layer_window(i) is None for i in range(config.num_layers)):
        dropped += ["local_rope_theta", "local_rope_scaling"]  # read by sliding-window layers only
    if config.position_embedding != "relative":
        dropped += ["relative_attention_num_buckets", "relative_attention_max_distance"]
    if config.position_embedding not in ("learned", "sinusoidal"):
        dropped.append("position_offset")
    if config.kind == "encoder":
        dropped += ["tie_word_embeddings", "lm_head_bias", "scale_lm_head_input"]
    for name in dropped:
        values.pop(name)
    return values


def _mismatch(family: Family, model_type: str, fields: Mapping[str, Any], config: BackboneConfig) -> str | None:
    """Why `fields` would not read back as `config` (naming the field), or None when it would."""
    try:
        back = family.config_from_hf(fields, model_type)
    except NlpkitError as error:
        return str(error)
    ours, theirs = _effective(config), _effective(back)
    for name, value in ours.items():
        if theirs.get(name) != value:
            return f"{name}={value!r} has no {model_type} equivalent (it would read back as {theirs.get(name)!r})"
    return None


def infer_family(config: BackboneConfig, *, registries: Registries | None = None) -> str:
    """The first family that can express `config` exactly; NlpkitError listing why none can.

    nlpkit's own families are tried first, in the order the core plugin
    registers them (BERT before RoBERTa), then those of other plugins: a
    backbone saved without a family should become a folder `transformers`
    loads, not a plugin's model type.

    Args:
        config: The backbone config to save.
        registries: Where families are registered; None: the installed
            plugins' (see `from_pretrained`).

    Returns:
        A registered checkpoint family.

    Raises:
        NlpkitError: No registered family can express `config` (naming, per
            family, the field it cannot).
    """
    return _inferred(config, registries)[0]


def _inferred(config: BackboneConfig, registries: Registries | None) -> tuple[str, Registries]:
    """`infer_family`, and the registries the family came from."""
    found = _registries(registries, lambda candidate: _expressing(config, candidate)[0] is not None)
    model_type, reasons = _expressing(config, found)
    if model_type is None:
        raise NlpkitError(f"no checkpoint family can express this {config.kind} backbone; {'; '.join(reasons)}")
    return model_type, found


def _probe(family: Family, model_type: str) -> BackboneConfig | None:
    """The family's reading of an empty config.json, or None for a type registered only to be refused (umt5)."""
    try:
        return family.config_from_hf({}, model_type)
    except NlpkitError:
        return None


def _supported(families: Registry[Any]) -> str:
    """The model types nlpkit loads, for messages: not those registered only to be refused with their reason."""
    return ", ".join(name for name in families.names() if _probe(families.get(name), name) is not None)


def _expressing(config: BackboneConfig, registries: Registries) -> tuple[str | None, list[str]]:
    """The first family that expresses `config` (see `infer_family`), or None and why each cannot."""
    from nlpkit.plugins import ESSENTIAL_PLUGINS

    families = registries.checkpoint_families
    # A stable sort keeps each plugin's own order among its families.
    ordered = sorted(families.items(), key=lambda item: families.owner(item[0]) not in ESSENTIAL_PLUGINS)
    reasons: list[str] = []
    for model_type, family in ordered:
        probe = _probe(family, model_type)
        if probe is None or probe.kind != config.kind:
            continue
        fields = family.config_to_hf(config, model_type)
        reason = _mismatch(family, model_type, fields, config)
        if reason is None:
            return model_type, reasons
        reasons.append(f"{model_type}: {reason}")
    return None, reasons


def _unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out
