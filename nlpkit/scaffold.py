"""``nlpkit new-plugin``: write a new task plugin package to start from.

A template is the folder ``nlpkit/templates/plugin/<kind>/``, laid out as the
package it makes: a file ending in ``.tmpl`` is rendered with
:class:`string.Template` and written without the suffix (``${name}`` the task
name, ``${module}``, ``${distribution}``, ``${class_name}``, ``${title}``,
``${nlpkit_version}``; ``$$`` writes a ``$``), any other file is copied as it
is. Two names change on the way: the folder ``module`` becomes the package
(``nlpkit_<name>``), and ``gitignore`` becomes ``.gitignore`` (package data
leaves dotfiles out).

Every package written installs (``pip install -e .``), passes its own test
(``nlpkit.testing.check_task``) and trains its tiny recipe in seconds, with no
edit: ``tests/integration/test_new_plugin.py`` makes each kind and does all three.
"""

from __future__ import annotations

import keyword
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from nlpkit._files import staged_folder
from nlpkit.errors import NlpkitError

__all__ = ["KINDS", "PluginNames", "plugin_names", "write_plugin"]

TEMPLATES = Path(__file__).resolve().parent / "templates" / "plugin"

# The templates: a label per text (like the classification plugin), a tag per word (a simple NER),
# a causal language model that generates (like the generation plugin).
KINDS = ("sequence", "tokens", "generation")

# Lowercase words joined by single underscores: a module name, a distribution name once
# the underscores are hyphens, and a registry name (style: short and lowercase).
_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
# What the templates' modules import: a task class of one of these names would hide it.
_IMPORTED = {"Any", "BackboneConfig", "ClassVar", "GeneratesText", "NlpkitError", "Perplexity", "Task", "TaskModel",
             "TaskTokenizer"}


@dataclass(frozen=True)
class PluginNames:
    """The names of a new plugin, all derived from its task name.

    Attributes:
        task: the task's registry name and entry-point name (``sentiment``).
        module: the Python package (``nlpkit_sentiment``).
        distribution: the pip distribution (``nlpkit-sentiment``).
        class_name: the Task subclass (``Sentiment``; ``pos_tags`` gives ``PosTags``).
        title: the task in words, for docstrings (``Pos tags``).
    """

    task: str
    module: str
    distribution: str
    class_name: str
    title: str


def plugin_names(name: str) -> PluginNames:
    """Check a new plugin's name and derive the others from it.

    Raises:
        NlpkitError: a name that is not lowercase words joined by underscores,
            that starts with ``nlpkit``, or whose class would hide a name the
            task module imports (``task`` -> ``Task``).
    """
    if not _NAME.fullmatch(name):
        fixed = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        hint = f"; try '{fixed}'" if _NAME.fullmatch(fixed) else ""
        raise NlpkitError(f"NAME: expected lowercase letters, digits and single underscores, starting with a letter "
                          f"(the task's name, e.g. 'sentiment'), got '{name}'{hint}")
    if name == "nlpkit" or name.startswith("nlpkit_"):
        rest = name.removeprefix("nlpkit").lstrip("_")
        hint = f"; try '{rest}'" if rest else ""
        raise NlpkitError(f"NAME: the task's name, without 'nlpkit_' (the package becomes nlpkit_NAME), "
                          f"got '{name}'{hint}")
    class_name = "".join(part.capitalize() for part in name.split("_"))
    if class_name in _IMPORTED or keyword.iskeyword(class_name) or not class_name.isidentifier():
        raise NlpkitError(f"NAME: '{name}' would name the task class {class_name}, which the task module "
                          f"already uses; choose another name")
    return PluginNames(name, f"nlpkit_{name}", "nlpkit-" + name.replace("_", "-"), class_name,
                       name.replace("_", " ").capitalize())


def write_plugin(
    name: str,
    kind: str = "sequence",
    output: str | Path = ".",
    *,
    taken: Callable[[], Mapping[str, str]] | None = None,
) -> Path:
    """Write a new plugin package into ``output/name``, from the template of ``kind``.

    Args:
        name: the task's name (see :func:`plugin_names`).
        kind: ``sequence``, ``tokens`` or ``generation`` (:data:`KINDS`).
        output: the folder that receives the package's folder.
        taken: gives the names already in use (task and plugin names) with what
            uses each, for the message; called after the cheap checks, since
            finding them loads the plugins.

    Returns:
        The package's folder.

    Raises:
        NlpkitError: a bad name or kind, a name in use, or a target that
            exists and is not an empty folder; nothing is written then.
    """
    names = plugin_names(name)
    if kind not in KINDS:
        raise NlpkitError(f"--kind: unknown kind '{kind}'; known: {', '.join(KINDS)}")
    target = Path(output) / names.task
    _check_target(target)
    used = taken() if taken is not None else {}
    if names.task in used:
        raise NlpkitError(f"NAME: '{names.task}' is taken ({used[names.task]}); choose another name")
    files = dict(_rendered(kind, names))  # every template rendered before anything is written
    with staged_folder(target) as staging:
        for relative, data in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return target


def _check_target(target: Path) -> None:
    for folder in (target, *target.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            where = "is a file" if folder == target else f"lies inside {folder}, which is a file"
            raise NlpkitError(f"{target} {where}; new-plugin writes a new folder")
        if folder == target and any(target.iterdir()):
            raise NlpkitError(f"{target} already exists and is not empty; new-plugin writes a new folder "
                              f"(choose another NAME or --output, or remove it)")
        return


def _rendered(kind: str, names: PluginNames) -> Iterator[tuple[Path, bytes]]:
    """(path in the package, content) of every file of the kind's template."""
    from nlpkit import __version__

    values = {"name": names.task, "module": names.module, "distribution": names.distribution,
              "class_name": names.class_name, "title": names.title, "nlpkit_version": __version__}
    root = TEMPLATES / kind
    for source in sorted(root.rglob("*")):
        if not source.is_file() or "__pycache__" in source.parts:
            continue
        parts = list(source.relative_to(root).parts)
        if parts[0] == "module":
            parts[0] = names.module
        if parts == ["gitignore"]:
            parts = [".gitignore"]
        if source.suffix == ".tmpl":
            parts[-1] = parts[-1].removesuffix(".tmpl")
            text = string.Template(source.read_text(encoding="utf-8")).substitute(values)
            yield Path(*parts), text.encode("utf-8")
        else:
            yield Path(*parts), source.read_bytes()
