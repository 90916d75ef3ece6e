"""``nlpkit new-plugin``: each kind's package installs, passes its own test and trains its recipe, unedited.

The packages are written by the console script into a temporary folder,
pip-installed (editable) into this environment for the module's tests and
uninstalled afterwards, as an author would: ``pip install -e .``, ``python -m
pytest`` in the package's folder, ``nlpkit run recipe.yaml``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nlpkit.cli import main
from nlpkit.plugins import DISABLE_AUTOLOAD_ENV
from tests.helpers import assert_one_line_error

# Names no other test or plugin uses: while installed, the packages are plugins of this environment.
NAMES = {"sequence": "scaffold_sequence", "tokens": "scaffold_tokens", "generation": "scaffold_generation"}
FILES = {".gitignore", "README.md", "pyproject.toml", "recipe.yaml", "data/train.jsonl", "data/validation.jsonl",
         "tests/test_task.py", "{module}/__init__.py", "{module}/py.typed"}
METRICS = {"sequence": {"val_loss", "val_accuracy", "val_macro_f1"},
           "tokens": {"val_loss", "val_accuracy", "val_macro_f1"},
           "generation": {"val_loss", "val_perplexity"}}


def distribution(name: str) -> str:
    return "nlpkit-" + name.replace("_", "-")


def user_env() -> dict[str, str]:
    """The environment of a user's shell: installed plugins load."""
    return {k: v for k, v in os.environ.items() if k != DISABLE_AUTOLOAD_ENV}


def nlpkit_argv(*args: str) -> list[str]:
    """The console script installed next to this Python, as a user runs it."""
    return [str(Path(sys.executable).parent / "nlpkit"), *args]


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"],
                          capture_output=True, text=True, timeout=300)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def builtin_plugins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, nlpkit's own plugins only: the name check loads the plugins, and a package installed
    editable after this process started (this module's, another test run's) cannot be imported here."""
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory: pytest.TempPathFactory):
    """Each kind's package, written by `nlpkit new-plugin` and pip-installed (editable); uninstalled at the end."""
    root = tmp_path_factory.mktemp("new-plugins")
    dists = [distribution(name) for name in NAMES.values()]
    try:
        leftovers = [d for d in dists if _installed(d)]  # from an interrupted run: their folders are gone
        if leftovers:
            _pip("uninstall", "--yes", *leftovers)
        # The first through the console script, as a user meets it; the others in-process (the same `main`,
        # seconds faster: the command loads the plugins, torch included, to check that the name is free).
        for kind, name in NAMES.items():
            argv = ["new-plugin", name, "--kind", kind, "--output", str(root)]
            if kind == "sequence":
                made = subprocess.run(nlpkit_argv(*argv), cwd=root, env=user_env(), capture_output=True, text=True,
                                      timeout=300)
                assert made.returncode == 0, made.stderr
                assert f"into {root / name}" in made.stdout
            else:
                with pytest.MonkeyPatch.context() as env:
                    env.setenv(DISABLE_AUTOLOAD_ENV, "1")  # see builtin_plugins_only
                    assert main(argv) == 0
        folders = {kind: root / name for kind, name in NAMES.items()}
        # --no-index: the build needs nothing beyond this environment (setuptools), so CI works offline.
        editable = [arg for folder in folders.values() for arg in ("-e", str(folder))]
        installed = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", *editable)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        importlib.invalidate_caches()
        yield folders
    finally:
        _pip("uninstall", "--yes", *[d for d in dists if _installed(d)])
        importlib.invalidate_caches()


@pytest.mark.parametrize("kind", list(NAMES))
def test_new_plugin_renders_every_template_file(kind, tmp_path, capsys, builtin_plugins_only):
    assert main(["new-plugin", "my_task", "--kind", kind, "--output", str(tmp_path)]) == 0
    folder = tmp_path / "my_task"
    assert f"into {folder}" in capsys.readouterr().out
    for path in folder.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "${" not in text.replace("${recipe_dir}", ""), f"{path}: a placeholder left"
            if path.suffix == ".py":
                compile(text, str(path), "exec")
    pyproject = (folder / "pyproject.toml").read_text(encoding="utf-8")
    assert 'name = "nlpkit-my-task"' in pyproject
    assert '[project.entry-points.nlpkit]\nmy_task = "nlpkit_my_task"' in pyproject
    assert "class MyTask(" in (folder / "nlpkit_my_task" / "__init__.py").read_text(encoding="utf-8")
    assert "task: my_task\n" in (folder / "recipe.yaml").read_text(encoding="utf-8")
    assert "nlpkit_my_task/__init__.py" in (folder / "README.md").read_text(encoding="utf-8")


