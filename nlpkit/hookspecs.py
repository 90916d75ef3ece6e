"""The whole plugin contract of nlpkit, in one file (pluggy hook specifications).

A plugin is a module (or any object) with functions named like the specs below
and marked ``@nlpkit.hookimpl``. An implementation may accept any subset of a
spec's parameters; pluggy passes them by name. A function marked as an
implementation whose name matches no spec, or asking for a parameter its spec
lacks, is an error when plugins are loaded (``check_pending``), so a
misspelled hook never fails silently.

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

The ``nlpkit_register_*`` hooks take no arguments and return what the plugin
adds to one registry table (``nlpkit.registry.Registries``). nlpkit calls each
of them through pluggy once per plugin that implements it (a subset hook caller
holding that plugin alone), so that every registered name remembers the plugin
it came from (``nlpkit plugins`` shows it) and a name two plugins register is
an error naming both. None of them is ``firstresult`` or ``historic``: every
plugin's answer counts, and they are called once, after all plugins are
registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from nlpkit.backbones.checkpoints._common import Family
    from nlpkit.tasks import Task

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME"]

PROJECT_NAME = "nlpkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(historic=True)
def nlpkit_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own, for plugins that extend plugins.

    Called right after the plugin manager is made, before any plugin is
    registered. Historic: pluggy replays the call to every plugin registered
    later, as it is registered, so a plugin's specs exist before the plugins
    implementing them are checked.

    Args:
        pluginmanager: the nlpkit plugin manager; call
            ``pluginmanager.add_hookspecs(module_or_class)``.

    Returns:
        Nothing; a value returned is ignored.
    """


@hookspec
def nlpkit_register_tasks() -> list[type[Task]] | None:
    """Register task classes (subclasses of :class:`nlpkit.tasks.Task`).

    Called once per plugin when the registries are built, after every plugin is
    registered. Each class is registered under its ``name`` attribute, which a
    recipe's ``task:`` names; a name registered twice, or one that is a recipe
    section (``data``, ``training`` ...), is an error. Neither firstresult nor
    historic.

    Returns:
        A list of Task subclasses; None registers nothing.
    """


@hookspec
def nlpkit_register_backbone_kinds() -> dict[str, Callable[..., Any]] | None:
    """Register backbone kinds: name -> module class built from a ``BackboneConfig``.

    Called once per plugin when the registries are built. nlpkit's core plugin
    registers ``encoder``, ``decoder`` and ``encoder-decoder``; a config's
    ``kind`` field selects the class, for recipes and for checkpoint folders
    alike. Neither firstresult nor historic.

    Returns:
        A mapping from kind name to a callable ``cls(config) -> torch.nn.Module``;
        None registers nothing.
    """


@hookspec
def nlpkit_register_backbone_presets() -> dict[str, Callable[[], Any]] | None:
    """Register named backbone presets (``encoder-tiny``, ``decoder-base`` ...).

    Called once per plugin when the registries are built; a recipe's
    ``backbone.preset`` names one. Neither firstresult nor historic.

    Returns:
        A mapping from preset name to a function with no arguments returning a
        ``nlpkit.backbones.BackboneConfig``; None registers nothing.
    """


@hookspec
def nlpkit_register_data_formats() -> dict[str, Callable[..., Any]] | None:
    """Register data formats that a recipe's ``data.format`` may name.

    Called once per plugin when the registries are built. Neither firstresult
    nor historic. A loader is called as ``loader(files, **options)`` where
    ``files`` maps a split name (``train``, ``validation``, ``test``) to a local
    path, and returns a ``datasets.DatasetDict`` with those splits. It raises
    ``nlpkit.NlpkitError`` naming the file and line for malformed input.

    Returns:
        A mapping from format name to loader; None registers nothing.
    """


@hookspec
def nlpkit_register_checkpoint_families() -> dict[str, Family] | None:
    """Register checkpoint families: the ``model_type`` of a ``config.json`` -> the code that translates it.

    Called once per plugin when the registries are built. Neither firstresult
    nor historic: a folder's family is looked up by its ``model_type`` in the
    table every plugin filled, so two plugins claiming one model type is an
    error when plugins load, not a race decided by plugin order. Loading a
    folder (``nlpkit.backbones.from_pretrained``, ``backbone.pretrained`` in a
    recipe, ``nlpkit.load``) and saving one (``save_pretrained``, ``export``)
    look families up there. nlpkit's core plugin registers ``bert``,
    ``roberta``, ``distilbert``, ``gpt2``, ``llama``, ``mistral``, ``qwen2``,
    ``qwen3``, ``phi3``, ``gemma``, ``gemma2``, ``gemma3_text``, ``gemma3``
    (multimodal folders, read as their text model), ``bart``, ``marian``,
    ``t5`` and ``mt5`` (``umt5`` is registered to be refused).

    A family is any object with the names that
    ``nlpkit.backbones.checkpoints._common.Family`` lists, usually a module
    like ``nlpkit/backbones/checkpoints/bert.py``: ``ARCHITECTURES`` (holding
    each model type it is registered under), ``PREFIXES``, ``IGNORED``,
    ``config_from_hf(hf, model_type)``, ``config_to_hf(config, model_type)``,
    ``rules(config)``, and optionally ``state_from_hf(state, config)`` /
    ``state_to_hf(state, config)``.
    ``config_from_hf({}, model_type)`` must give the family's defaults
    (``infer_family`` reads the kind a family writes from it; a model type
    registered only to be refused with its reason, like ``umt5``, raises
    ``NlpkitError`` there instead and is never inferred), and the
    config's ``kind`` must be a registered backbone kind.

    Returns:
        A mapping from ``model_type`` to family; None registers nothing.
    """
