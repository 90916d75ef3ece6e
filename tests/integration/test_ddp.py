"""A run on two processes with DDP, through the CLI as users run it: both train, on their own data, in step.

A run that quietly fell back to one process would still train and report
good metrics, so the processes report themselves: the test plugin
``tests/assets/plugins/ddp_probe.py`` (a classification task) makes each
process write its global rank, the world size, a hash of the batches it
trained on and a hash of its weights at the end of training.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

from nlpkit.testing import tiny_classification_data, tiny_classification_rows, tiny_recipe, tiny_tokenizer
from tests.helpers import save_tiny_bert

NLPKIT = str(Path(sys.executable).parent / "nlpkit")
REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "assets" / "plugins"


def test_quickstart_on_two_processes_trains_each_on_half_the_data_into_the_same_weights(tmp_path):
    # The quickstart recipe with the probe task (a classification task) in place of classification.
    recipes = REPO / "recipes"
    recipe = yaml.safe_load((recipes / "quickstart.yaml").read_text().replace("${recipe_dir}", str(recipes)))
    recipe["task"] = "ddp-probe"
    recipe["ddp-probe"] = recipe.pop("classification")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    probes, runs = tmp_path / "probes", tmp_path / "runs"
    probes.mkdir()
    # Lightning starts the second process by running the same command again, with this environment.
    env = {**os.environ, "NLPKIT_DDP_PROBE_DIR": str(probes),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [NLPKIT, "run", "recipe.yaml", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
         "training.epochs=1", f"output_dir={runs}", "trainer.enable_progress_bar=false", "--plugin", "ddp_probe"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    reports = {path.name: json.loads(path.read_text()) for path in probes.iterdir()}
    assert sorted(reports) == ["rank-0.json", "rank-1.json"], reports  # two processes trained
    first, second = reports["rank-0.json"], reports["rank-1.json"]
    assert first["world_size"] == second["world_size"] == 2
    # Each trained on its own half of the data (DistributedSampler's shards, padded to equal size) ...
    with (recipes / "data" / "news_topics" / "train.csv").open(newline="", encoding="utf-8") as handle:
        examples = sum(1 for _ in csv.DictReader(handle))
    assert first["train_batches"] == second["train_batches"] == math.ceil(math.ceil(examples / 2) / 32)
    assert first["train_data"] != second["train_data"]
    # ... and the gradients were averaged across both every step: the same weights at the end.
    assert first["weights"] == second["weights"]

    (run_dir,) = runs.iterdir()  # both processes share one run folder
    assert result.stdout.count("run folder:") == 1  # and only the first one reports
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.8
    predicted = subprocess.run([NLPKIT, "predict", str(run_dir), "Central bank raises interest rates", "--plugin", "ddp_probe"],
                               capture_output=True, text=True, timeout=300, env=env)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["label"] in ("business", "science", "sports", "world")


def test_a_lora_run_on_two_processes_keeps_one_adapter_in_step(tmp_path):
    # A tiny BERT folder with adapters on every Linear layer; the probe reports after the first step.
    tokenizer = tiny_tokenizer([r["text"] for r in tiny_classification_rows(200, 0)], kind="wordpiece",
                               vocab_size=200, max_length=64)
    base = save_tiny_bert(tmp_path / "base", tokenizer)
    recipe = tiny_recipe("ddp-probe", tiny_classification_data(tmp_path / "data"), tmp_path / "runs")
    recipe.update(backbone={"pretrained": str(base)}, tokenizer={"max_length": 64},
                  peft={"r": 4, "target_modules": ["all-linear"]})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    probes = tmp_path / "probes"
    probes.mkdir()
    env = {**os.environ, "NLPKIT_DDP_PROBE_DIR": str(probes),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [NLPKIT, "run", "recipe.yaml", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
         "trainer.enable_progress_bar=false", "--plugin", "ddp_probe"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA adapters:" in result.stderr + result.stdout

    reports = {path.name: json.loads(path.read_text()) for path in probes.iterdir()}
    assert sorted(reports) == ["rank-0.json", "rank-1.json"], reports
    first, second = reports["rank-0.json"], reports["rank-1.json"]
    assert first["world_size"] == 2 and first["train_data"] != second["train_data"]
    assert first["weights"] == second["weights"]  # the adapters' gradients were averaged: one adapter

    (run_dir,) = (tmp_path / "runs").iterdir()
    weights = load_file(run_dir / "model.safetensors")
    assert {name.split(".")[0] for name in weights} == {"backbone", "head"}
    assert all("lora_" in name for name in weights if name.startswith("backbone."))
    assert any(weights[name].abs().max() > 0 for name in weights if "lora_B" in name)  # lora_B starts at zero
