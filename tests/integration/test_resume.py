"""Runs that survive ``kill -9`` anywhere, resumes that change nothing when they fail, and failed runs.

The kills go through the console script, as a user's would: a run is
SIGKILLed right after a checkpoint appears (mid-epoch, at an epoch end, in a
later epoch, in a resumed run) and resumed until it finishes; its weights,
metrics and history must equal those of a run that was never interrupted
(CPU, ``training.precision: 32-true``, a fixed seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from safetensors.torch import load_file

import nlpkit
from nlpkit import NlpkitError
from nlpkit.cli import main
from nlpkit.testing import write_rows
from tests.helpers import RunsCodeWhenUnpickled, sentiment_rows, tiny_recipe, write_csv

NLPKIT = str(Path(sys.executable).parent / "nlpkit")
ASSET_PLUGINS = Path(__file__).resolve().parents[1] / "assets" / "plugins"


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def classification_recipe(tmp_path: Path, **training) -> Path:
    data = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(2000, 1))),
            "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(100, 2)))}
    # Byte-level BPE trains deterministically, so every run gets the same tokenizer; dropout stays
    # on, so the random-number streams must be resumed too. 125 steps an epoch.
    return write_recipe(tmp_path, tiny_recipe(tmp_path, data=data, tokenizer={"train": "bpe"},
                                              training={"epochs": 2, "checkpoint_every_n_steps": 7, **training}))


def only_run(runs: Path, name: str) -> Path:
    (folder,) = runs.glob(f"{name}-*")
    return folder


def checkpoint_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def written_in_epoch(path: Path, epoch: int) -> Callable[[], bool]:
    """A condition: ``path`` exists and was last written in ``epoch`` or later (read only when it changes)."""
    seen = {"mtime": None}

    def holds() -> bool:
        if not path.is_file() or path.stat().st_mtime_ns == seen["mtime"]:
            return False
        seen["mtime"] = path.stat().st_mtime_ns
        return checkpoint_epoch(path) >= epoch

    return holds


def run_and_kill(args: list[str], killed_when: Callable[[], bool]) -> None:
    """Start ``nlpkit ARGS`` and SIGKILL it as soon as ``killed_when()`` holds."""
    process = subprocess.Popen([NLPKIT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not killed_when():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def run_to_the_end(*args: str) -> None:
    result = subprocess.run([NLPKIT, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def timeless_history(run_dir: Path) -> list[list[str]]:
    """metrics.csv, header and rows, without the throughput: the one column that timing decides."""
    with (run_dir / "metrics.csv").open(newline="") as file:
        table = list(csv.reader(file))
    timed = table[0].index("train_tokens_per_second")
    return [row[:timed] + row[timed + 1:] for row in table]


def assert_same_run(expected: Path, got: Path) -> None:
    """Bit-identical weights, the same final metrics, and the same history, row for row."""
    reference, resumed = load_file(expected / "model.safetensors"), load_file(got / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
    assert json.loads((got / "metrics.json").read_text()) == json.loads((expected / "metrics.json").read_text())
    assert timeless_history(got) == timeless_history(expected)
    if (expected / "samples.txt").exists():
        assert (got / "samples.txt").read_text() == (expected / "samples.txt").read_text()


@pytest.mark.parametrize("batching", ["examples", "tokens"])
def test_killed_mid_epoch_then_again_in_a_later_epoch_resumes_to_the_whole_run(tmp_path, batching):
    # Batches of 16 examples, or of at most 160 padded tokens (about as many, of varied size).
    recipe = str(classification_recipe(tmp_path, **({"max_tokens": 160} if batching == "tokens" else {})))
    runs = tmp_path / "runs"
    run_to_the_end("run", recipe, "name=full")

    run_and_kill(["run", recipe, "name=cut"], lambda: bool(list(runs.glob("cut-*/checkpoints/last.ckpt"))))
    cut = only_run(runs, "cut")
    assert checkpoint_epoch(cut / "checkpoints" / "last.ckpt") == 0  # killed in the middle of the first epoch
    # Nothing half-written is left where a checkpoint belongs (a kill mid-write leaves a hidden temporary file).
    checkpoints = sorted(p.name for p in (cut / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints in (["last.ckpt"], ["best.ckpt", "last.ckpt"])

    last = cut / "checkpoints" / "last.ckpt"
    run_and_kill(["run", recipe, "name=cut", "--resume", str(cut)], written_in_epoch(last, 1))
    assert not (cut / "model.safetensors").exists()  # the resumed run was killed too, in its second epoch
    run_to_the_end("run", recipe, "name=cut", "--resume", str(cut))
    assert_same_run(only_run(runs, "full"), cut)


def test_a_lora_run_killed_mid_epoch_resumes_the_same_adapter(tmp_path):
    pytest.importorskip("peft")
    recipe_path = classification_recipe(tmp_path, epochs=1)
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["peft"] = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["query", "value", "mlp"]}
    recipe_path.write_text(yaml.safe_dump(recipe))
    runs = tmp_path / "runs"
    run_to_the_end("run", str(recipe_path), "name=full")

    run_and_kill(["run", str(recipe_path), "name=cut"], lambda: bool(list(runs.glob("cut-*/checkpoints/last.ckpt"))))
    cut = only_run(runs, "cut")
    assert checkpoint_epoch(cut / "checkpoints" / "last.ckpt") == 0
    run_to_the_end("run", str(recipe_path), "name=cut", "--resume", str(cut))
    assert_same_run(only_run(runs, "full"), cut)
    assert any("lora_A" in name for name in load_file(cut / "model.safetensors"))  # the adapter was resumed, not redone


def sample_blocks(run_dir: Path) -> int:
    return sum(line.startswith("step ") for line in (run_dir / "samples.txt").read_text().splitlines())


def test_killed_right_after_its_first_epoch_resumes_with_its_samples(tmp_path):
    # A language model: its samples.txt gets lines after every validation. No checkpoint mid-epoch:
    # what the kill leaves is the first epoch's (best.ckpt, then last.ckpt).
    rng = __import__("random").Random(0)
    words = "the cat sat on a mat and the dog ran to the big red house by the sea".split()
    text = write_rows(tmp_path / "docs.jsonl", [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))}
                                                for _ in range(600)])
    recipe = tiny_recipe(tmp_path, task="generation", data={"train": str(text), "validation_split": 0.1},
                         backbone={"preset": "decoder-tiny", "config": {"num_layers": 1, "hidden_size": 64,
                                                                        "intermediate_size": 128, "max_positions": 64}},
                         tokenizer={"train": "char", "max_length": 32, "lowercase": False},
                         training={"epochs": 3, "batch_size": 8, "checkpoint_every_n_steps": 100_000},
                         generation={"sample_prompts": ["the"], "sample_max_new_tokens": 8, "sample_every": 2})
    recipe_file = str(write_recipe(tmp_path, recipe))
    runs = tmp_path / "runs"
    run_to_the_end("run", recipe_file, "name=full")

    run_and_kill(["run", recipe_file, "name=cut"], lambda: bool(list(runs.glob("cut-*/checkpoints/*.ckpt"))))
    cut = only_run(runs, "cut")
    assert not (cut / "model.safetensors").exists()
    assert sample_blocks(cut) == 1  # the first validation's samples
    # The first epoch's end writes best.ckpt, then last.ckpt: leave what a kill between the two leaves.
    best, last = cut / "checkpoints" / "best.ckpt", cut / "checkpoints" / "last.ckpt"
    assert checkpoint_epoch(best) == 0
    if last.exists() and torch.load(last, weights_only=True, mmap=True)["global_step"] == \
            torch.load(best, weights_only=True, mmap=True)["global_step"]:
        last.unlink()
    assert not last.exists()
    run_to_the_end("run", recipe_file, "name=cut", "--resume", str(cut))
    assert_same_run(only_run(runs, "full"), cut)
    assert sample_blocks(cut) == 2  # validations 1 and 3 of 3 (sample_every: 2)


# -- resumes that cannot start change nothing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-epoch run (last.ckpt and best.ckpt) and its recipe."""
    tmp = tmp_path_factory.mktemp("trained")
    data = {"train": str(write_csv(tmp / "train.csv", sentiment_rows(80, 1))),
            "validation": str(write_csv(tmp / "dev.csv", sentiment_rows(20, 2)))}
    recipe = write_recipe(tmp, tiny_recipe(tmp, data=data, tokenizer={"train": "bpe"}, training={"epochs": 1}))
    return nlpkit.run(str(recipe)).run_dir, recipe


