"""nlpkit's essential plugin: the three backbone kinds, their presets, the data formats and the checkpoint families.

It is registered like any plugin, under the name ``core``, so ``nlpkit plugins``
shows where each name comes from; unlike the task plugins it cannot be blocked.
Each hook imports what it registers only when it is called, so that importing
this module (which every plugin set does first) costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from nlpkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from nlpkit.backbones.checkpoints._common import Family


@hookimpl
def nlpkit_register_backbone_kinds() -> dict[str, Callable[..., Any]]:
    from nlpkit.backbones import KINDS

    return dict(KINDS)


@hookimpl
def nlpkit_register_backbone_presets() -> dict[str, Callable[[], Any]]:
    from nlpkit.backbones.presets import PRESETS

    return dict(PRESETS)


@hookimpl
def nlpkit_register_data_formats() -> dict[str, Callable[..., Any]]:
    from nlpkit.data import FORMATS

    return dict(FORMATS)


@hookimpl
def nlpkit_register_checkpoint_families() -> dict[str, Family]:
    # One family file per architecture, each reading the model types it lists (bert.py: bert and roberta).
    from nlpkit.backbones.checkpoints import bart, bert, deberta, distilbert, gemma, gpt2, llama, modernbert, phi3, t5

    families: tuple[Family, ...] = (bert, distilbert, deberta, modernbert, gpt2, llama, phi3, gemma, bart, t5)
    return {model_type: family for family in families for model_type in family.MODEL_TYPES}
