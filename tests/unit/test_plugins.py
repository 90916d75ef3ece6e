"""The plugin manager: built-in and third-party plugins, blocking, autoload, safety rails, ``nlpkit plugins``.

Every test builds its own plugin manager (``load_plugins`` makes a new one per
call). Third-party plugins are the small modules in ``tests/assets/plugins``,
put on ``sys.path`` for one test; an installed third-party distribution is faked
with a ``.dist-info`` folder in ``tmp_path``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

import pytest

import nlpkit
from nlpkit.cli import main
from nlpkit.errors import NlpkitError
from nlpkit.plugins import DISABLE_AUTOLOAD_ENV, PluginInfo, load_plugins

ASSET_PLUGINS = Path(__file__).resolve().parents[1] / "assets" / "plugins"
FAKE_MODULE = "fake_nlpkit_plugin"
BACKBONE_KINDS = {"encoder", "decoder", "encoder-decoder"}
PRESETS = {
    f"{kind}-{size}" for kind in ("encoder", "decoder", "encoder-decoder") for size in ("tiny", "small", "base")
}
DATA_FORMATS = {"csv", "tsv", "json", "jsonl", "parquet", "text"}
# The task plugins that ship with nlpkit (entry points of the nlpkit distribution).
BUILTIN_TASKS = ["classification", "generation", "ner", "translation"]


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No autoload switch from the caller's shell; no test plugin module outlives its test."""
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    yield
    for name in [n for n in sys.modules if n.startswith("toy_") or n == FAKE_MODULE]:
        del sys.modules[name]


@pytest.fixture
def asset_plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(ASSET_PLUGINS))


def _plugin(plugin_set, name: str) -> PluginInfo:
    by_name = {info.name: info for info in plugin_set.plugins}
    assert name in by_name, f"plugin '{name}' not loaded; loaded: {sorted(by_name)}"
    return by_name[name]


def _fake_distribution(
    root: Path, monkeypatch, entry_point: str = FAKE_MODULE, module_source: str | None = None
) -> None:
    """Install (on sys.path) a distribution 'fakeplugin' 0.1 declaring the nlpkit entry point 'fake'."""
    info = root / "fakeplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nlpkit]\nfake = {entry_point}\n")
    (root / f"{FAKE_MODULE}.py").write_text(
        module_source
        or "import nlpkit\n\n\n@nlpkit.hookimpl\ndef nlpkit_register_data_formats():\n"
        "    return {'fake-format': lambda files, **options: None}\n"
    )
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


# -- defaults ---------------------------------------------------------------


def test_defaults_load_core_and_classification_from_the_nlpkit_distribution():
    plugin_set = load_plugins()

    version = importlib.metadata.version("nlpkit")
    assert version
    for name, module in (("core", "nlpkit.core"), ("classification", "nlpkit_classification")):
        info = _plugin(plugin_set, name)
        assert (info.module, info.distribution, info.version) == (module, "nlpkit", version)
        assert plugin_set.manager.has_plugin(name)


def test_defaults_fill_every_registry_and_remember_the_owner():
    registries = load_plugins().registries

    assert "classification" in registries.tasks
    assert registries.tasks.owner("classification") == "classification"
    assert registries.tasks.get("classification").name == "classification"
    for table, expected in (
        (registries.backbone_kinds, BACKBONE_KINDS),
        (registries.backbone_presets, PRESETS),
        (registries.data_formats, DATA_FORMATS),
    ):
        assert expected <= set(table.names()), table.kind
        assert {table.owner(name) for name in expected} == {"core"}, table.kind


def test_plugin_info_lists_what_each_plugin_registered():
    plugin_set = load_plugins()

    assert _plugin(plugin_set, "classification").registered == {"tasks": ["classification"]}
    core = _plugin(plugin_set, "core").registered
    assert "tasks" not in core
    assert set(core["backbone_kinds"]) == BACKBONE_KINDS
    assert set(core["backbone_presets"]) == PRESETS
    assert set(core["data_formats"]) == DATA_FORMATS


# -- --plugin ------------------------------------------------------------------


def test_named_module_registers_a_third_party_task(asset_plugins):
    plugin_set = load_plugins(plugins=["toy_regression"], autoload=False)

    tasks = plugin_set.registries.tasks
    assert tasks.names() == sorted([*BUILTIN_TASKS, "toy-regression"])
    assert tasks.owner("toy-regression") == "toy_regression"
    assert tasks.get("toy-regression").__name__ == "ToyRegression"
    info = _plugin(plugin_set, "toy_regression")
    assert (info.module, info.distribution, info.version) == ("toy_regression", None, None)
    assert info.registered == {"tasks": ["toy-regression"]}