def test_new_plugin_writes_into_an_empty_folder(tmp_path, capsys, builtin_plugins_only):
    (tmp_path / "sentiment").mkdir()
    assert main(["new-plugin", "sentiment", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "sentiment" / "nlpkit_sentiment" / "__init__.py").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["sentiment"]  # no staging folder left


def test_new_plugin_refuses_a_folder_that_is_not_empty_and_changes_nothing(tmp_path):
    folder = tmp_path / "sentiment"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    before = sorted(tmp_path.rglob("*"))
    refused = subprocess.run(nlpkit_argv("new-plugin", "sentiment", "--output", str(tmp_path)), cwd=tmp_path,
                             env=user_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [f"nlpkit: error: {folder} already exists and is not empty; new-plugin "
                                           f"writes a new folder (choose another NAME or --output, or remove it)"]
    assert refused.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before and (folder / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("argv, parts", [
    (["new-plugin", "Pos-Tags"], ["NAME: expected lowercase letters, digits and single underscores", "try 'pos_tags'"]),
    (["new-plugin", "my__task"], ["got 'my__task'", "try 'my_task'"]),
    (["new-plugin", "2fast"], ["starting with a letter", "got '2fast'"]),
    (["new-plugin", "nlpkit_sentiment"], ["without 'nlpkit_'", "try 'sentiment'"]),
    (["new-plugin", "task"], ["would name the task class Task"]),
    (["new-plugin", "classification"], ["'classification' is taken (task 'classification' of plugin "
                                         "'classification')"]),
    (["new-plugin", "words", "--kind", "tags"], ["argument --kind: invalid choice: 'tags'"]),
], ids=["capitals and hyphen", "double underscore", "digit first", "nlpkit prefix", "class name in use",
        "task taken", "unknown kind"])
def test_new_plugin_mistakes_are_one_line_with_exit_code_2(argv, parts, tmp_path, capsys, monkeypatch,
                                                           builtin_plugins_only):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    assert_one_line_error(code, captured, parts)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_new_plugin_help_lists_the_kinds(capsys):
    assert main(["new-plugin", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(kind in text for kind in NAMES) and "--output DIR" in text and "nlpkit-sentiment" in text
    assert main(["--help"]) == 0
    assert "new-plugin" in capsys.readouterr().out


# Each about 10-15 s on 2 CPU cores: the package's own test and its recipe, each a process that imports torch.
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NAMES))
def test_a_new_plugin_passes_its_own_test_and_trains_its_recipe_unedited(installed_plugins, kind):
    folder = installed_plugins[kind]
    module = "nlpkit_" + NAMES[kind]
    written = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert written == {name.format(module=module) for name in FILES}
    assert importlib.metadata.entry_points(group="nlpkit", name=NAMES[kind])  # the installed entry point

    # Its own test and its recipe side by side: they share nothing but the installed package. The recipe runs
    # through the entry point alone (no --plugin; the console script's path does not hold the folder).
    testing = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder,
                               env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    training = subprocess.Popen(nlpkit_argv("run", "recipe.yaml", "trainer.enable_progress_bar=false"), cwd=folder,
                                env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tested, _ = testing.communicate(timeout=300)
    trained, trained_err = training.communicate(timeout=300)
    assert testing.returncode == 0 and "1 passed" in tested, tested[-3000:]
    assert training.returncode == 0, trained_err[-3000:]
    (run_dir,) = re.findall(r"^run folder: (.+)$", trained, flags=re.M)
    assert Path(run_dir).parent == folder / "runs" and (Path(run_dir) / "model.safetensors").is_file()
    metrics = {name: float(value) for name, value in re.findall(r"^\s*(val_\w+) (\S+)$", trained, flags=re.M)}
    assert set(metrics) == METRICS[kind], trained
    assert all(math.isfinite(value) for value in metrics.values()), trained