def test_an_epoch_end_refreshes_the_resumable_checkpoint(trained):
    # 80 examples in batches of 16: 5 steps, far fewer than checkpoint_every_n_steps (200).
    checkpoint = torch.load(trained[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert (checkpoint["global_step"], checkpoint["epoch"]) == (5, 0)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``folder``: its bytes, modification time and mode."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def history(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv's rows, each with the columns it has a value in."""
    with (run_dir / "metrics.csv").open(newline="") as file:
        return [{key: value for key, value in row.items() if value} for row in csv.DictReader(file)]


def copy_run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(trained[0], folder)
    return folder


def resume_error(capsys, recipe: Path, folder: Path, *parts: str) -> None:
    before = snapshot(folder)
    code = main(["run", str(recipe), "training.epochs=2", "--resume", str(folder)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1, lines
    for part in parts:
        assert part in lines[0], lines[0]
    assert snapshot(folder) == before


def test_a_checkpoint_that_would_run_code_is_refused(trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    pwned = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": RunsCodeWhenUnpickled(pwned)}, folder / "checkpoints" / "last.ckpt")
    resume_error(capsys, trained[1], folder, "last.ckpt: not a safe checkpoint: it would load posix.system",
                 "predict, evaluate and export still work")
    assert not pwned.exists()
    (folder / "checkpoints" / "last.ckpt").write_bytes(pickle.dumps({"payload": RunsCodeWhenUnpickled(pwned)}))  # a bare pickle
    resume_error(capsys, trained[1], folder, "last.ckpt: not a safe checkpoint")
    assert not pwned.exists()


def test_a_truncated_checkpoint_is_refused_and_the_history_kept(trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    resume_error(capsys, trained[1], folder, f"cannot read checkpoint {last} (corrupt or truncated?)")


def test_an_old_checkpoint_that_needs_unpickling_says_what_still_works(trained, tmp_path, capsys):
    # An earlier nlpkit (or Lightning) could store hyperparameters as an argparse.Namespace.
    folder = copy_run(trained, tmp_path)
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(folder / "checkpoints" / name, weights_only=True)
        checkpoint["hyper_parameters"] = argparse.Namespace(**checkpoint["hyper_parameters"])
        torch.save(checkpoint, folder / "checkpoints" / name)
    resume_error(capsys, trained[1], folder, "argparse.Namespace", "cannot be resumed",
                 "predict, evaluate and export still work (they read model.safetensors)")
    assert main(["predict", str(folder), "good film"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("pos", "neg")


def test_a_run_killed_before_its_first_checkpoint_says_so(trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)  # what a kill in the first steps leaves: the set-up files only
    for name in ("checkpoints", "model.safetensors", "metrics.json", "metrics.csv"):
        shutil.rmtree(folder / name) if (folder / name).is_dir() else (folder / name).unlink()
    resume_error(capsys, trained[1], folder, "has no checkpoint yet", "start it again with nlpkit run")


def test_resume_refuses_another_recipe_and_trains_longer_keeping_the_history(trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    assert main(["run", str(trained[1]), "optimization.lr=0.1", "--resume", str(folder)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "the recipe's optimization.lr is 0.1" in line and "only training.epochs, training.max_steps" in line
    assert snapshot(folder) == before

    rows_before = history(folder)
    assert main(["run", str(trained[1]), "training.epochs=2", "--resume", str(folder)]) == 0
    rows = history(folder)
    # The finished run's rows stay: its one validation saved its best checkpoint, so it closed without
    # validating again (train() kept that validation's scores). Then the second epoch's rows.
    assert rows[: len(rows_before)] == rows_before
    validations = [row for row in rows if "val_loss" in row]
    improved = float(validations[1]["val_loss"]) < float(validations[0]["val_loss"])
    # (Rows without an epoch are LearningRateMonitor's learning rates.)
    epochs = [row["epoch"] for row in rows[len(rows_before) :] if "epoch" in row]
    closing = [] if improved else ["2"]  # a closing validation from best.ckpt only if epoch 1 did not improve
    assert set(epochs) - set(closing) == {"1"}
    assert [row["epoch"] for row in validations] == ["0", "1", *closing]
    assert yaml.safe_load((folder / "recipe.yaml").read_text())["training"]["epochs"] == 2


def test_samples_of_a_resumed_run_are_the_whole_runs(tmp_path):
    # A finished one-epoch language model trained on for a second epoch: the samples of its closing
    # validation (written after its last checkpoint) make way for the second epoch's and a new closing one.
    text = write_rows(tmp_path / "docs.jsonl", [{"text": f"the cat sat on mat number {n}"} for n in range(64)])
    recipe = tiny_recipe(tmp_path, task="generation", data={"train": str(text), "validation_split": 0.25},
                         backbone={"preset": "decoder-tiny", "config": {"num_layers": 1, "hidden_size": 32,
                                                                        "intermediate_size": 64, "max_positions": 32}},
                         tokenizer={"train": "char", "max_length": 16, "lowercase": False},
                         training={"epochs": 1, "batch_size": 8},
                         generation={"sample_prompts": ["the"], "sample_max_new_tokens": 4})
    run_dir = nlpkit.run(recipe).run_dir
    steps = lambda: [line for line in (run_dir / "samples.txt").read_text().splitlines() if line.startswith("step ")]
    first = steps()
    assert len(first) == 1  # the epoch's validation, which saved the best checkpoint: no closing one
    nlpkit.run(recipe, ["training.epochs=2"], resume=run_dir)
    losses = [float(row["val_loss"]) for row in history(run_dir) if "val_loss" in row]
    closing = 0 if losses[1] < losses[0] else 1  # from best.ckpt, only where the second epoch did not improve
    assert steps()[:1] == first and len(steps()) == 2 + closing


def test_a_moved_run_folder_resumes_in_its_new_place(trained, tmp_path):
    folder = copy_run(trained, tmp_path)  # its checkpoints name the old folder's paths
    original = snapshot(trained[0])
    nlpkit.run(str(trained[1]), ["training.epochs=2"], resume=folder)
    assert json.loads((folder / "run.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert snapshot(trained[0]) == original  # the old folder's best checkpoint was neither replaced nor removed


# -- what a run writes, and what a failed run leaves ---------------------------------------------------------------------


def test_run_files_get_the_permissions_open_gives(tmp_path):
    data = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(40, 1))),
            "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(20, 2)))}
    old = os.umask(0o027)
    try:
        run_dir = nlpkit.run(tiny_recipe(tmp_path, data=data, training={"epochs": 1})).run_dir
    finally:
        os.umask(old)
    modes = {str(path.relative_to(run_dir)): path.stat().st_mode & 0o777 for path in run_dir.rglob("*") if path.is_file()}
    assert {"run.json", "model.safetensors", "metrics.csv", "checkpoints/last.ckpt"} <= set(modes)
    assert set(modes.values()) == {0o640}, modes


def failing_recipe(tmp_path: Path, fail_at_step: int, fail_with: str) -> dict:
    data = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(160, 1))),
            "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(20, 2)))}
    return tiny_recipe(tmp_path, task="toy-failing", data=data,
                       training={"epochs": 2, "checkpoint_every_n_steps": 4},
                       **{"toy-failing": {"fail_at_step": fail_at_step, "fail_with": fail_with}})


@pytest.fixture
def failing_plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(ASSET_PLUGINS))


def test_a_run_failing_before_any_checkpoint_leaves_no_folder(tmp_path, failing_plugin, capsys, caplog):
    recipe = write_recipe(tmp_path, failing_recipe(tmp_path, fail_at_step=2, fail_with="user"))
    assert main(["run", "--plugin", "toy_failing", str(recipe)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "toy-failing: the data broke at step 2" in line and "was removed (it held no checkpoint)" in line
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())

    # A bug of a plugin keeps its traceback; the folder goes all the same, and a log line says so.
    with pytest.raises(RuntimeError, match="a bug at step 2"):
        nlpkit.run(failing_recipe(tmp_path, fail_at_step=2, fail_with="bug"), plugins=["toy_failing"])
    assert not list((tmp_path / "runs").iterdir())
    assert "was removed (it held no checkpoint)" in caplog.text


def test_a_run_failing_after_a_checkpoint_is_marked_failed(tmp_path, failing_plugin, capsys):
    recipe = write_recipe(tmp_path, failing_recipe(tmp_path, fail_at_step=6, fail_with="user"))
    assert main(["run", "--plugin", "toy_failing", str(recipe)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"keeps its checkpoints and is marked failed; continue it with --resume {run_dir}" in line
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "the data broke at step 6" in info["error"]
    with pytest.raises(NlpkitError, match=r"no model.safetensors: it failed \(toy-failing: the data broke"):
        nlpkit.load(run_dir)
