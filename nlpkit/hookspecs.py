"""The whole plugin contract of nlpkit, in one file (pluggy hook specifications).

A plugin is a module (or any object) with functions named like the specs below
and marked ``@nlpkit.hookimpl``. An implementation may accept any subset of a
spec's parameters; pluggy passes them by name. A function marked as an
implementation whose name matches no spec is an error when plugins are loaded
(``check_pending``), so a misspelled hook never fails silently.

Plugins are found through the ``nlpkit`` entry-point group (built-in ones
included), named with ``--plugin MODULE`` on the command line, and blocked with
``--no-plugin NAME``. Example plugin module::

    import nlpkit
    from nlpkit.tasks import Task

    class Regression(Task):
        name = "regression"
        ...

    @nlpkit.hookimpl
    def nlpkit_register_tasks():
        return [Regression]

The registration hooks take no arguments and return what the plugin adds;
nlpkit calls each plugin's implementation separately so that every registered
name remembers the plugin it came from (``nlpkit plugins`` shows it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from nlpkit.tasks import Task

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME"]

PROJECT_NAME = "nlpkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(historic=True)
def nlpkit_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own, for plugins that extend plugins.

    Called once per plugin, when it is registered (historic: plugins registered
    later still receive the call).

    Args:
        pluginmanager: the nlpkit plugin manager; call
            ``pluginmanager.add_hookspecs(module)``.
    """


@hookspec
def nlpkit_register_tasks() -> list[type[Task]]:
    """Register task classes (subclasses of :class:`nlpkit.tasks.Task`).

    Called once when the registries are built. Each class is registered under
    its ``name`` attribute; a name registered twice is an error.

    Returns:
        A list of Task subclasses.
    """


@hookspec
def nlpkit_register_backbone_kinds() -> dict[str, Callable[..., Any]]:
    """Register backbone kinds: name -> module class built from a ``BackboneConfig``.

    nlpkit's core plugin registers ``encoder``, ``decoder`` and
    ``encoder-decoder``. A config's ``kind`` field selects the class.

    Returns:
        A mapping from kind name to a callable ``cls(config) -> torch.nn.Module``.
    """


@hookspec
def nlpkit_register_backbone_presets() -> dict[str, Callable[[], Any]]:
    """Register named backbone presets (``encoder-tiny``, ``decoder-base`` ...).

    Returns:
        A mapping from preset name to a function with no arguments returning a
        ``nlpkit.backbones.BackboneConfig``.
    """


@hookspec
def nlpkit_register_data_formats() -> dict[str, Callable[..., Any]]:
    """Register data formats that a recipe's ``data.format`` may name.

    A loader is called as ``loader(files, **options)`` where ``files`` maps a
    split name (``train``, ``validation``, ``test``) to a local path, and
    returns a ``datasets.DatasetDict`` with those splits. It raises
    ``nlpkit.NlpkitError`` naming the file and line for malformed input.

    Returns:
        A mapping from format name to loader.
    """


@hookspec(firstresult=True)
def nlpkit_detect_checkpoint(path: Path) -> Any | None:
    """Say whether this plugin can read the pretrained checkpoint folder ``path``.

    Stops at the first non-None result.

    Args:
        path: a local folder (for example a Hugging Face-format folder with
            ``config.json``).

    Returns:
        An object describing how to load the folder, or None when this plugin
        does not recognise it.
    """
