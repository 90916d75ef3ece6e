"""Fine-tuning controls: frozen parts, layer-wise learning-rate decay, gradient checkpointing, compiled layers.

They work from the structure the three backbones share (parameter names
``embeddings.*``, ``layers.N.*``; ``layers`` module lists), so they apply to
every kind and family without a flag inside the backbone modules.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from nlpkit.backbones.config import config_of
from nlpkit.errors import NlpkitError

if TYPE_CHECKING:
    from nlpkit.tasks import TaskModel

__all__ = ["freeze", "layer_depths", "parameter_groups", "checkpoint_layers", "compile_layers"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)embeddings\.|^token_embedding\.")


def _stack_offset(name: str, num_encoder_layers: int) -> int:
    # An encoder-decoder's decoder layers sit above all of its encoder layers.
    return num_encoder_layers if name.startswith("decoder.") else 0


def layer_depths(backbone: nn.Module) -> dict[str, int]:
    """Depth of each backbone parameter: 0 for embeddings, i + 1 for layer i, top + 1 for the rest."""
    config = config_of(backbone)
    encoder_layers = config.num_layers
    total = encoder_layers + (config.resolved_num_decoder_layers if config.kind == "encoder-decoder" else 0)
    depths: dict[str, int] = {}
    for name, _ in backbone.named_parameters():
        if _EMBEDDING.search(name):
            depths[name] = 0
        elif match := _LAYER.search(name):
            depths[name] = _stack_offset(name, encoder_layers) + int(match.group(1)) + 1
        else:  # final norms, relative position tables: with the top layer
            depths[name] = total + 1
    return depths


def freeze(backbone: nn.Module, embeddings: bool = False, layers: int = 0, whole: bool = False) -> int:
    """Stop gradients to the embeddings, the first ``layers`` layers, or the whole backbone.

    Returns:
        The number of parameters frozen.

    Raises:
        NlpkitError: ``layers`` is more than the backbone has.
    """
    num_layers = config_of(backbone).num_layers
    if layers > num_layers:
        raise NlpkitError(f"backbone.freeze_layers: {layers} is more than the backbone's {num_layers} layers")
    frozen = 0
    for name, parameter in backbone.named_parameters():
        match = _LAYER.search(name)
        first_layers = match is not None and not name.startswith("decoder.") and int(match.group(1)) < layers
        if whole or (embeddings and _EMBEDDING.search(name)) or first_layers:
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def parameter_groups(model: TaskModel, lr: float, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on vectors, learning rates decayed towards the embeddings.

    With ``layer_lr_decay`` d < 1 (ELECTRA, Clark et al. 2020; BEiT), a
    parameter at depth k of a backbone with L layers learns at
    ``lr * d ** (L + 1 - k)``; the task head learns at ``lr``.

    Args:
        model: a TaskModel (``backbone`` and ``head``).
        lr: the peak learning rate.
        weight_decay: applied to matrices only (not biases and norm weights).
        layer_lr_decay: the factor per layer; 1.0 gives every parameter ``lr``.
    """
    depths = {f"backbone.{name}": depth for name, depth in layer_depths(model.backbone).items()}
    top = max(depths.values(), default=0)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = layer_lr_decay ** (top - depths[name]) if name in depths else 1.0
        decay = weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((lr * scale, decay), []).append(parameter)
    return [{"params": params, "lr": group_lr, "weight_decay": decay} for (group_lr, decay), params in groups.items()]


def checkpoint_layers(backbone: nn.Module) -> int:
    """Recompute each Transformer layer's activations in backward instead of keeping them.

    Memory for activations drops from one set per layer to one layer's worth,
    for about one more forward pass of compute. Each layer's ``forward`` goes
    through ``torch.utils.checkpoint`` (non-reentrant; the random-number state
    is replayed, so dropout masks match); parameter names do not change, so
    checkpoints and exports are unaffected.

    Returns:
        The number of layers wrapped.
    """
    wrapped = 0
    for layer in _layers(backbone):
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
        wrapped += 1
    return wrapped


def compile_layers(backbone: nn.Module) -> int:
    """Compiles each Transformer layer's training forward pass with ``torch.compile`` (``training.compile``).

    Layers, not the whole backbone: PyTorch's "regional compilation". A
    stack's layers run the same code, so one compiled graph serves them all
    and compile time does not grow with depth; embeddings and heads stay
    eager. Only training steps take the compiled path: validation and
    generation run the layers eagerly, where a decoding loop's growing cache
    would make torch compile again at every step until it gave up. Parameter
    names do not change, so checkpoints and exports are unaffected.
    Compilation happens in the first steps (``CompileTime`` reports how long
    it took).

    Returns:
        The number of layers compiled.

    Raises:
        NlpkitError: no CUDA and no working C++ compiler, which torch.compile's
            CPU backend needs: said before training, not as a traceback at its
            first step.
    """
    import torch

    if not torch.cuda.is_available():
        from torch._inductor import cpp_builder  # private: the search Inductor itself runs before compiling

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as error:  # InvalidCxxCompiler, or whatever a broken toolchain raises
            raise NlpkitError(f"training.compile: torch.compile needs a working C++ compiler on the CPU and found "
                              f"none ({type(error).__name__}; set CXX to one, install g++, or set training.compile: "
                              f"false)") from None
    compiled = 0
    for layer in _layers(backbone):
        layer.forward = _TrainingForward(layer, torch.compile(layer.forward), layer.forward)
        compiled += 1
    return compiled


class _TrainingForward:
    """A layer's ``forward``: the compiled one while training with gradients, the eager one otherwise."""

    def __init__(self, layer: nn.Module, compiled: Any, eager: Any) -> None:
        self.layer, self.compiled, self.eager = layer, compiled, eager

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        if self.layer.training and torch.is_grad_enabled():
            return self.compiled(*args, **kwargs)
        return self.eager(*args, **kwargs)


def _layers(backbone: nn.Module) -> list[nn.Module]:
    """The Transformer layers of every stack (the ``layers`` module lists the three backbones share)."""
    return [layer for name, module in backbone.named_modules()
            if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers" for layer in module]