def test_named_module_that_cannot_be_imported_is_an_error():
    with pytest.raises(NlpkitError, match=r"cannot import plugin module 'toy_missing'"):
        load_plugins(plugins=["toy_missing"])


def test_naming_an_already_loaded_plugin_module_is_harmless():
    plugin_set = load_plugins(plugins=["nlpkit_classification"])

    assert plugin_set.registries.tasks.names() == BUILTIN_TASKS
    assert plugin_set.registries.tasks.owner("classification") == "classification"


# -- --no-plugin ---------------------------------------------------------------


def test_blocking_classification_removes_its_task(asset_plugins):
    plugin_set = load_plugins(plugins=["toy_regression"], blocked=["classification"], autoload=False)

    assert "classification" not in [info.name for info in plugin_set.plugins]
    assert not plugin_set.manager.has_plugin("classification")
    assert plugin_set.registries.tasks.names() == sorted([*set(BUILTIN_TASKS) - {"classification"}, "toy-regression"])
    with pytest.raises(NlpkitError) as error:
        plugin_set.registries.tasks.get("classification")
    message = str(error.value)
    assert "unknown task 'classification'" in message
    assert "toy-regression" in message.split("known:")[1]


def test_blocking_core_is_an_error():
    with pytest.raises(NlpkitError, match=r"'core' is essential"):
        load_plugins(blocked=["core"])


def test_blocking_an_unknown_plugin_suggests_a_close_name():
    with pytest.raises(NlpkitError) as error:
        load_plugins(blocked=["clasification"])
    message = str(error.value)
    assert "unknown plugin 'clasification'" in message
    assert "classification" in message.split("known:")[1]
    assert "did you mean 'classification'?" in message


# -- entry points and autoload ---------------------------------------------------


def test_third_party_entry_point_is_loaded_with_its_distribution(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, monkeypatch)

    plugin_set = load_plugins()

    info = _plugin(plugin_set, "fake")
    assert (info.module, info.distribution, info.version) == (FAKE_MODULE, "fakeplugin", "0.1")
    assert plugin_set.registries.data_formats.owner("fake-format") == "fake"
    assert _plugin(plugin_set, "classification").distribution == "nlpkit"


@pytest.mark.parametrize(
    ("env", "autoload", "fake_loaded"),
    [
        (None, None, True),
        ("1", None, False),
        (None, False, False),
        ("1", True, True),  # an explicit argument wins over the environment
    ],
    ids=["default", "env-disables", "argument-disables", "argument-overrides-env"],
)
def test_autoload_switch_skips_only_third_party_entry_points(tmp_path, monkeypatch, env, autoload, fake_loaded):
    _fake_distribution(tmp_path, monkeypatch)
    if env is not None:
        monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, env)

    plugin_set = load_plugins(autoload=autoload)

    names = [info.name for info in plugin_set.plugins]
    assert ("fake" in names) is fake_loaded
    assert ("fake-format" in plugin_set.registries.data_formats) is fake_loaded
    assert {"core", "classification"} <= set(names)
    assert "classification" in plugin_set.registries.tasks


def test_blocking_an_installed_third_party_plugin(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, monkeypatch)

    plugin_set = load_plugins(blocked=["fake"])

    assert "fake" not in [info.name for info in plugin_set.plugins]
    assert "fake-format" not in plugin_set.registries.data_formats


def test_entry_point_may_name_an_object_in_a_module(tmp_path, monkeypatch):
    source = (
        "import nlpkit\n\n\nclass Plugin:\n    @staticmethod\n    @nlpkit.hookimpl\n"
        "    def nlpkit_register_data_formats():\n        return {'fake-format': lambda files, **options: None}\n"
    )
    _fake_distribution(tmp_path, monkeypatch, entry_point=f"{FAKE_MODULE}:Plugin", module_source=source)

    plugin_set = load_plugins()

    assert plugin_set.registries.data_formats.owner("fake-format") == "fake"


# -- safety rails ----------------------------------------------------------------


def test_misspelled_hook_is_an_error_naming_plugin_and_hook(asset_plugins):
    with pytest.raises(NlpkitError) as error:
        load_plugins(plugins=["toy_misspelled"])
    message = str(error.value)
    assert "plugin 'toy_misspelled'" in message
    assert "unknown hook 'nlpkit_register_task'" in message
    assert "nlpkit_register_tasks" in message  # the known hooks are listed


