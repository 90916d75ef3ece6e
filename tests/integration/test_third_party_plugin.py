"""A third-party task plugin, for real: its own package, pip-installed, found through its entry point.

The plugin is ``tests/assets/third_party`` (``pyproject.toml`` and the module
``nlpkit_regression.py``), the example that the README's "Write your own task
plugin" section walks through; a test here keeps the two identical. The
package is installed into this environment for the module's tests and
uninstalled afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nlpkit.plugins import DISABLE_AUTOLOAD_ENV, load_plugins
from nlpkit.testing import check_task, write_rows

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE = REPO / "tests" / "assets" / "third_party"
DISTRIBUTION, VERSION, MODULE = "nlpkit-regression", "0.1.0", "nlpkit_regression"

POSITIVE = "good great fine lovely superb bright happy warm kind pleasant".split()
NEUTRAL = "the a movie film story plot actor scene day book".split()


def regression_rows(n: int, seed: int) -> list[dict[str, object]]:
    """Sentences whose value is their number of positive words (0 to 3): learnable in a few epochs."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(POSITIVE) for _ in range(i % 4)] + [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 5))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "value": i % 4})
    return rows


def nlpkit_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the console script installed next to this Python, as a user would, with autoload on."""
    env = {k: v for k, v in os.environ.items() if k != DISABLE_AUTOLOAD_ENV}
    return subprocess.run([str(Path(sys.executable).parent / "nlpkit"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install the plugin package from a copy of its source; uninstall it when the module's tests end."""
    # Only the installation can make the module importable: it is on no path of the test run.
    assert importlib.util.find_spec(MODULE) is None, (
        f"{MODULE} is importable before the test installs it (left by an interrupted run? pip uninstall {DISTRIBUTION})"
    )
    folder = tmp_path_factory.mktemp("plugin") / DISTRIBUTION
    shutil.copytree(PLUGIN_SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        # --no-index: the build needs nothing beyond this environment (setuptools, which torch requires),
        # so CI works offline.
        installed = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(folder))
        assert installed.returncode == 0, installed.stdout + installed.stderr
        importlib.invalidate_caches()
        yield folder
    finally:
        _pip("uninstall", "--yes", DISTRIBUTION)
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()


def _readme_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Write your own task plugin")
    end = readme.find("\n## ", start + 1)
    return readme[start:] if end < 0 else readme[start:end]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def test_readme_walks_through_this_very_plugin():
    blocks = _code_blocks(_readme_section())
    source = (PLUGIN_SOURCE / f"{MODULE}.py").read_text(encoding="utf-8")
    assert source in blocks, "README's plugin section must show tests/assets/third_party/nlpkit_regression.py verbatim"
    assert (PLUGIN_SOURCE / "pyproject.toml").read_text(encoding="utf-8") in blocks
    assert len(source.splitlines()) < 100  # a task plugin in under 100 lines
    assert any("check_task(Regression" in block for block in blocks)


def test_installed_plugin_is_found_through_its_entry_point_and_passes_the_conformance_check(installed_plugin, tmp_path):
    import nlpkit_regression

    assert Path(nlpkit_regression.__file__).parent != PLUGIN_SOURCE  # the installed copy
    (info,) = [p for p in load_plugins(autoload=True).plugins if p.name == "regression"]
    assert (info.module, info.distribution, info.version) == (MODULE, DISTRIBUTION, VERSION)
    assert info.registered == {"tasks": ["regression"]}

    checked = check_task(nlpkit_regression.Regression, regression_rows(16, 0), regression_rows(8, 1), tmp_path=tmp_path)
    assert {"val_loss", "val_mae", "val_rmse"} <= set(checked.metrics)
    assert [set(answer) for answer in checked.answers] == [{"value"}] * 4
    assert all(isinstance(answer["value"], float) for answer in checked.answers)


def test_the_readme_example_of_an_authors_test_passes(installed_plugin, tmp_path):
    (example,) = [block for block in _code_blocks(_readme_section()) if "check_task(Regression" in block]
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 1
    tests[0](tmp_path)


def test_nlpkit_plugins_lists_it_with_distribution_and_version(installed_plugin, tmp_path):
    listed = nlpkit_command("plugins", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    header = f"regression: module {MODULE}, distribution {DISTRIBUTION} {VERSION}"
    assert header in lines, listed.stdout
    assert lines[lines.index(header) + 1] == "  tasks: regression"


# This module takes about 40 s of CPU, more on 2 shared cores; half of it is this test (two processes
# that import torch and Lightning, 72 training steps), so it alone goes to the slow suite.
@pytest.mark.slow
def test_a_recipe_runs_end_to_end_through_the_cli(installed_plugin, tmp_path):
    # The data's own column name, mapped onto the task's field as a user would.
    for name, rows in (("train", regression_rows(192, 1)), ("dev", regression_rows(48, 2))):
        write_rows(tmp_path / f"{name}.csv", [{"text": r["text"], "positives": r["value"]} for r in rows])
    (tmp_path / "recipe.yaml").write_text(
        """\
task: regression
backbone:
  preset: encoder-tiny
  config: {num_layers: 1, hidden_size: 32, intermediate_size: 64, dropout: 0.0, attention_dropout: 0.0}
tokenizer: {train: bpe, vocab_size: 400, min_frequency: 1, max_length: 32}
data:
  train: ${recipe_dir}/train.csv
  validation: ${recipe_dir}/dev.csv
  columns: {value: positives}
regression: {dropout: 0.0}
optimization: {lr: 5e-3}
training: {batch_size: 16, epochs: 6, seed: 0, monitor: val_mae, monitor_mode: min}
trainer: {accelerator: cpu, devices: 1, enable_progress_bar: false, enable_model_summary: false}
output_dir: ${recipe_dir}/runs
""",
        encoding="utf-8",
    )

    trained = nlpkit_command("run", "recipe.yaml", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = re.findall(r"^run folder: (.+)$", trained.stdout, flags=re.M)
    metrics = dict(re.findall(r"^\s*(val_\w+) (\S+)$", trained.stdout, flags=re.M))
    # Always answering the mean (1.5) scores a mean absolute error of 1.0 on values 0..3.
    assert float(metrics["val_mae"]) < 0.5, trained.stdout

    predicted = nlpkit_command("predict", run_dir, "the film", "a good great lovely film", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    none, three = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert set(none) == set(three) == {"value"}
    assert isinstance(none["value"], float) and isinstance(three["value"], float)
    assert three["value"] - none["value"] > 1.5  # three positive words against none
