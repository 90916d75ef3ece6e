"""Experiment trackers: Lightning's TensorBoard, MLflow and Weights & Biases loggers beside ``metrics.csv``.

A recipe's ``logging.trackers`` names them (``nlpkit.recipe.LoggingSection``); the run's own
``metrics.csv`` (``nlpkit.training.history``) is written whatever it says. Lightning sends each
tracker what it sends ``metrics.csv``: ``train_loss`` every ``training.log_every_n_steps`` steps,
``val_*`` after each validation and, at the end, the validation of the run's model and the test
metrics, which are the run's final metrics (``metrics.json``). Each tracker also gets the resolved
recipe, flattened to the keys an override names (``training.batch_size``), as hyperparameters:
MLflow's params and W&B's config when training starts; TensorBoard's HPARAMS tab, which shows them
beside the final metrics (scalars ``final/val_loss`` ...), at the end.

Where they write by default, all inside the run folder:

- tensorboard: ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``);
- mlflow: ``sqlite:///RUN/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``),
  artifacts in ``RUN/mlflow-artifacts/``;
- wandb: ``RUN/wandb/offline-run-*`` (``wandb sync`` uploads it; ``logging.wandb.mode: online`` logs live).

``nlpkit run --resume`` continues the same tracker runs: TensorBoard appends to the run's folder,
MLflow and W&B reopen the runs whose ids ``trackers.json`` (in the run folder) recorded. MLflow's
params cannot change once logged, so a resumed MLflow run keeps those of its start (a resume may
change only ``training.epochs``, ``training.max_steps``, ``trainer.*`` and ``logging.*``).

Only the run's first process writes: Lightning's loggers act on global rank zero only, and
:class:`TrackerRun` does its work there too.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from typing_extensions import override

from nlpkit._files import atomic_write
from nlpkit.recipe import flatten_recipe
from nlpkit.recipe import Recipe

__all__ = ["TRACKERS_FILE", "MLFLOW_DB", "build_trackers", "TrackerRun", "finish_trackers"]

# The tracker runs a run folder's run writes to, for --resume: {"mlflow": {"tracking_uri", "run_id"}, "wandb": {"id"}}.
TRACKERS_FILE = "trackers.json"
MLFLOW_DB = "mlflow.db"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_ARTIFACTS_DIR = "mlflow-artifacts"
# TensorBoard's names of the final metrics (final/val_loss ...): its HPARAMS tab shows them beside the recipe.
FINAL_PREFIX = "final/"


def _recorded(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRACKERS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def build_trackers(recipe: Recipe, run_dir: Path) -> list[Logger]:
    """Lightning loggers for the trackers ``recipe.logging`` names, continuing those recorded in ``run_dir``.

    Nothing is written or connected to here: each logger opens its run when first used (on rank zero).
    """
    section = recipe.logging
    recorded = _recorded(run_dir)
    loggers: list[Logger] = []
    if "tensorboard" in section.trackers:
        # No hp_metric placeholder: the final metrics go into the HPARAMS tab at the end (finish_trackers).
        loggers.append(TensorBoardLogger(save_dir=run_dir, name="", version=TENSORBOARD_DIR, default_hp_metric=False))
    if "mlflow" in section.trackers:
        uri = section.mlflow.tracking_uri
        before = recorded.get("mlflow", {})
        # The same store as before: continue its run (a run folder's own store moves with the folder).
        run_id = before.get("run_id") if before.get("tracking_uri") == uri else None
        in_run_folder = uri is None
        _quiet_mlflow()
        loggers.append(MLFlowLogger(
            experiment_name=section.mlflow.experiment or recipe.name or recipe.task,
            run_name=run_dir.name,
            tracking_uri=f"sqlite:///{run_dir / MLFLOW_DB}" if in_run_folder else uri,
            tags={"nlpkit.run_dir": str(run_dir)},
            # Artifacts of an experiment made in the run folder's store stay in the run folder too,
            # not in ./mlruns of whatever the current directory is.
            artifact_location=(run_dir / MLFLOW_ARTIFACTS_DIR).as_uri() if in_run_folder else None,
            run_id=run_id,
        ))
    if "wandb" in section.trackers:
        # mode goes to wandb.init, rather than WandbLogger(offline=True), which sets WANDB_MODE for the whole process.
        wandb_logger = WandbLogger(
            name=run_dir.name,
            save_dir=str(run_dir),
            project=section.wandb.project or recipe.name or recipe.task,
            entity=section.wandb.entity,
            id=recorded.get("wandb", {}).get("id"),
            mode=section.wandb.mode,
            # Its start and end lines say where the run is and how to sync it; not its sparkline tables.
            settings={"quiet": True},
        )
        # Lightning passes wandb.init anonymous=None, a setting wandb now warns has no effect.
        wandb_logger._wandb_init.pop("anonymous", None)
        loggers.append(wandb_logger)
    return loggers


def _quiet_mlflow() -> None:
    """Keep the set-up chatter of a new store off the console: its table creation, and Lightning's "Creating it"."""
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("pytorch_lightning.loggers.mlflow").setLevel(logging.ERROR)


