"""What ``nlpkit run`` shows: a start block, a bar with tokens/s in a terminal, a row per validation, the metrics.

And what it must not show, in ``run`` or any other verb: Lightning's hardware
banner, its tips, its ``Trainer(...)`` chatter and its model summary. Runs go
through the console script, as a user starts them: with the output in a
file (as in CI) and, under tmux, in a terminal.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nlpkit.tasks import Task
from nlpkit.testing import tiny_tokenizer
from tests.helpers import sentiment_rows, tiny_recipe, write_csv

REPO = Path(__file__).resolve().parents[2]
NLPKIT = str(Path(sys.executable).parent / "nlpkit")

# What Lightning prints on its own and nlpkit keeps off the console.
LIGHTNING_CHATTER = ["GPU available", "TPU available", "HPU available", "litmodels", "LitModelCheckpoint", "FLOPs",
                     "was configured so", "Loading `train_dataloader`", "weights_only", "Restoring states",
                     "Loaded model weights", "`Trainer.fit` stopped", "Trainable params", "┏"]


def nlpkit_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NLPKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def assert_no_lightning_chatter(text: str) -> None:
    for chatter in LIGHTNING_CHATTER:
        assert chatter not in text, f"{chatter!r} in:\n{text}"


def count(text: str) -> float:
    """'1.23M' -> 1230000.0."""
    scale = {"k": 1e3, "M": 1e6, "B": 1e9}.get(text[-1], 1)
    return float(text[:-1] if scale != 1 else text) * scale


def history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return [{key: value for key, value in row.items() if value} for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The quickstart through the console script, its output in files (not a terminal), as CI sees it.

    Its 4 epochs and splits as they are; only a few batches of each, which
    changes the steps, not what the console shows.
    """
    tmp = tmp_path_factory.mktemp("quickstart")
    result = nlpkit_command("run", str(REPO / "recipes" / "quickstart.yaml"), f"output_dir={tmp}",
                            "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                            "trainer.limit_test_batches=2", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp.glob("quickstart-*")
    return result, run_dir


def test_the_quickstart_console_fits_on_one_screen_without_lightnings_chatter(quickstart):
    result, run_dir = quickstart
    lines = (result.stderr + result.stdout).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert_no_lightning_chatter(result.stderr + result.stdout)
    assert "\r" not in result.stderr + result.stdout  # no bar redrawn in a log
    # stdout: the run folder and the final metrics, exactly those of metrics.json.
    out = result.stdout.splitlines()
    assert out[0] == f"run folder: {run_dir}"
    final = json.loads((run_dir / "metrics.json").read_text())
    assert {line.split()[0]: float(line.split()[1]) for line in out[1:]} == pytest.approx(final, abs=5e-5)


def test_the_start_block_describes_the_run(quickstart):
    result, run_dir = quickstart
    block = {line[:11].strip(): line[12:] for line in result.stderr.splitlines()[:9]}
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert block["run folder"] == str(run_dir)
    assert block["task"] == "classification"
    parameters = sum(tensor.numel() for tensor in load_file(run_dir / "model.safetensors").values())
    config = json.loads((run_dir / "backbone.json").read_text())
    assert block["backbone"] == f"encoder-tiny: encoder, {config['num_layers']} layers, hidden {config['hidden_size']}"
    shown, trainable = block["parameters"].removesuffix(" trainable").split(", ")
    # Counts to 3 significant digits (1.23M, 812k): all of the model's weights, all of them trained.
    assert shown == trainable and count(shown) == pytest.approx(parameters, rel=5e-3)
    assert block["precision"] == f"{recipe['training']['precision']} (auto)"
    assert block["devices"] == "1 x cpu"
    assert block["data"] == "train 3,000, validation 500, test 500 examples"
    assert block["steps"] == "batches of 32; 3 steps per epoch, 12 in all (4 epochs)"


def test_each_validation_is_a_row_of_the_table_with_the_throughput(quickstart):
    result, run_dir = quickstart
    lines = result.stderr.splitlines()
    (header_at,) = [i for i, line in enumerate(lines) if line.split()[:3] == ["epoch", "step", "time"]]
    header = lines[header_at].split()
    assert header == ["epoch", "step", "time", "train_loss", "val_loss", "accuracy", "macro_f1", "tokens/s"]
    rows = [dict(zip(header, line.split())) for line in lines[header_at + 1:header_at + 5]]
    validations = [row for row in history(run_dir) if "val_loss" in row][:4]  # the 4 epochs' (then the final one)
    assert [(row["epoch"], row["step"]) for row in rows] == [("0", "3"), ("1", "6"), ("2", "9"), ("3", "12")]
    for shown, logged in zip(rows, validations):
        for name in ("val_loss", "accuracy", "macro_f1"):
            assert float(shown[name]) == pytest.approx(float(logged[name if name == "val_loss" else f"val_{name}"]), abs=5e-5)
    # Throughput: logged with the training loss, and shown in the table.
    rates = [float(row["train_tokens_per_second"]) for row in history(run_dir) if "train_tokens_per_second" in row]
    assert rates and min(rates) > 0
    assert all(row["tokens/s"] != "-" for row in rows)


def test_evaluate_prints_its_json_and_nothing_else(quickstart):
    _, run_dir = quickstart
    result = nlpkit_command("evaluate", str(run_dir), "--data", str(REPO / "recipes/data/news_topics/test.csv"),
                            cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"loss", "accuracy", "macro_f1"}
    assert result.stderr == ""


def tiny_run_recipe(tmp_path: Path, epochs: int) -> Path:
    data = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(200, 1))),
            "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(40, 2)))}
    recipe = tiny_recipe(tmp_path, data=data, training={"epochs": epochs})
    recipe["trainer"] = {}  # Lightning's defaults: its bar, its model summary, its sanity check
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_quiet_prints_only_the_run_folder_and_the_final_metrics(tmp_path):
    result = nlpkit_command("run", str(tiny_run_recipe(tmp_path, epochs=1)), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (run_dir,) = (tmp_path / "runs").iterdir()
    final = json.loads((run_dir / "metrics.json").read_text())
    assert result.stdout.splitlines() == [f"run folder: {run_dir}", *(f"{k:>20} {v:.4f}" for k, v in final.items())]


def test_the_progress_bar_in_a_terminal_shows_tokens_per_second(tmp_path):
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("needs tmux (apt-get install tmux)")
    recipe = tiny_run_recipe(tmp_path, epochs=200)  # long enough to be looked at mid-epoch
    session = f"nlpkit-console-{tmp_path.name}"
    # An 80-column terminal, its size told by the terminal itself (not by COLUMNS / LINES inherited from here).
    command = f"env -u COLUMNS -u LINES {NLPKIT} run {recipe}; sleep 600"
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "80", "-y", "40", "-c", str(tmp_path), command],
                   check=True)
    try:
        deadline, screen = time.monotonic() + 120, ""
        while time.monotonic() < deadline:
            screen = subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            bars = [line for line in screen.splitlines() if line.startswith("Epoch ") and "tokens/s: " in line]
            if bars:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no progress bar with tokens/s on the screen:\n{screen}")
        # Lightning's rich bar: the epoch, batches done, elapsed and remaining time (the ETA), the loss, tokens/s.
        bar = bars[-1]
        assert "/13" in bar and " • " in bar and "loss: " in bar, bar
        assert float(bar.split("tokens/s: ")[1].split()[0].rstrip("k")) > 0
        # The start block and the validation rows are printed above the bar, not through it.
        assert "task        classification" in screen and "tokens/s" in screen
        assert_no_lightning_chatter(screen)
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)