def test_hook_asking_for_a_parameter_the_spec_lacks_is_an_error(asset_plugins):
    with pytest.raises(NlpkitError) as error:
        load_plugins(plugins=["toy_bad_argument"])
    message = str(error.value)
    assert "plugin 'toy_bad_argument'" in message
    assert "nlpkit_detect_checkpoint" in message
    assert "device" in message


def test_two_plugins_registering_one_task_name_is_an_error_naming_both(asset_plugins):
    with pytest.raises(NlpkitError) as error:
        load_plugins(plugins=["toy_clash"])
    message = str(error.value)
    assert "task 'classification'" in message
    assert "plugin 'classification'" in message
    assert "plugin 'toy_clash'" in message


@pytest.mark.parametrize(
    "order", [["toy_hookspecs", "toy_extension"], ["toy_extension", "toy_hookspecs"]], ids=["specs-first", "impl-first"]
)
def test_plugin_adds_its_own_hooks_through_addhooks(asset_plugins, order):
    plugin_set = load_plugins(plugins=order)

    assert plugin_set.manager.hook.nlpkit_toy_greeting.has_spec()
    assert plugin_set.manager.hook.nlpkit_toy_greeting(name="nlpkit") == ["hello nlpkit"]


def test_hook_of_a_plugin_that_is_not_loaded_is_unknown(asset_plugins):
    with pytest.raises(NlpkitError, match=r"unknown hook 'nlpkit_toy_greeting'"):
        load_plugins(plugins=["toy_extension"])


# -- nlpkit plugins ----------------------------------------------------------------


def _plugin_listing(text: str) -> dict[str, tuple[str, dict[str, list[str]]]]:
    """``nlpkit plugins`` output -> {plugin: (header line, {table: names})}."""
    listing: dict[str, tuple[str, dict[str, list[str]]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith(" "):
            current = {}
            listing[line.split(":")[0]] = (line, current)
        else:
            table, names = line.strip().split(": ", 1)
            current[table] = names.split(", ")
    return listing


def test_plugins_verb_lists_provenance_and_registered_names(capsys):
    assert main(["plugins"]) == 0

    listing = _plugin_listing(capsys.readouterr().out)
    version = nlpkit.__version__
    for name, module in (("core", "nlpkit.core"), ("classification", "nlpkit_classification")):
        header, _ = listing[name]
        assert f"module {module}" in header
        assert f"distribution nlpkit {version}" in header
    assert listing["classification"][1] == {"tasks": ["classification"]}
    assert set(listing["core"][1]["backbone kinds"]) == BACKBONE_KINDS
    assert set(listing["core"][1]["backbone presets"]) == PRESETS


def test_plugins_verb_honours_plugin_and_no_plugin(asset_plugins, capsys):
    assert main(["plugins", "--plugin", "toy_regression", "--no-plugin", "classification"]) == 0

    listing = _plugin_listing(capsys.readouterr().out)
    assert "classification" not in listing
    header, registered = listing["toy_regression"]
    assert "module toy_regression" in header
    assert "None" not in header
    assert registered == {"tasks": ["toy-regression"]}


def test_plugins_verb_reports_a_user_error_in_one_line(capsys):
    assert main(["plugins", "--no-plugin", "nope"]) == 2

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("nlpkit: error:")
    assert "'nope'" in lines[0]
    assert captured.out == ""


def test_task_names_and_metric_names_that_collide_with_the_recipe_are_refused(tmp_path, monkeypatch):
    (tmp_path / "toy_sections.py").write_text(
        "import nlpkit\nfrom nlpkit.tasks import Task\n\n"
        "class Data(Task):\n    name = 'data'\n\n"
        "@nlpkit.hookimpl\ndef nlpkit_register_tasks():\n    return [Data]\n"
    )
    (tmp_path / "toy_loss_metric.py").write_text(
        "import nlpkit\nfrom nlpkit.tasks import Task\n\n"
        "class Scored(Task):\n    name = 'scored'\n    metric_names = ('loss', 'f1')\n\n"
        "@nlpkit.hookimpl\ndef nlpkit_register_tasks():\n    return [Scored]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NlpkitError, match=r"plugin 'toy_sections' registers a task named 'data', which is a recipe section"):
        load_plugins(plugins=["toy_sections"])
    with pytest.raises(NlpkitError, match=r"task 'scored' has a metric named 'loss'"):
        load_plugins(plugins=["toy_loss_metric"])
