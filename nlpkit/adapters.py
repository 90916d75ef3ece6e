"""LoRA adapters (LoRA, DoRA, rsLoRA) on nlpkit's backbones, through peft.

A recipe's ``peft:`` section names the layers to adapt in nlpkit's terms
(``query``, ``key``, ``value``, ``attention_output``, ``mlp``,
``all-linear``, or regular expressions over module names) and which layers
get adapters. They become the exact module names of the backbone, and
``peft.inject_adapter_in_model`` wraps those Linear layers with a
``LoraConfig``: peft's own layers compute the adapters, so DoRA and rsLoRA
are peft's too. Only the adapters of the backbone train (the task head,
outside the backbone, trains whole).

``peft`` is imported only here, and only when a recipe asks for adapters.

References:
    - Hu et al. 2021, LoRA (https://arxiv.org/abs/2106.09685); Liu et al.
      2024, DoRA (https://arxiv.org/abs/2402.09353); Kalajdzievski 2023,
      rsLoRA (https://arxiv.org/abs/2312.03732).
    - ``peft/mapping.py`` (``inject_adapter_in_model``) and
      ``peft/tuners/lora/layer.py`` (``LoraLayer.merge``, ``get_base_layer``),
      ``peft/utils/save_and_load.py`` (``get_peft_model_state_dict``: the
      names of an adapter folder's tensors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from nlpkit.backbones.cpu import Dropout
from nlpkit.errors import NlpkitError

if TYPE_CHECKING:
    from nlpkit.recipe import PeftSection
    from nlpkit.registry import Registries
    from nlpkit.tasks import HFHead

__all__ = ["TARGETS", "apply_adapters", "base_weight_names", "merge_adapters", "save_peft_adapter",
           "target_module_names"]

ADAPTER_NAME = "default"

# nlpkit's names for the Linear layers adapters go on: a layer's last two name parts.
# Cross-attention counts as attention (peft's `q_proj` of a BART also hits both).
TARGETS = {
    "query": r"(?:attention|cross_attention)\.query",
    "key": r"(?:attention|cross_attention)\.key",
    "value": r"(?:attention|cross_attention)\.value",
    "attention_output": r"(?:attention|cross_attention)\.output",
    "mlp": r"mlp\.\w+",
    "all-linear": r".+",
}
_LAYER = re.compile(r"(?:^|.*\.)layers\.(\d+)\.(.+)")


def target_module_names(backbone: nn.Module, section: PeftSection) -> list[str]:
    """The backbone's Linear layers that ``section`` adapts (full module names).

    The LM head and anything outside the Transformer layers never get an
    adapter (peft's ``all-linear`` leaves the output layer out too).

    Raises:
        NlpkitError: a pattern that is not a regular expression, or nothing
            matched (naming the layers the backbone has).
    """
    patterns = []
    for target in section.target_modules:
        try:
            patterns.append(re.compile(TARGETS.get(target, target)))
        except re.error as error:
            raise NlpkitError(f"peft.target_modules: {target!r} is neither one of {', '.join(TARGETS)} nor a "
                              f"regular expression ({error})") from None
    layers = None if section.layers is None else set(section.layers)
    chosen, seen = [], set()
    for name, module in backbone.named_modules():
        found = _LAYER.fullmatch(name)
        if not isinstance(module, nn.Linear) or found is None:
            continue
        within = found.group(2)  # `attention.query`: the name inside the layer
        seen.add(within)
        if layers is not None and int(found.group(1)) not in layers:
            continue
        if any(p.fullmatch(within) or p.fullmatch(name) for p in patterns):
            chosen.append(name)
    if not chosen:
        layer_text = "" if layers is None else f" in layers {sorted(layers)}"
        raise NlpkitError(f"peft.target_modules: {section.target_modules} match no Linear layer of this backbone"
                          f"{layer_text}; its layers have: {', '.join(sorted(seen))}")
    return chosen


def apply_adapters(backbone: nn.Module, section: PeftSection) -> tuple[int, int]:
    """Wrap the targeted Linear layers of ``backbone`` in LoRA adapters; freeze everything else in it.

    Returns:
        The backbone's trainable (adapter) parameters and its total parameters.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                        use_dora=section.use_dora, use_rslora=section.use_rslora, bias="none",
                        target_modules=target_module_names(backbone, section))
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    _use_fast_dropout(backbone)
    trainable = 0
    for name, parameter in backbone.named_parameters():
        adapter = "lora_" in name  # lora_A, lora_B and DoRA's lora_magnitude_vector
        parameter.requires_grad_(adapter)
        trainable += parameter.numel() if adapter else 0
    return trainable, sum(p.numel() for p in backbone.parameters())


