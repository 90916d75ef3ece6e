"""The plugin manager: built-in and third-party plugins, blocking, autoload, safety rails, ``nlpkit plugins``.

Every test builds its own plugin manager (``load_plugins`` makes a new one per
call). Third-party plugins are the small modules in ``tests/assets/plugins``,
put on ``sys.path`` for one test; an installed third-party distribution is faked
with a ``.dist-info`` folder in ``tmp_path``.
"""

from __future__ import annotations

import importlib
import json
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
DATA_FORMATS = {"csv", "tsv", "json", "jsonl", "parquet", "text", "chat"}
# The core plugin's checkpoint families, as the registry snapshot lists them.
CHECKPOINT_FAMILIES = sorted(json.loads((Path(__file__).with_name("registry_contents.json")).read_text())
                             ["checkpoint_families"])
# The task plugins that ship with nlpkit (entry points of the nlpkit distribution).
BUILTIN_TASKS = ["classification", "generation", "ner", "qa", "translation"]


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
        (registries.checkpoint_families, set(CHECKPOINT_FAMILIES)),
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
    assert sorted(core["checkpoint_families"]) == CHECKPOINT_FAMILIES


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
    assert "nlpkit_register_checkpoint_families" in message
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
    assert sorted(listing["core"][1]["checkpoint families"]) == CHECKPOINT_FAMILIES


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


def test_reserved_task_names_are_the_recipe_sections():
    # plugins.py spells them out rather than import the recipe module (which imports it).
    from nlpkit.plugins import RESERVED_TASK_NAMES
    from nlpkit.recipe import RESERVED_TASK_NAMES as RECIPE_SECTIONS

    assert RESERVED_TASK_NAMES == RECIPE_SECTIONS


def test_registration_hooks_are_called_through_pluggy():
    from nlpkit.plugins import _fill_registries

    calls: list[str] = []
    plugin_set = load_plugins(autoload=False)
    # The registries filled again on the same manager, watched by pluggy's call monitor: a hook
    # implementation called directly, around pluggy, would not show up.
    undo = plugin_set.manager.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(name),
                                                      lambda outcome, name, impls, kwargs: None)
    try:
        _fill_registries(plugin_set.manager, {info.name: PluginInfo(info.name, info.module, None, None)
                                              for info in plugin_set.plugins})
    finally:
        undo()
    assert calls.count("nlpkit_register_checkpoint_families") == 1  # the core plugin only
    assert calls.count("nlpkit_register_tasks") == len(BUILTIN_TASKS)  # one call per task plugin


# -- checkpoint families from a plugin -----------------------------------------------

# A BERT-shaped encoder, small enough to build in milliseconds.
TOY_BERT = {"kind": "encoder", "vocab_size": 300, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
            "intermediate_size": 48, "max_positions": 40, "type_vocab_size": 2, "norm_position": "post",
            "embedding_norm": True, "final_norm": False, "norm_eps": 1e-12}
# What tests/assets/plugins/toy_family.py calls BERT's config fields and weights, written out
# independently of its rules so that a wrong rule shows.
TOY_CONFIG_KEYS = {"vocab_size": "vocab", "hidden_size": "width", "num_hidden_layers": "depth",
                   "num_attention_heads": "heads", "intermediate_size": "ffn", "max_position_embeddings": "context",
                   "type_vocab_size": "segments", "layer_norm_eps": "eps", "pad_token_id": "pad"}
TOY_WEIGHT_NAMES = {
    "embeddings.word_embeddings": "tok", "embeddings.position_embeddings": "pos",
    "embeddings.token_type_embeddings": "seg", "embeddings.LayerNorm": "tok_norm",
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "o", "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "fc_in",
    "output.dense": "fc_out", "output.LayerNorm": "ffn_norm",
}


def _toy_name(bert_name: str) -> str:
    """``encoder.layer.1.attention.self.query.weight`` -> ``blocks.1.q.weight``."""
    module, parameter = bert_name.rsplit(".", 1)
    if module.startswith("encoder.layer."):
        layer, rest = module.removeprefix("encoder.layer.").split(".", 1)
        return f"blocks.{layer}.{TOY_WEIGHT_NAMES[rest]}.{parameter}"
    return f"{TOY_WEIGHT_NAMES[module]}.{parameter}"