class TrackerRun(pl.Callback):
    """Starts or continues the tracker runs: logs the recipe, records the runs' ids, closes W&B on an error.

    Args:
        recipe: the resolved recipe (as the run folder records it).
        run_dir: the run folder.
        resumed: whether this is ``--resume`` of the run in ``run_dir``.
    """

    def __init__(self, recipe: dict[str, Any], run_dir: Path, resumed: bool) -> None:
        self.params = flatten_recipe(recipe)
        self.logging = recipe.get("logging", {})
        self.run_dir = run_dir
        self.resumed = resumed

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        recorded = _recorded(self.run_dir)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                if logger.run_id == recorded.get("mlflow", {}).get("run_id"):  # reopened: its params are set
                    logger.experiment.update_run(logger.run_id, status="RUNNING")
                else:
                    logger.log_hyperparams(self.params)
                recorded["mlflow"] = {"tracking_uri": self.logging.get("mlflow", {}).get("tracking_uri"),
                                      "run_id": logger.run_id}
            elif isinstance(logger, WandbLogger):
                logger.log_hyperparams(self.params)
                recorded["wandb"] = {"id": logger.experiment.id}
        if recorded:
            atomic_write(self.run_dir / TRACKERS_FILE, json.dumps(recorded, indent=2) + "\n")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run replays the steps after its checkpoint, and metrics.csv drops their old rows
        # (nlpkit.training.history); a TensorBoard restart marker makes its readers drop their old points too.
        if not self.resumed or not trainer.is_global_zero:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                restart = Event(wall_time=time.time(), step=trainer.global_step,
                                session_log=SessionLog(status=SessionLog.START))
                logger.experiment._get_file_writer().add_event(restart)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning marks the MLflow run failed and closes TensorBoard's file itself; a W&B run left open would
        # be taken over by the next WandbLogger of this process.
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            import wandb

            if wandb.run is not None:
                wandb.run.finish(exit_code=1)

    def finish(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        """Give the trackers the final metrics and close them (rank zero only)."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # The HPARAMS tab: the recipe beside the final metrics. They are logged as scalars too, at the
                # last step: under final/, as the final validation's val_* points are there already.
                final = {f"{FINAL_PREFIX}{key}": value for key, value in metrics.items()}
                logger.log_hyperparams(self.params, final, step=trainer.global_step)
                logger.finalize("success")
            elif isinstance(logger, WandbLogger):
                logger.experiment.summary.update(metrics)
                logger.experiment.finish()


def finish_trackers(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Give the trackers of ``trainer`` the run's final metrics and close them."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, TrackerRun):
            callback.finish(trainer, metrics)
