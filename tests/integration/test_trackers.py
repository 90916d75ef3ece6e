"""Experiment trackers (a recipe's ``logging:`` section): what a tiny run leaves in TensorBoard, MLflow and W&B.

Each store is read back with its own library's reader (TensorBoard's EventAccumulator, MLflow's
client, W&B's record protocol) and compared with the run's own ``metrics.csv``, ``metrics.json``
and ``recipe.yaml``. W&B runs offline with no account and no server it could reach.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

import nlpkit
from nlpkit.cli import main
from nlpkit.testing import tiny_classification_data, tiny_recipe
from tests.helpers import assert_one_line_error

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

TRACKERS = ["tensorboard", "mlflow", "wandb"]


# -- reading the run folder and the trackers' stores ----------------------------


def history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as (step, value) series, one per column; the cells a row leaves empty are no point."""
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [name for name in rows[0] if name != "step"]
    return {name: [(int(row["step"]), float(row[name])) for row in rows if row[name] != ""] for name in columns}


def leaves(recipe: dict[str, Any]) -> dict[str, Any]:
    """recipe.yaml's values by the dotted keys an override names (an empty mapping has none), read by pandas."""
    import pandas

    return pandas.json_normalize(recipe, sep=".").iloc[0].to_dict()


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_hparams(run_dir: Path) -> dict[str, Any]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in values.items()}


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The records of a W&B ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB-log
    chunks in 32 KiB blocks (crc32 4 bytes, length 2, type 1: full, first, middle, last) holding protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room left for a chunk header: the block's padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(run_dir: Path) -> dict[str, Any]:
    """What W&B's offline run folders of ``run_dir`` hold: the config, the history rows, the summary at the end."""
    config: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for run_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            elif kind == "summary":
                summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.summary.update})
    return {"config": config, "history": rows, "summary": summary}


