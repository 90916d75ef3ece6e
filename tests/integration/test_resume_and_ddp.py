"""Runs that survive `kill -9`, and runs on several processes, through the CLI as users run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import sentiment_rows, tiny_recipe, write_csv

NLPKIT = str(Path(sys.executable).parent / "nlpkit")
REPO = Path(__file__).resolve().parents[2]


def write_recipe(tmp_path: Path, training: dict | None = None, **sections) -> Path:
    data = {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(2000, 1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(100, 2))),
    }
    # Byte-level BPE trains deterministically, so both runs get the same tokenizer;
    # dropout stays on, so the random-number streams must be resumed too.
    recipe = tiny_recipe(tmp_path, data=data, tokenizer={"train": "bpe"},
                         training={"epochs": 2, "checkpoint_every_n_steps": 7, **(training or {})}, **sections)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def only_run(runs: Path, name: str) -> Path:
    (folder,) = runs.glob(f"{name}-*")
    return folder


@pytest.mark.parametrize("batching", ["examples", "tokens"])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, batching):
    # Batches of 16 examples, or of at most 160 padded tokens (about as many, of varied size).
    recipe = write_recipe(tmp_path, training={"max_tokens": 160} if batching == "tokens" else {})
    runs = tmp_path / "runs"
    full = subprocess.run([NLPKIT, "run", str(recipe), "name=full"], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr

    victim = subprocess.Popen([NLPKIT, "run", str(recipe), "name=cut"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(runs.glob("cut-*/checkpoints/last.ckpt")):
        assert victim.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    cut = only_run(runs, "cut")
    checkpoint = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)
    full_steps = torch.load(only_run(runs, "full") / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert checkpoint["global_step"] < full_steps // 2  # killed mid-way through the first epoch
    assert not (cut / "model.safetensors").exists()
    # Nothing half-written is left where a checkpoint belongs.
    assert sorted(p.name for p in (cut / "checkpoints").iterdir() if not p.name.startswith(".")) in (["last.ckpt"], ["best.ckpt", "last.ckpt"])

    resumed = subprocess.run([NLPKIT, "run", str(recipe), "name=cut", "--resume", str(cut)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    expected, got = load_file(only_run(runs, "full") / "model.safetensors"), load_file(cut / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert json.loads((cut / "metrics.json").read_text()) == json.loads((only_run(runs, "full") / "metrics.json").read_text())


def test_resume_refuses_a_different_recipe(tmp_path):
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "runs"))
    done = subprocess.run([NLPKIT, "run", str(recipe), "training.epochs=1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    changed = subprocess.run([NLPKIT, "run", str(recipe), "optimization.lr=0.1", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2
    assert changed.stderr.count("\n") == 1 and "optimization.lr" in changed.stderr
    longer = subprocess.run([NLPKIT, "run", str(recipe), "training.epochs=2", "--resume", str(run_dir)],
                            capture_output=True, text=True, timeout=600)
    assert longer.returncode == 0, longer.stderr
    history = (run_dir / "metrics.csv").read_text()
    assert "\n1," in history  # the second epoch was trained
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["training"]["epochs"] == 2


def test_quickstart_on_two_processes_with_ddp(tmp_path):
    result = subprocess.run(
        [NLPKIT, "run", str(REPO / "recipes" / "quickstart.yaml"), "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.strategy=ddp", "training.epochs=1", f"output_dir={tmp_path}", "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()  # both processes share one run folder
    assert result.stdout.count("run folder:") == 1  # and only the first one reports
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.8
    predicted = subprocess.run([NLPKIT, "predict", str(run_dir), "Central bank raises interest rates"],
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["label"] in ("business", "science", "sports", "world")
