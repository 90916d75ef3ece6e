"""``nlpkit runs`` tells a running run, a finished one, one killed with kill -9, one stopped with Ctrl-C and a failed one.

The runs are real: ``nlpkit run`` subprocesses (killed as in
``test_resume.py``), a run trained in this process, and a plugin's run that
fails with an error after its first checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nlpkit
from nlpkit.cli import main
from nlpkit.run_table import list_runs
from tests.helpers import sentiment_rows, tiny_recipe, write_csv
from tests.integration.test_resume import (ASSET_PLUGINS, NLPKIT, classification_recipe, failing_recipe, only_run,
                                           write_recipe)


def start_run(recipe: Path, name: str, runs: Path) -> tuple[subprocess.Popen, Path]:
    """``nlpkit run`` in the background, once it has written its first checkpoint (it is mid-training then)."""
    process = subprocess.Popen([NLPKIT, "run", str(recipe), f"name={name}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(runs.glob(f"{name}-*/checkpoints/last.ckpt")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process, only_run(runs, name)


def statuses(runs: Path) -> dict[str, str]:
    return {row.name.rsplit("-", 2)[0]: row.status for row in list_runs(runs)}


def test_runs_shows_running_finished_interrupted_and_failed(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    # One training at a time: the runs that end first, then each background run in turn.
    data = {"train": str(write_csv(tmp_path / "small.csv", sentiment_rows(80, 1))),
            "validation": str(write_csv(tmp_path / "small-dev.csv", sentiment_rows(20, 2)))}
    nlpkit.run(tiny_recipe(tmp_path, data=data, training={"epochs": 1}), ["name=finished"])
    monkeypatch.syspath_prepend(str(ASSET_PLUGINS))
    failing = write_recipe(tmp_path, failing_recipe(tmp_path, fail_at_step=6, fail_with="user"))
    assert main(["run", "--plugin", "toy_failing", str(failing), "name=failed"]) == 2
    capsys.readouterr()
    assert statuses(runs) == {"finished": "finished", "failed": "failed"}

    # 125 steps an epoch for many epochs: mid-training for as long as the test looks.
    long_recipe = classification_recipe(tmp_path, epochs=50)
    killed, _ = start_run(long_recipe, "killed", runs)
    assert statuses(runs)["killed"] == "running"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert statuses(runs)["killed"] == "interrupted"

    stopped, _ = start_run(long_recipe, "stopped", runs)
    stopped.send_signal(signal.SIGINT)  # Ctrl-C: Lightning stops, the folder keeps its checkpoints
    stopped.wait(timeout=120)

    running, _ = start_run(long_recipe, "running", runs)
    try:
        assert statuses(runs) == {"killed": "interrupted", "stopped": "interrupted", "running": "running",
                                  "finished": "finished", "failed": "failed"}
        rows = {row.name.rsplit("-", 2)[0]: row for row in list_runs(runs)}
        assert "the data broke at step 6" in rows["failed"].error
        finished_metrics = json.loads((only_run(runs, "finished") / "metrics.json").read_text())
        assert rows["finished"].best == finished_metrics["val_loss"] and rows["finished"].monitor == "val_loss"
        assert rows["running"].wall_time_s > 0 and rows["killed"].wall_time_s > 0
        created = [row.created for row in list_runs(runs)]
        assert created == sorted(created, reverse=True)  # newest first

        # The console script, as a user runs it: a row per run with its status, and --json for scripts.
        table = subprocess.run([NLPKIT, "runs", str(runs)], capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        shown = {line.split()[0].rsplit("-", 2)[0]: line.split()[3] for line in table.stdout.splitlines()[2:]}
        assert shown == statuses(runs)
        as_json = subprocess.run([NLPKIT, "runs", str(runs), "--json"], capture_output=True, text=True, timeout=60)
        assert {row["name"]: row["status"] for row in json.loads(as_json.stdout)} == \
            {row.name: row.status for row in list_runs(runs)}
    finally:
        running.kill()
        running.wait()
    assert statuses(runs)["running"] == "interrupted"