def _use_fast_dropout(backbone: nn.Module) -> None:
    """Give peft's adapter dropouts the backbone's own CPU dropout (the same distribution and scaling).

    peft draws each adapter's dropout with `nn.Dropout`, whose `bernoulli_` runs on one thread on
    CPUs other than Intel's (`nlpkit.backbones.cpu.Dropout`); with adapters on every Linear layer
    that made a MiniLM SST-2 LoRA step slower than a full fine-tuning step.
    """
    from peft.tuners.lora import LoraLayer

    for module in backbone.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                if type(dropout) is nn.Dropout:
                    module.lora_dropout[name] = Dropout(dropout.p)


def merge_adapters(backbone: nn.Module) -> int:
    """Fold every adapter into its base Linear and put the plain Linear back (for inference and export).

    Returns:
        The number of layers merged.
    """
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = backbone.get_submodule(parent_name) if parent_name else backbone
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged


def base_weight_names(model: nn.Module) -> set[str]:
    """The state names of a model's frozen backbone weights (``backbone.*`` but no adapter's).

    A LoRA run fine-tuned from a checkpoint folder saves everything else: the
    folder holds these.
    """
    return {name for name in model.state_dict() if name.startswith("backbone.") and "lora_" not in name}


# peft's task types, by the transformers head class an encoder task exports to.
_ENCODER_TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
                       "ForQuestionAnswering": "QUESTION_ANS"}
_KIND_TASK_TYPES = {"decoder": "CAUSAL_LM", "encoder-decoder": "SEQ_2_SEQ_LM"}


def save_peft_adapter(model: nn.Module, saved: Mapping[str, Tensor], section: PeftSection, family: str, head: HFHead,
                      base: str, folder: Path, registries: Registries) -> None:
    """Write a LoRA run's adapters as a PEFT adapter folder for ``family``'s ``transformers`` class.

    ``adapter_config.json`` (peft's own ``LoraConfig``) and
    ``adapter_model.safetensors`` with the tensors named as
    ``PeftModel.save_pretrained`` names them on the class ``head`` exports to
    (``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight``);
    the task head goes in whole, as peft's ``modules_to_save``.

    Args:
        model: the run's model (its backbone's layers name the adapters' places).
        saved: the run's saved weights (``backbone.<layer>.lora_A.default.weight`` ...).
        section: the run's ``peft:`` section (rank, alpha ...).
        family: the checkpoint family of the base model.
        head: the task head's ``transformers`` class and weight names.
        base: the base checkpoint folder (``base_model_name_or_path``).
        folder: where to write.
        registries: where the family is registered.

    Raises:
        NlpkitError: an adapted layer that ``family`` fuses with others into
            one weight (GPT-2's ``c_attn``): that adapter has no PEFT form.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    from nlpkit.backbones.checkpoints import head_class_prefix, hf_module_names

    backbone: nn.Module = model.backbone  # type: ignore[assignment]
    places = hf_module_names(backbone, family, registries=registries)
    tensors: dict[str, Tensor] = {}
    targets: set[str] = set()
    for key, tensor in saved.items():
        if not key.startswith("backbone.") or ".lora_" not in key:
            continue
        layer, _, parameter = key.removeprefix("backbone.").partition(".lora_")
        place = places.get(layer)
        if place is None:
            raise NlpkitError(f"--adapter: {family} checkpoints fuse nlpkit's {layer} with other layers into one "
                              f"weight, so its adapter has no PEFT form; export the merged model with --merge")
        # As peft saves them: `lora_A.default.weight` -> `lora_A.weight`, and DoRA's
        # `lora_magnitude_vector.default.weight` -> `lora_magnitude_vector`.
        name = f"lora_{parameter}".replace(f".{ADAPTER_NAME}", "")
        if name.startswith("lora_magnitude_vector"):
            name = "lora_magnitude_vector"
        tensors[f"base_model.model.{place}.{name}"] = tensor
        targets.add(place)
    prefix = head_class_prefix(family, registries=registries)
    head_module: nn.Module = model.head  # type: ignore[assignment]
    head_state = head_module.state_dict()
    modules_to_save: set[str] = set()
    for ours, theirs in head.weights.items():
        full = (prefix if theirs in head.inside_base_model else "") + theirs
        tensors[f"base_model.model.{full}"] = head_state[ours]
        modules_to_save.add(full.rpartition(".")[0])
    kind: str = backbone.config.kind  # type: ignore[union-attr,assignment]
    task_type = _KIND_TASK_TYPES.get(kind) or next(
        (value for suffix, value in _ENCODER_TASK_TYPES.items() if head.architecture.endswith(suffix)), None)
    config = LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout, use_dora=section.use_dora,
                        use_rslora=section.use_rslora, bias="none", target_modules=sorted(targets),
                        modules_to_save=sorted(modules_to_save) or None, task_type=task_type,
                        base_model_name_or_path=base, inference_mode=True)
    config.save_pretrained(str(folder))
    save_file({key: value.detach().contiguous() for key, value in tensors.items()},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