def mlflow_store(run_dir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")


def only_mlflow_run(client: MlflowClient) -> Any:
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    return run


def same_points(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """The same (step, value) points, in any order; TensorBoard keeps values in float32."""
    return len(got) == len(expected) and all(
        step == expected_step and value == pytest.approx(expected_value, rel=1e-6)
        for (step, value), (expected_step, expected_value) in zip(sorted(got), sorted(expected)))


# -- one run with every tracker ------------------------------------------------------


@pytest.fixture(scope="module")
def isolated_wandb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No W&B account and no server to reach: offline must be enough."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
            patch.delenv(name, raising=False)
        patch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing answers there
        patch.setenv("NETRC", str(home / "netrc"))
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(home / name.lower()))
        yield


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, isolated_wandb: None) -> tuple[dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("trackers")
    recipe = tiny_recipe("classification", tiny_classification_data(folder / "data"), folder / "runs")
    recipe["logging"] = {"trackers": TRACKERS}
    return recipe, nlpkit.run(recipe).run_dir


def test_tensorboard_holds_every_logged_metric_and_the_recipe_beside_the_final_metrics(tracked):
    _, run_dir = tracked
    scalars, expected = tensorboard_scalars(run_dir), history(run_dir)
    for name, points in expected.items():  # train_loss, val_*, test_*, epoch: the same steps and values
        assert same_points(scalars[name], points), name
    final = json.loads((run_dir / "metrics.json").read_text())
    assert {name: scalars[f"final/{name}"][-1][1] for name in final} == pytest.approx(final, rel=1e-6)
    hparams, recipe = tensorboard_hparams(run_dir), leaves(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
    assert set(hparams) == set(recipe)
    assert hparams["task"] == "classification" and hparams["training.batch_size"] == 4
    assert hparams["logging.trackers"] == str(TRACKERS)


def test_mlflow_holds_the_run_with_its_metric_history_final_metrics_and_recipe(tracked):
    _, run_dir = tracked
    client = mlflow_store(run_dir)
    run = only_mlflow_run(client)
    assert (run.info.status, run.info.run_name) == ("FINISHED", run_dir.name)
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    for name, points in history(run_dir).items():
        logged = [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, name)]
        assert same_points(logged, points), name
    final = json.loads((run_dir / "metrics.json").read_text())
    assert {name: run.data.metrics[name] for name in final} == pytest.approx(final)  # the latest values
    recipe = leaves(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
    assert set(run.data.params) == set(recipe)
    assert run.data.params["training.batch_size"] == "4" and run.data.params["task"] == "classification"


def test_wandb_offline_writes_its_run_folder_with_the_metrics_summary_and_recipe(tracked):
    _, run_dir = tracked
    (offline,) = run_dir.glob("wandb/offline-run-*")
    assert offline.name.endswith(json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"])
    logged = wandb_run(run_dir)
    final = json.loads((run_dir / "metrics.json").read_text())
    assert {name: logged["summary"][name] for name in final} == pytest.approx(final)
    train_loss = [row["train_loss"] for row in logged["history"] if "train_loss" in row]
    assert train_loss == pytest.approx([value for _, value in history(run_dir)["train_loss"]])
    recipe = leaves(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
    assert set(recipe) <= set(logged["config"])
    assert logged["config"]["training.batch_size"] == 4


def test_a_resumed_run_continues_the_same_tracker_runs(tracked, tmp_path):
    recipe, finished = tracked
    run_dir = Path(shutil.copytree(finished, tmp_path / finished.name))  # a copy resumes its own stores
    before = json.loads((run_dir / "trackers.json").read_text())
    nlpkit.run(recipe, ["training.max_steps=4"], resume=run_dir)

    assert json.loads((run_dir / "trackers.json").read_text()) == before
    expected = history(run_dir)
    assert max(step for step, _ in expected["train_loss"]) > max(step for step, _ in history(finished)["train_loss"])
    # TensorBoard drops the points of the steps the resumed run logged again, as metrics.csv does.
    scalars = tensorboard_scalars(run_dir)
    for name, points in expected.items():
        assert same_points(scalars[name], points), name
    # MLflow continues its run (its history only grows); its params stay those of the start.
    client = mlflow_store(run_dir)
    run = only_mlflow_run(client)
    assert (run.info.run_id, run.info.status) == (before["mlflow"]["run_id"], "FINISHED")
    logged = {(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, "train_loss")}
    assert set(expected["train_loss"]) <= logged
    assert run.data.params["training.max_steps"] == "2"
    # W&B: a second offline folder of the same run id, which `wandb sync` uploads as one run.
    assert {path.name.rsplit("-", 1)[1] for path in run_dir.glob("wandb/offline-run-*")} == {before["wandb"]["id"]}
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2


# -- user errors ------------------------------------------------------------------


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    recipe = tiny_recipe("classification", tiny_classification_data(tmp_path / "data"), tmp_path / "runs")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_an_unknown_tracker_is_a_one_line_error_naming_the_known_ones(recipe_file, capsys):
    code = main(["check", str(recipe_file), "logging.trackers=[csv, tensorbord]"])
    assert_one_line_error(code, capsys.readouterr(), ["logging.trackers.1", "'tensorbord'", "'mlflow'",
                                                      "did you mean 'tensorboard'"])


@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_tracker_whose_package_is_missing_names_the_extra_to_install(recipe_file, capsys, monkeypatch, tracker):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == tracker else find_spec(name, *args, **kwargs))
    code = main(["run", str(recipe_file), f"logging.trackers=[{tracker}]"])
    assert_one_line_error(code, capsys.readouterr(), ["logging.trackers", f'pip install "nlpkit[{tracker}]"'])
    assert not (recipe_file.parent / "runs").exists()  # refused before any run folder was made



@pytest.mark.parametrize("folder", ["./mlruns", "file:///tmp/mlruns"])
def test_an_mlflow_folder_store_is_refused_before_the_run(recipe_file, capsys, folder):
    code = main(["check", str(recipe_file), "logging.trackers=[mlflow]", f"logging.mlflow.tracking_uri={folder}"])
    assert_one_line_error(code, capsys.readouterr(), ["logging.mlflow.tracking_uri", "sqlite:///PATH/mlflow.db"])


def test_online_wandb_without_a_login_is_refused_before_the_run(recipe_file, capsys, monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # stdin is not a terminal here: wandb could not ask
    online = ["logging.trackers=[wandb]", "logging.wandb.mode=online"]
    code = main(["run", str(recipe_file), *online])
    assert_one_line_error(code, capsys.readouterr(), ["logging.wandb.mode", "WANDB_API_KEY", "wandb login", "offline"])
    assert not (recipe_file.parent / "runs").exists()

    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # where `wandb login` keeps the key
    assert main(["check", str(recipe_file), *online]) == 0


def test_a_tracked_run_predicts_where_its_trackers_are_not_installed(tracked, monkeypatch):
    _, run_dir = tracked
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # training needs the trackers; predicting does not
                        lambda name, *args, **kwargs: None if name in TRACKERS else find_spec(name, *args, **kwargs))
    (answer,) = nlpkit.load(run_dir).predict(["a good film"])
    assert answer["label"] in {"pos", "neg"}
