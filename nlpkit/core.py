"""nlpkit's essential plugin: the three backbone kinds, their presets and the data formats.

It is registered like any plugin, under the name ``core``, so ``nlpkit plugins``
shows where each name comes from; unlike the task plugins it cannot be blocked.
"""

from __future__ import annotations

from typing import Any, Callable

from nlpkit.hookspecs import hookimpl


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
