"""Name -> object tables filled by plugins, with helpful errors for unknown names."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from nlpkit.errors import NlpkitError

__all__ = ["Registry", "Registries", "suggest"]

T = TypeVar("T")


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """Return "; did you mean 'x'?" for the closest known name, or ""."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass
class Registry(Generic[T]):
    """One table of registered names of one kind (tasks, presets ...).

    Args:
        kind: what the names stand for, used in messages ("task", "backbone preset").
    """

    kind: str
    _entries: dict[str, T] = field(default_factory=dict)
    _owners: dict[str, str] = field(default_factory=dict)

    def register(self, name: str, obj: T, plugin: str) -> None:
        """Add ``name``; a name that another plugin registered already is an error."""
        if not isinstance(name, str) or not name:
            raise NlpkitError(f"plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}")
        if name in self._entries:
            raise NlpkitError(
                f"{self.kind} '{name}' is registered by both plugin '{self._owners[name]}' and plugin '{plugin}'"
            )
        self._entries[name] = obj
        self._owners[name] = plugin

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            NlpkitError: "unknown task 'x'; known: a, b; did you mean 'a'?".
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(self.names()) or "(none)"
            raise NlpkitError(
                f"unknown {self.kind} '{name}'; known: {known}{suggest(str(name), self.names())}"
            ) from None

    def owner(self, name: str) -> str:
        """The name of the plugin that registered ``name``."""
        return self._owners[name]

    def names(self) -> list[str]:
        """The registered names, sorted (what messages and ``nlpkit plugins`` list)."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in the order they were registered, for lookups where order decides."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Registries:
    """All the tables that plugins fill; built by :func:`nlpkit.plugins.load_plugins`."""

    tasks: Registry[Any] = field(default_factory=lambda: Registry("task"))
    backbone_kinds: Registry[Any] = field(default_factory=lambda: Registry("backbone kind"))
    backbone_presets: Registry[Any] = field(default_factory=lambda: Registry("backbone preset"))
    data_formats: Registry[Any] = field(default_factory=lambda: Registry("data format"))
    # A config.json's model_type -> its family (the Family protocol of nlpkit/backbones/checkpoints/_common.py).
    checkpoint_families: Registry[Any] = field(default_factory=lambda: Registry("checkpoint family"))

    def tables(self) -> dict[str, Registry[Any]]:
        """Every table by its attribute name (the name ``nlpkit plugins`` and the registry snapshot use)."""
        return {
            "tasks": self.tasks,
            "backbone_kinds": self.backbone_kinds,
            "backbone_presets": self.backbone_presets,
            "data_formats": self.data_formats,
            "checkpoint_families": self.checkpoint_families,
        }
