"""Registries: name -> object tables with owners, helpful unknown-name errors, and the registry snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlpkit.errors import NlpkitError
from nlpkit.plugins import load_plugins
from nlpkit.registry import Registries, Registry, suggest

SNAPSHOT = Path(__file__).with_name("registry_contents.json")


def _registry(*names: str, plugin: str = "toy") -> Registry[object]:
    registry: Registry[object] = Registry("task")
    for name in names:
        registry.register(name, object(), plugin)
    return registry


# -- the snapshot (spaCy's registry_contents.json) ---------------------------


def test_registry_contents_match_the_snapshot():
    # autoload=False: nlpkit's own plugins only, whatever else is installed here.
    registries = load_plugins(autoload=False).registries
    current = {
        table: {name: registry.owner(name) for name in registry.names()}
        for table, registry in registries.tables().items()
    }
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))

    if current != expected:
        lines = []
        for table in sorted(set(current) | set(expected)):
            now, before = current.get(table, {}), expected.get(table, {})
            lost = sorted(set(before) - set(now))
            added = sorted(set(now) - set(before))
            moved = sorted(n for n in set(now) & set(before) if now[n] != before[n])
            if lost or added or moved:
                lines.append(f"  {table}: lost {lost}, added {added}, changed owner {moved}")
        pytest.fail(
            "registered names differ from tests/unit/registry_contents.json:\n"
            + "\n".join(lines)
            + "\nA lost or renamed name breaks recipes that use it: keep the old name (register 'name.v2' "
            "beside it for an incompatible change). If the change is deliberate, replace the file's content "
            "with the JSON below and say why in the commit:\n"
            + json.dumps(current, indent=2, sort_keys=True),
            pytrace=False,
        )


# -- unknown names -------------------------------------------------------------


def test_unknown_task_lists_known_names_and_suggests_the_closest():
    tasks = load_plugins(autoload=False).registries.tasks

    with pytest.raises(NlpkitError) as error:
        tasks.get("clasification")
    message = str(error.value)
    assert message.startswith("unknown task 'clasification'")
    assert "; known: classification" in message
    assert message.endswith("; did you mean 'classification'?")


def test_unknown_name_far_from_every_known_one_has_no_suggestion():
    registry = _registry("encoder-tiny", "decoder-tiny")

    with pytest.raises(NlpkitError) as error:
        registry.get("zzz")
    message = str(error.value)
    assert "known: decoder-tiny, encoder-tiny" in message
    assert "did you mean" not in message


def test_unknown_name_in_an_empty_registry_says_none_are_known():
    with pytest.raises(NlpkitError, match=r"unknown task 'x'; known: \(none\)"):
        _registry().get("x")


def test_unhashable_name_is_a_user_error_not_a_type_error():
    # a recipe may hold a list where a name belongs
    with pytest.raises(NlpkitError, match=r"unknown task"):
        _registry("classification").get(["classification"])


def test_suggest():
    assert suggest("encoder-tny", ["decoder-tiny", "encoder-tiny"]) == "; did you mean 'encoder-tiny'?"
    assert suggest("qqq", ["encoder-tiny"]) == ""
    assert suggest("anything", []) == ""


# -- registering ---------------------------------------------------------------


def test_register_get_owner_and_sorted_names():
    registry: Registry[object] = Registry("backbone preset")
    small, base = object(), object()
    registry.register("encoder-small", small, "core")
    registry.register("encoder-base", base, "extra")

    assert registry.get("encoder-small") is small
    assert registry.owner("encoder-base") == "extra"
    assert registry.names() == ["encoder-base", "encoder-small"]
    assert list(registry) == ["encoder-base", "encoder-small"]
    assert len(registry) == 2
    assert "encoder-base" in registry and "encoder-large" not in registry


def test_a_name_registered_twice_names_both_plugins_and_keeps_the_first():
    registry = _registry("classification", plugin="first")
    original = registry.get("classification")

    with pytest.raises(NlpkitError) as error:
        registry.register("classification", object(), "second")
    message = str(error.value)
    assert "task 'classification'" in message
    assert "plugin 'first'" in message and "plugin 'second'" in message
    assert registry.get("classification") is original
    assert registry.owner("classification") == "first"


@pytest.mark.parametrize("name", ["", None, 3])
def test_an_invalid_name_is_an_error_naming_the_plugin(name):
    with pytest.raises(NlpkitError) as error:
        _registry().register(name, object(), "toy")
    assert "plugin 'toy'" in str(error.value)
    assert repr(name) in str(error.value)


def test_each_table_names_its_kind_in_messages():
    tables = Registries().tables()

    assert {table: registry.kind for table, registry in tables.items()} == {
        "tasks": "task",
        "backbone_kinds": "backbone kind",
        "backbone_presets": "backbone preset",
        "data_formats": "data format",
        "checkpoint_families": "checkpoint family",
    }
    with pytest.raises(NlpkitError, match=r"^unknown backbone preset 'x'"):
        tables["backbone_presets"].get("x")