def test_a_batch_holds_its_non_padding_tokens_and_a_translation_batch_both_sides():
    # What the throughput counts (Task.batch_tokens): the tokens of each example, not the padding around them.
    from nlpkit_classification import Classification, ClassificationOptions
    from nlpkit_translation import Translation, TranslationOptions

    tokenizer = tiny_tokenizer()
    texts = ["good film", "a dreadful grim story about a sad cold day", "the actor"]
    classification = Classification(ClassificationOptions(), tokenizer)
    features = classification.encode({"text": texts})
    batch = classification.collate([dict(zip(features, row)) for row in zip(*features.values())])
    lengths = [len(ids) for ids in features["input_ids"]]
    assert batch["input_ids"].numel() == len(texts) * max(lengths) > sum(lengths)  # padded
    assert classification.batch_tokens(batch) == sum(lengths)
    assert Task.batch_tokens(classification, {"input_ids": torch.zeros(2, 5, dtype=torch.long)}) == 10  # no mask
    assert Task.batch_tokens(classification, {"labels": torch.zeros(2)}) == 0  # nothing to count: no throughput

    translation = Translation(TranslationOptions(), tokenizer)
    pairs = translation.encode({"source": texts, "target": ["a film", "a story", "the happy kind actor on a warm day"]})
    batch = translation.collate([dict(zip(pairs, row)) for row in zip(*pairs.values())])
    assert translation.batch_tokens(batch) == sum(map(len, pairs["input_ids"])) + sum(map(len, pairs["labels"]))
