"""nlpkit: a plugin-based NLP task library on PyTorch and Lightning.

Public API::

    import nlpkit
    result = nlpkit.run("recipes/quickstart.yaml", overrides=["training.epochs=1"])
    model = nlpkit.load(result.run_dir)
    model.predict("Striker scores twice as the league leaders win again")

Heavy modules (torch, Lightning, datasets) are imported on first use, so that
``nlpkit check`` and recipe errors answer quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nlpkit.errors import NlpkitError
from nlpkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from nlpkit.inference import LoadedModel, load
    from nlpkit.tasks import Task
    from nlpkit.training.trainer import RunResult, run

__all__ = ["NlpkitError", "hookimpl", "run", "load", "Task", "RunResult", "LoadedModel", "__version__"]

__version__ = "0.1.0"

_LAZY = {
    "run": ("nlpkit.training.trainer", "run"),
    "RunResult": ("nlpkit.training.trainer", "RunResult"),
    "load": ("nlpkit.inference", "load"),
    "LoadedModel": ("nlpkit.inference", "LoadedModel"),
    "Task": ("nlpkit.tasks", "Task"),
}


_SUBMODULES = {"backbones", "tokenization", "tasks", "recipe", "data", "plugins", "registry", "testing", "generation"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        return getattr(importlib.import_module(module_name), attribute)
    if name in _SUBMODULES:
        return importlib.import_module(f"nlpkit.{name}")
    raise AttributeError(f"module 'nlpkit' has no attribute '{name}'")
