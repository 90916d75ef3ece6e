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
      ``peft/tuners/lora/layer.py`` (``LoraLayer.merge``, ``get_base_layer``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torch import nn

from nlpkit.errors import NlpkitError

if TYPE_CHECKING:
    from nlpkit.recipe import PeftSection

__all__ = ["TARGETS", "apply_adapters", "base_weight_names", "merge_adapters", "target_module_names"]

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
    trainable = 0
    for name, parameter in backbone.named_parameters():
        adapter = "lora_" in name  # lora_A, lora_B and DoRA's lora_magnitude_vector
        parameter.requires_grad_(adapter)
        trainable += parameter.numel() if adapter else 0
    return trainable, sum(p.numel() for p in backbone.parameters())


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
