"""The plugin manager: nlpkit's own plugins, installed entry points, explicit modules.

Set-up order follows pytest's: specs, then the essential core plugin, then user
blocks, then nlpkit's own entry points, then third-party entry points (unless
``NLPKIT_DISABLE_PLUGIN_AUTOLOAD`` is set), then modules named with
``--plugin``, then ``check_pending`` so a misspelled hook is an error. Last,
the ``nlpkit_register_*`` hooks fill the registries.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from nlpkit import hookspecs
from nlpkit.errors import NlpkitError
from nlpkit.registry import Registries, suggest

__all__ = ["PluginInfo", "PluginSet", "load_plugins", "ENTRY_POINT_GROUP", "DISABLE_AUTOLOAD_ENV"]

ENTRY_POINT_GROUP = "nlpkit"
DISABLE_AUTOLOAD_ENV = "NLPKIT_DISABLE_PLUGIN_AUTOLOAD"
DISTRIBUTION = "nlpkit"
# Registered by name before anything else and never blocked (pytest's "essential plugins"):
# without the backbone kinds and data formats no recipe can run.
ESSENTIAL_PLUGINS = {"core": "nlpkit.core"}

# Registration hook -> the registry table it fills.
_REGISTRATION_HOOKS = {
    "nlpkit_register_tasks": "tasks",
    "nlpkit_register_backbone_kinds": "backbone_kinds",
    "nlpkit_register_backbone_presets": "backbone_presets",
    "nlpkit_register_data_formats": "data_formats",
    "nlpkit_register_checkpoint_families": "checkpoint_families",
}
# A task's recipe section is named after the task, so no task may take the name of one of the recipe's
# own sections: nlpkit.recipe.RESERVED_TASK_NAMES (tests/unit/test_plugins.py keeps the two equal). Spelt
# out, not imported: the checkpoint code imports this module and the recipe imports the checkpoint code,
# so importing the recipe here would close an import cycle (tests/unit/test_imports.py).
RESERVED_TASK_NAMES = frozenset({"task", "backbone", "data", "tokenizer", "optimization", "training", "trainer",
                                 "peft", "logging", "report", "output_dir", "name"})
# What nlpkit's checkpoint code reads of a family (the Family protocol), checked when it is registered
# so that a plugin's incomplete family fails as the plugin loads, not half-way through reading a folder.
_FAMILY_MEMBERS = ("ARCHITECTURES", "PREFIXES", "IGNORED", "config_from_hf", "config_to_hf", "rules")


@dataclass
class PluginInfo:
    """Where a plugin came from, for ``nlpkit plugins``."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PluginSet:
    """A loaded plugin manager, the registries its plugins filled, and their provenance."""

    manager: pluggy.PluginManager
    registries: Registries
    plugins: list[PluginInfo]


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _import_plugin(module_name: str, origin: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise NlpkitError(f"cannot import plugin module '{module_name}' ({origin}): {error}") from None


def _load_entry_point(ep: importlib.metadata.EntryPoint, dist_name: str | None) -> Any:
    """The plugin an entry point names: a module, or an object in one (``module:attribute``)."""
    try:
        return ep.load()
    except (ImportError, AttributeError) as error:
        raise NlpkitError(f"cannot load plugin '{ep.name}' ({ep.value}) of {dist_name}: {error}") from None


def load_plugins(
    plugins: Iterable[str] = (),
    blocked: Iterable[str] = (),
    autoload: bool | None = None,
    entry_points: bool = True,
) -> PluginSet:
    """Build a plugin manager and fill the registries.

    Args:
        plugins: extra plugin modules to import and register (``--plugin``).
        blocked: plugin names not to register (``--no-plugin``).
        autoload: load third-party entry points; by default yes unless the
            ``NLPKIT_DISABLE_PLUGIN_AUTOLOAD`` environment variable is set.
            nlpkit's own plugins are always loaded unless blocked.
        entry_points: False loads no entry point at all, nlpkit's own task
            plugins included: the core plugin and ``plugins`` only. That set
            builds in milliseconds, where importing the task plugins takes
            seconds (torchmetrics, datasets); the checkpoint functions use it
            to look up nlpkit's own families.

    Returns:
        The manager, the filled registries and one :class:`PluginInfo` per plugin.

    Raises:
        NlpkitError: unknown blocked name, unimportable module, a hook name that
            matches no spec, or a name registered twice.
    """
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.hook.nlpkit_addhooks.call_historic(kwargs={"pluginmanager": manager})
    infos: dict[str, PluginInfo] = {}
    nlpkit_version = _distribution_version(DISTRIBUTION)

    def register(plugin: Any, name: str, distribution: str | None, version: str | None) -> None:
        try:
            manager.register(plugin, name=name)
        except pluggy.PluginValidationError as error:
            raise NlpkitError(f"plugin '{name}': {error}") from None
        except ValueError as error:  # pluggy: duplicate name or module registered twice
            raise NlpkitError(f"plugin '{name}' cannot be registered: {error}") from None
        infos[name] = PluginInfo(name, getattr(plugin, "__name__", repr(plugin)), distribution, version)

    for name, module_name in ESSENTIAL_PLUGINS.items():
        register(_import_plugin(module_name, "built-in"), name, DISTRIBUTION, nlpkit_version)

    found = _entry_points() if entry_points else []
    plugins = list(plugins)
    known = set(ESSENTIAL_PLUGINS) | {ep.name for ep in found} | set(plugins)
    for name in blocked:
        if name in ESSENTIAL_PLUGINS:
            raise NlpkitError(f"plugin '{name}' is essential and cannot be blocked")
        if name not in known:
            raise NlpkitError(
                f"cannot block unknown plugin '{name}'; known: {', '.join(sorted(known))}{suggest(name, sorted(known))}"
            )
        manager.set_blocked(name)

    for ep in found:
        dist_name = ep.dist.name if ep.dist is not None else None
        own = dist_name is not None and dist_name.lower() == DISTRIBUTION
        if (own or autoload) and not manager.has_plugin(ep.name) and not manager.is_blocked(ep.name):
            plugin = _load_entry_point(ep, dist_name)
            register(plugin, ep.name, dist_name, ep.dist.version if ep.dist is not None else None)

    for module_name in plugins:
        if manager.has_plugin(module_name) or manager.is_blocked(module_name):
            continue
        plugin = _import_plugin(module_name, "--plugin")
        if manager.is_registered(plugin):  # an installed plugin named again: already loaded
            continue
        register(plugin, module_name, None, None)

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise NlpkitError(f"plugin '{manager.get_name(error.plugin)}': {error}; known hooks: "
                          f"{', '.join(sorted(h for h in dir(hookspecs) if h.startswith('nlpkit_')))}") from None

    registries = _fill_registries(manager, infos)
    return PluginSet(manager, registries, list(infos.values()))


def _check_task_class(name: Any, task: Any, plugin: str) -> None:
    """Refuse task names and metric names that would collide with the recipe's own keys."""
    if name in RESERVED_TASK_NAMES:
        raise NlpkitError(f"plugin '{plugin}' registers a task named '{name}', which is a recipe section name")
    if "loss" in getattr(task, "metric_names", ()):
        raise NlpkitError(f"plugin '{plugin}': task '{name}' has a metric named 'loss', which nlpkit logs itself")


def _check_family(name: str, family: Any, plugin: str) -> None:
    """Refuse a checkpoint family that lacks what loading and saving a folder read of it."""
    missing = [member for member in _FAMILY_MEMBERS if not hasattr(family, member)]
    if not missing and name not in family.ARCHITECTURES:
        missing = [f"ARCHITECTURES[{name!r}]"]
    if missing:
        raise NlpkitError(f"plugin '{plugin}': checkpoint family '{name}' ({family!r}) has no {', '.join(missing)}; "
                          f"a family offers {', '.join(_FAMILY_MEMBERS)}")


def _fill_registries(manager: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registries:
    """Call each registration hook once per plugin, so each name knows its plugin.

    The calls go through pluggy (argument checks, tracing), each by a subset
    hook caller that leaves out every other plugin, as pytest calls a hook
    for one conftest's plugins; plugins are asked in pluggy's call order, the
    most recently registered first.
    """
    registries = Registries()
    tables = registries.tables()
    everyone = manager.get_plugins()
    for hook_name, table_name in _REGISTRATION_HOOKS.items():
        table = tables[table_name]
        for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
            alone = manager.subset_hook_caller(hook_name, remove_plugins=everyone - {impl.plugin})
            for result in alone():  # pluggy drops None: [] or [this plugin's answer]
                # A plugin's names are unchecked until register and _check_task_class check them.
                items: list[tuple[Any, Any]]
                if table_name == "tasks":
                    items = [(getattr(task, "name", None), task) for task in result]
                    for name, task in items:
                        _check_task_class(name, task, impl.plugin_name)
                else:
                    items = list(dict(result).items())
                for name, obj in items:
                    table.register(name, obj, impl.plugin_name)
                    if table_name == "checkpoint_families":
                        _check_family(name, obj, impl.plugin_name)
                    infos[impl.plugin_name].registered.setdefault(table_name, []).append(name)
    return registries