@pytest.fixture
def toy_folders(tmp_path):
    """A random BERT saved by nlpkit, and the same weights written by hand as a ``toybert`` folder."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from nlpkit.backbones import BackboneConfig, build_backbone
    from nlpkit.backbones.checkpoints import save_pretrained
    from nlpkit.tokenization import Tokenizer

    torch.manual_seed(0)
    bert = save_pretrained(build_backbone(BackboneConfig(**TOY_BERT)), tmp_path / "bert", family="bert")
    toy = tmp_path / "toybert"
    toy.mkdir()
    bert_config = json.loads((bert / "config.json").read_text())
    toy_config = {"model_type": "toybert", **{ours: bert_config[theirs] for theirs, ours in TOY_CONFIG_KEYS.items()}}
    (toy / "config.json").write_text(json.dumps(toy_config))
    save_file({_toy_name(key): value for key, value in load_file(bert / "model.safetensors").items()},
              toy / "model.safetensors")
    texts = ["a toy model of bert", "the same weights under other names"] * 8
    Tokenizer.train(texts, "wordpiece", vocab_size=TOY_BERT["vocab_size"], min_frequency=1, max_length=16).save(toy)
    return bert, toy


def _hidden(backbone):
    import torch

    ids = torch.tensor([[2, 17, 5, 9, 3], [2, 11, 4, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        return backbone(ids, attention_mask=mask).last_hidden_state


def test_a_plugin_family_loads_a_folder_of_its_model_type(asset_plugins, toy_folders):
    import torch

    from nlpkit.backbones import from_pretrained
    from nlpkit.backbones.checkpoints import checkpoint_config

    bert, toy = toy_folders
    plugin_set = load_plugins(plugins=["toy_family"], autoload=False)
    families = plugin_set.registries.checkpoint_families

    assert families.owner("toybert") == "toy_family"
    assert _plugin(plugin_set, "toy_family").registered == {"checkpoint_families": ["toybert"]}
    described = checkpoint_config(toy, registries=plugin_set.registries)
    assert (described.family, described.config) == ("toybert", checkpoint_config(bert).config)
    # The same weights under other names: the same encoder, to the last bit.
    torch.testing.assert_close(_hidden(from_pretrained(toy, registries=plugin_set.registries)),
                               _hidden(from_pretrained(bert)), rtol=0, atol=0)


def test_a_plugin_family_saves_under_its_own_names(asset_plugins, toy_folders, tmp_path):
    import json

    from safetensors.torch import load_file

    from nlpkit.backbones import from_pretrained
    from nlpkit.backbones.checkpoints import infer_family, save_pretrained

    bert, toy = toy_folders
    registries = load_plugins(plugins=["toy_family"], autoload=False).registries
    backbone = from_pretrained(bert)

    # Without a family named, nlpkit's own comes first: a folder that transformers loads.
    assert infer_family(backbone.config, registries=registries) == "bert"
    out = save_pretrained(backbone, tmp_path / "saved", family="toybert", registries=registries)
    assert set(load_file(out / "model.safetensors")) == set(load_file(toy / "model.safetensors"))
    written = json.loads((out / "config.json").read_text())
    assert {key: written[key] for key in TOY_CONFIG_KEYS.values()} == {
        key: value for key, value in json.loads((toy / "config.json").read_text()).items() if key != "model_type"
    }
    assert (written["model_type"], written["architectures"]) == ("toybert", ["ToyBertModel"])


def test_without_the_plugin_its_model_type_is_refused_in_one_line(asset_plugins, toy_folders, capsys):
    from nlpkit.backbones import from_pretrained

    _, toy = toy_folders
    supported = f"supported: {', '.join(name for name in CHECKPOINT_FAMILIES if name != 'umt5')}"  # umt5: refused
    for registries in (None, load_plugins(autoload=False).registries):  # the installed plugins' and a set's
        with pytest.raises(NlpkitError) as error:
            from_pretrained(toy, registries=registries)
        message = str(error.value)
        assert message == f"{toy / 'config.json'}: unsupported model_type 'toybert'; {supported}"

    assert main(["generate", str(toy), "a prompt"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("nlpkit: error:") and f"unsupported model_type 'toybert'; {supported}" in line


def test_an_installed_family_plugin_is_used_without_naming_it(asset_plugins, toy_folders, tmp_path, monkeypatch):
    import torch

    from nlpkit.backbones import from_pretrained

    bert, toy = toy_folders
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(site, monkeypatch, entry_point="toy_family")

    expected = _hidden(from_pretrained(bert))
    torch.testing.assert_close(_hidden(from_pretrained(toy)), expected, rtol=0, atol=0)
    model = nlpkit.load(toy)  # a pretrained folder: nlpkit.load reads it with the installed plugins too
    # nlpkit.load packs the weights for oneDNN, whose products round a little differently.
    torch.testing.assert_close(_hidden(model.backbone), expected)
    assert model.embed("a toy model").shape == (TOY_BERT["hidden_size"],)


@pytest.mark.parametrize(
    ("families", "message"),
    [
        ("{'half': object()}", r"plugin 'toy_half': checkpoint family 'half' \(.*\) has no ARCHITECTURES, PREFIXES"),
        ("{'bert': bert}", r"checkpoint family 'bert' is registered by both plugin '\w+' and plugin '\w+'"),
    ],
    ids=["incomplete", "taken"],
)
def test_a_bad_family_is_refused_when_plugins_load(tmp_path, monkeypatch, families, message):
    (tmp_path / "toy_half.py").write_text(
        "import nlpkit\nfrom nlpkit.backbones.checkpoints import bert\n\n"
        f"@nlpkit.hookimpl\ndef nlpkit_register_checkpoint_families():\n    return {families}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NlpkitError, match=message):
        load_plugins(plugins=["toy_half"], autoload=False)
