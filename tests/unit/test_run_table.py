"""``nlpkit runs``: a run's status from its recorded process and heartbeat, its best metric, the order of the table.

The run folders here are written by ``RunFolder`` as a run writes them; the
processes are real ones (this test's, a finished child, a killed child not yet
reaped). ``tests/integration/test_runs_table.py`` trains and kills real runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlpkit import NlpkitError
from nlpkit._process import this_process
from nlpkit.cli import main
from nlpkit.run_table import STALE_AFTER_S, list_runs, read_run, run_status
from nlpkit.runs import RunFolder

RECIPE = {"task": "classification", "backbone": {"preset": "encoder-tiny"},
          "training": {"monitor": "val_accuracy", "monitor_mode": "max"}}


def make_run(root: Path, name: str, recipe: dict | None = None, **run_json) -> RunFolder:
    """A run folder as ``write_start`` leaves it, with ``run_json`` entries changed (None removes one)."""
    run = RunFolder.create(root, name)
    run.write_start("classification", recipe or RECIPE, {}, {}, ["classification"])
    info = {**run.read_json("run.json"), **run_json}
    run.write_json("run.json", {key: value for key, value in info.items() if value is not None})
    return run


def status(run: RunFolder) -> str:
    return run_status(run.read_json("run.json"))


def ago(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def test_a_run_is_running_while_its_process_lives_and_interrupted_once_it_is_gone(tmp_path):
    assert status(make_run(tmp_path, "alive")) == "running"  # write_start records this very process

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = {**this_process(), "pid": child.pid}
    assert status(make_run(tmp_path, "gone", process=gone)) == "interrupted"

    # A process id that another process now has: its start time is not the run's.
    reused = {**this_process(), "start_ticks": this_process()["start_ticks"] - 1}
    assert status(make_run(tmp_path, "reused", process=reused)) == "interrupted"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="a zombie is told apart through /proc")
def test_a_killed_process_that_its_parent_has_not_reaped_is_gone(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGKILL)
        time.sleep(0.5)  # not waited for: a zombie, whose pid still answers signal 0
        os.kill(child.pid, 0)
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        run = make_run(tmp_path, "zombie", process={**this_process(), "pid": child.pid,
                                                    "start_ticks": int(stat[stat.rfind(")") + 2:].split()[19])})
        assert status(run) == "interrupted"
    finally:
        child.wait()


def test_a_run_of_another_host_is_running_while_its_heartbeat_is_fresh(tmp_path):
    elsewhere = {"host": "another-machine.example", "pid": os.getpid(), "start_ticks": None}
    assert status(make_run(tmp_path, "fresh", process=elsewhere, heartbeat=ago(60))) == "running"
    assert status(make_run(tmp_path, "stale", process=elsewhere, heartbeat=ago(STALE_AFTER_S + 60))) == "interrupted"


def test_finished_and_failed_are_what_run_json_says(tmp_path):
    finished, failed = make_run(tmp_path, "done"), make_run(tmp_path, "broken")
    finished.mark_finished()
    failed.mark_failed("toy: the data broke at step 6")
    assert status(finished) == "finished" and status(failed) == "failed"
    assert read_run(failed.path).error == "toy: the data broke at step 6"


def test_a_resumed_run_records_its_new_process_and_forgets_its_end(tmp_path):
    run = make_run(tmp_path, "resumed", process={**this_process(), "pid": 999_999_999})
    run.mark_failed("boom")
    run.record_process()
    info = run.read_json("run.json")
    assert "status" not in info and "error" not in info and "ended" not in info
    assert status(run) == "running"


def test_the_table_is_newest_first_with_the_best_metric_and_the_wall_time(tmp_path):
    old = make_run(tmp_path, "old", created="2026-01-01T10:00:00")
    (old.path / "metrics.csv").write_text("epoch,step,val_accuracy,val_loss\n0,10,0.5,0.9\n1,20,0.75,0.4\n2,30,0.625,0.5\n")
    old.mark_finished()
    old.write_json("run.json", {**old.read_json("run.json"), "ended": "2026-01-01T10:30:05+00:00",
                                "created": dt.datetime(2026, 1, 1, 10, 0, 0, tzinfo=dt.timezone.utc)
                                .astimezone().replace(tzinfo=None).isoformat(timespec="seconds")})
    old.write_json("metrics.json", {"val_accuracy": 0.7, "val_loss": 0.45})
    lower = {**RECIPE, "training": {"monitor": "val_loss", "monitor_mode": "min"}}
    new = make_run(tmp_path, "new", lower)
    (new.path / "metrics.csv").write_text("epoch,step,train_loss,val_loss\n0,5,1.0,\n0,10,,0.8\n1,20,,0.3\n1,25,0.2,\n")
    rows = list_runs(tmp_path)
    assert [row.name for row in rows] == [new.path.name, old.path.name]
    # A finished run's best is its metrics.json (the best checkpoint's); a running one's the best validation so far.
    assert (rows[1].status, rows[1].monitor, rows[1].best) == ("finished", "val_accuracy", 0.7)
    assert (rows[0].status, rows[0].monitor, rows[0].best) == ("running", "val_loss", 0.3)
    assert rows[1].wall_time_s == 30 * 60 + 5
    assert rows[0].backbone == rows[1].backbone == "encoder-tiny"


def test_the_command_prints_the_table_or_json_and_a_bad_folder_is_a_one_line_error(tmp_path, capsys):
    finished = make_run(tmp_path, "done", {**RECIPE, "backbone": {"pretrained": "/models/all-minilm-l6-v2"}})
    finished.mark_finished()
    broken = make_run(tmp_path, "broken")
    (broken.path / "run.json").write_text("{not json")
    (tmp_path / "not-a-run").mkdir()

    assert main(["runs", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    (row,) = json.loads(captured.out)  # the unreadable run is left out, with a warning
    assert (row["name"], row["task"], row["backbone"], row["status"]) == (finished.path.name, "classification",
                                                                          "all-minilm-l6-v2", "finished")
    assert main(["runs", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "task", "backbone", "status", "best", "wall", "time"]
    assert lines[2].split()[:4] == [finished.path.name, "classification", "all-minilm-l6-v2", "finished"]

    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "nowhere' is not a folder" in line
    with pytest.raises(NlpkitError):
        list_runs(tmp_path / "nowhere")
