"""From a validated recipe to a finished run folder: data, tokenizer, model, Lightning Trainer."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.adapters import base_weight_names
from nlpkit.assembly import build_model, prepare_inputs
from nlpkit.backbones.config import config_of
from nlpkit.errors import NlpkitError
from nlpkit.plugins import PluginSet, load_plugins
from nlpkit.recipe import Recipe, flatten_recipe, load_recipe, recipe_to_dict
from nlpkit.report import write_predictions
from nlpkit.runs import LAST_CHECKPOINT, METRICS_FILE, RUN_FILE, SOURCE_CHECKPOINT_FILE, RunFolder

if TYPE_CHECKING:
    from nlpkit.training.console import ConsoleOptions

__all__ = [
    "RunResult",
    "run",
    "train",
    "checkpoint_to_resume",
    "quiet_lightning",
    "resolve_precision",
]

log = logging.getLogger("nlpkit")


@dataclass
class RunResult:
    """What :func:`nlpkit.run` returns.

    Attributes:
        run_dir: the new run folder.
        metrics: validation metrics at the best checkpoint (``val_*``) and, when
            the recipe has a test split, test metrics (``test_*``).
        primary: False in the other processes of a multi-process run, which
            write nothing and print nothing.
    """

    run_dir: Path
    metrics: dict[str, float]
    primary: bool = True


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """The Lightning precision that ``training.precision: auto`` means on this machine.

    ``bf16-mixed`` where the hardware multiplies bf16 natively: a CUDA GPU
    that supports it, or a CPU with AVX512-BF16 or AMX; ``32-true`` elsewhere
    (on a CPU without them bf16 is emulated and slower than fp32).

    Why bf16-mixed: on this project's reference CPU (AMD EPYC, AVX512-BF16)
    a BERT-base training step takes 4.0 s in bf16 autocast against 6.6 s in
    fp32 (benchmarks/encoder_train_step.py), and fine-tuning all-MiniLM-L6-v2
    on SST-2 reaches the same dev accuracy in both (0.891 with nlpkit in bf16;
    0.890 bf16 / 0.891 fp32 with the transformers Trainer). Weights, optimizer
    state and the loss stay fp32; only matrix products run in bf16.

    Args:
        precision: the recipe's value; anything but ``auto`` is returned as is.
        accelerator: the recipe's ``trainer.accelerator`` (``auto``, ``cpu``, ``gpu`` ...).
    """
    if precision != "auto":
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if accelerator in ("auto", "cpu") and _cpu_multiplies_bf16():
        return "bf16-mixed"
    return "32-true"


def _cpu_multiplies_bf16() -> bool:
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes (they are x86-only): assume no
        return False


def _trainer(recipe: Recipe, run: RunFolder, resumed_recipe: dict[str, Any] | None = None,
             console: ConsoleOptions | None = None) -> tuple[Any, Any, Any]:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from nlpkit.training.checkpoints import AtomicCheckpointIO, LatestCheckpoint
    from nlpkit.training.console import ConsoleOptions, console_callbacks
    from nlpkit.training.history import RunHistory, RunHistoryLogger
    from nlpkit.training.liveness import RunLiveness
    from nlpkit.training.trackers import TrackerRun, build_trackers

    training = recipe.training
    mode = training.monitor_mode
    if mode is None:  # load_recipe sets it from the monitored metric
        raise NlpkitError("training.monitor_mode: not set")
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoint_dir,
        filename="best",
        monitor=training.monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    logger = RunHistoryLogger(run.path)
    # The learning rate of each parameter group (lr-AdamW/pg1 ...) in metrics.csv, for the run report.
    callbacks: list[Any] = [RunHistory(logger, run.path, resumed_recipe), RunLiveness(run.path, resumed_recipe is not None),
                            LearningRateMonitor(logging_interval="step")]
    trackers = build_trackers(recipe, run.path)
    if trackers:
        callbacks.append(TrackerRun(resumed_recipe or run.read_recipe(), run.path, resumed_recipe is not None))
    # The start block, progress bar, validation table and throughput; they decide on the bar and the model summary.
    shown, console_arguments = console_callbacks(recipe, run.path, console or ConsoleOptions())
    callbacks += shown
    recent = None
    if training.average_checkpoints:
        # The ends of the last N epochs, on disk (so a resumed run still has them): train()
        # averages their weights into the run's model.
        recent = ModelCheckpoint(
            dirpath=run.checkpoint_dir,
            filename="epoch-{epoch:03d}",
            auto_insert_metric_name=False,
            monitor="step",
            mode="max",
            save_top_k=training.average_checkpoints,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        callbacks.append(recent)
    # After `recent`: a run killed between the two at its first epoch end resumes from the one written
    # first, and the run's model (the average) still has that epoch.
    callbacks.append(checkpoint)
    if training.early_stopping is not None:
        callbacks.append(
            EarlyStopping(
                monitor=training.monitor,
                mode=mode,
                patience=training.early_stopping.patience,
                min_delta=training.early_stopping.min_delta,
            )
        )
    # What --resume continues from: every N steps, mid-epoch too, and at every epoch end. Last in
    # the list, so that at an epoch end it saves what the other callbacks made of the epoch.
    callbacks.append(LatestCheckpoint(run.checkpoint_dir / LAST_CHECKPOINT, training.checkpoint_every_n_steps))
    if training.compile:
        from nlpkit.training.compile_time import CompileTime

        callbacks.append(CompileTime())
    trainer = pl.Trainer(
        default_root_dir=run.path,
        max_epochs=training.epochs,
        max_steps=training.max_steps,
        # One of recipe.PRECISIONS with "auto" resolved by train(): a name Lightning types as a Literal.
        precision=training.precision,  # type: ignore[arg-type]
        gradient_clip_val=recipe.optimization.grad_clip,
        accumulate_grad_batches=recipe.optimization.accumulate_grad_batches,
        log_every_n_steps=training.log_every_n_steps,
        logger=[logger, *trackers],  # metrics.csv first: Lightning's trainer.log_dir is the first logger's
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        **{**recipe.trainer, **console_arguments},
    )
    return trainer, checkpoint, recent


def average_checkpoints(module: Any, paths: list[str]) -> None:
    """Load the mean of the checkpoints' weights into ``module`` (Vaswani et al. 2017, sec. 6.1).

    Floating-point tensors are averaged in float32; others (step counters,
    integer buffers) are taken from the last checkpoint.
    """
    from nlpkit.training.checkpoints import read_checkpoint

    states = [read_checkpoint(path)["state_dict"] for path in sorted(paths)]
    averaged = {}
    for name, last in states[-1].items():
        if last.is_floating_point():
            averaged[name] = (sum(state[name].float() for state in states) / len(states)).to(last.dtype)
        else:
            averaged[name] = last
    module.load_state_dict(averaged)


def quiet_lightning() -> None:
    """Keep Lightning's output to what a user of nlpkit can act on."""
    # With features tokenized ahead of time, collation is cheap: extra DataLoader
    # workers cost more start-up time than they save on small CPU runs.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    # A resumed run writes into its own checkpoints/ folder on purpose.
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # nlpkit's DataModule restores the position in the epoch itself (TaskDataModule.state_dict).
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    # Only the summary's size estimate is affected; the default precision (auto) is bf16-mixed on many CPUs.
    warnings.filterwarnings("ignore", message=r".*is not supported by the model summary.*")
    # Lightning's INFO lines (the hardware banner "GPU available: False ...", tips to install litmodels,
    # "`Trainer(val_check_interval=1)` was configured ...", checkpoint-restoring notes) tell a user of
    # nlpkit nothing to act on; nlpkit's start block says what was chosen. Its warnings still show.
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


# The run folder every process of a multi-process run shares. On one machine the
# first process sets it before Lightning starts the others (which re-run the same
# command). On several machines the user sets it to a folder on shared storage:
# the first process of the first machine creates the run there, the others wait
# for it and join.
RUN_DIR_ENV = "NLPKIT_RUN_DIR"
JOIN_TIMEOUT_S = 600


def _is_global_zero(recipe: Recipe) -> bool:
    """Whether this process is the run's first (global rank 0), as Lightning's cluster environment says.

    Asked before the run folder (which the real Trainer writes into) exists, so
    of a Trainer built on the recipe's hardware settings alone, which
    reads the launcher's variables (SLURM, torchelastic, Lightning's own
    NODE_RANK / LOCAL_RANK) the way the real one will.
    """
    import pytorch_lightning as pl

    quiet = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level, quiet.level = quiet.level, logging.WARNING  # its "GPU available" lines come with the real Trainer
    try:
        probe = pl.Trainer(**{**recipe.trainer, "logger": False, "enable_checkpointing": False,
                              "enable_progress_bar": False, "enable_model_summary": False})
    finally:
        quiet.setLevel(level)
    return probe.is_global_zero


def _shared_run_folder(recipe: Recipe) -> RunFolder | None:
    """The run folder named by NLPKIT_RUN_DIR: joined, or None for the first process, which creates it there."""
    import time

    path = os.environ.get(RUN_DIR_ENV)
    if not path:
        return None
    started = (Path(path) / RUN_FILE).is_file()
    if started or not _is_global_zero(recipe):
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        # The first process writes run.json last of the set-up files (see train()).
        while not (Path(path) / RUN_FILE).is_file():
            if time.monotonic() > deadline:
                raise NlpkitError(f"{RUN_DIR_ENV}={path}: no run appeared there within {JOIN_TIMEOUT_S} s")
            time.sleep(1)
        return RunFolder.open_unfinished(path)
    return None


def train(recipe: Recipe, plugin_set: PluginSet, resume: str | Path | None = None, quiet: bool = False) -> RunResult:
    """Train the validated ``recipe`` into a new run folder, or continue ``resume``'s run.

    A new run that fails leaves no half-made run folder behind: without a
    checkpoint it is removed, with one it is marked failed in ``run.json``
    (and can be resumed); the error says which.

    Args:
        recipe: the validated recipe.
        plugin_set: the loaded plugins.
        resume: a run folder to continue from its latest checkpoint, mid-epoch
            included, with the batches it had not yet seen. Nothing in the
            folder changes until that checkpoint is restored.
        quiet: no start block, progress bar or validation table (``nlpkit.training.console``).
    """
    import pytorch_lightning as pl

    from nlpkit.training.console import ConsoleOptions
    from nlpkit.training.datamodule import TaskDataModule
    from nlpkit.training.module import TaskModule
    from nlpkit.training.trackers import finish_trackers

    quiet_lightning()
    registries = plugin_set.registries
    pl.seed_everything(recipe.training.seed, verbose=False)
    run = RunFolder.open_unfinished(resume) if resume else _shared_run_folder(recipe)
    precision_auto = recipe.training.precision == "auto"
    if precision_auto:
        # A resumed or joined run keeps the precision it started with, whatever this machine has.
        started = run.read_recipe()["training"]["precision"] if run is not None else None
        recipe.training.precision = started or resolve_precision("auto", recipe.trainer.get("accelerator", "auto"))
    resolved = recipe_to_dict(recipe)
    checkpoint_path = resumed_recipe = None
    if resume is not None:
        if run is None:  # an empty resume ("") opened no folder above
            raise NlpkitError(f"--resume: no run folder to resume ({resume!r})")
        checkpoint_path = checkpoint_to_resume(run, resolved)
        # The folder's recipe describes what was trained, epochs added by the resume included.
        resumed_recipe = {**resolved, **{key: run.read_recipe()[key] for key in _RUN_NAMING}}
    inputs = prepare_inputs(recipe, registries, run)
    task, config = inputs.task, inputs.backbone_config
    model, source = build_model(recipe, registries, task, config)

    created = run is None
    if run is None:
        if recipe.name is None:  # load_recipe names every recipe
            raise NlpkitError("name: the recipe has no name for its run folder")
        run = RunFolder.create(recipe.output_dir, recipe.name, path=os.environ.get(RUN_DIR_ENV))
    os.environ[RUN_DIR_ENV] = str(run.path)
    try:
        if created:
            inputs.tokenizer.save(run.path)
            if source is not None:
                run.write_json(SOURCE_CHECKPOINT_FILE, source)
            # The config the backbone was built with: a pretrained folder's weights settle what its config.json
            # cannot say alone (a T5 v1.1 or mT5 head of its own is untied), and loading the run must build the same.
            built = config_of(model.backbone)
            run.write_start(recipe.task, resolved, built.to_dict(), task.state(), [p.name for p in plugin_set.plugins])
        module = TaskModule(task, model, recipe.optimization, resolved)
        datamodule = TaskDataModule(task, inputs.splits, recipe.training, recipe.data.group_by_length)
        console = ConsoleOptions(quiet, precision_auto, checkpoint_path)
        trainer, checkpoint, recent = _trainer(recipe, run, resumed_recipe, console)
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint_path)
        # Validating from the best checkpoint loads its weights into `module` (and so `model`);
        # with averaging, the average of the last epochs is the run's model instead.
        best = checkpoint.best_model_path or None
        if recent is not None and recent.best_k_models:
            average_checkpoints(module, list(recent.best_k_models))
            log.info("the run's model: the average of %d checkpoints", len(recent.best_k_models))
            best = None
        metrics: dict[str, float] = {}
        if best is not None and _last_validation_saved_best(trainer, checkpoint):
            # The model holds the best checkpoint's weights, and the validation that saved it scored them:
            # a second pass would give the same numbers (5.5 s of an 8,000-row SST-2 job).
            metrics.update({name: value for name, value in trainer.callback_metrics.items() if name.startswith("val_")})
        else:
            for results in trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False):
                metrics.update(results)
        if "test" in inputs.splits:
            for results in trainer.test(module, datamodule=datamodule, verbose=False):
                metrics.update(results)
        metrics = {k: float(v) for k, v in sorted(metrics.items())}
        if trainer.is_global_zero:
            # A LoRA run from a checkpoint folder keeps its adapters and head; the folder keeps the rest.
            adapters_only = recipe.peft is not None and recipe.backbone.pretrained is not None
            run.save_weights(model, leave_out=base_weight_names(model) if adapters_only else None)
            run.write_json(METRICS_FILE, metrics)
            finish_trackers(trainer, metrics)
            _write_predictions(run, task, model, inputs.splits["validation"], recipe, trainer)
            run.mark_finished()
    except BaseException as error:
        if created:  # the process that made the folder; the others of a multi-process run joined it
            _abandon(run, error)
        raise
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
    if trainer.is_global_zero and recipe.report:
        _write_report(run, plugin_set)
    return RunResult(run.path, metrics, primary=trainer.is_global_zero)


def _last_validation_saved_best(trainer: Any, checkpoint: Any) -> bool:
    """Whether the best checkpoint was written at the last optimizer step, so the model in memory is that one.

    ``ModelCheckpoint`` records where and at which step it last saved (on every
    process alike, so all of them decide the same). With ``save_top_k=1`` it
    saves only a new best, at the end of a validation. A resumed run that has
    not improved since has no record: it validates from the checkpoint.
    """
    return (getattr(checkpoint, "_last_global_step_saved", -1) == trainer.global_step
            and getattr(checkpoint, "_last_checkpoint_saved", None) == checkpoint.best_model_path)


def _write_predictions(run: RunFolder, task: Any, model: Any, validation: Any, recipe: Recipe, trainer: Any) -> None:
    """What the report shows of the model's errors: the best model's answers to the validation split.

    A task that cannot answer (its ``encode`` needs the targets) keeps its trained run: the error is
    logged with its traceback and the report has no task part.
    """
    try:
        write_predictions(run.path, task, model, validation, recipe.training.eval_batch_size or recipe.training.batch_size,
                          trainer.strategy.root_device, recipe.trainer.get("limit_val_batches"),
                          forward_context=trainer.precision_plugin.forward_context)
    except Exception:
        log.exception("nlpkit: the validation predictions could not be written; the run report will not show "
                      "the task's part")


def _write_report(run: RunFolder, plugin_set: PluginSet) -> None:
    """The run report of a finished run; a failure is logged with its traceback and leaves the run finished."""
    from nlpkit.report import write_report

    try:
        log.info("report: %s", write_report(run.path, plugin_set))
    except Exception:  # the model and metrics are saved: a report that fails must not lose the run
        log.exception("nlpkit: the run finished, but its report could not be written; "
                      "write it with: nlpkit report %s", run.path)


def _abandon(run: RunFolder, error: BaseException) -> None:
    """A new run failed: remove its folder if nothing can be resumed, else mark it failed; say which.

    A user error (``NlpkitError``) is raised again with what happened to the
    folder added; any other error keeps its traceback, with the same note logged.
    """
    if not run.has_checkpoint:
        shutil.rmtree(run.path, ignore_errors=True)
        what = f"the unfinished run folder {run.path} was removed (it held no checkpoint)"
    elif isinstance(error, (KeyboardInterrupt, SystemExit)):  # Ctrl-C (Lightning exits on it): interrupted, not failed
        what = f"the run folder {run.path} keeps its checkpoints; continue it with --resume {run.path}"
    else:
        run.mark_failed(" ".join(str(error).split()) or type(error).__name__)
        what = f"the run folder {run.path} keeps its checkpoints and is marked failed; continue it with --resume {run.path}"
    if isinstance(error, NlpkitError):
        raise NlpkitError(f"{error} ({what})") from None
    log.error("nlpkit: %s", what)


# Fields a resumed run may change: how long it trains, on what hardware, where it is tracked,
# whether it writes a report, and the naming of a new run folder (the resumed run keeps its own).
_RUN_NAMING = ("name", "output_dir")
_RESUMABLE_CHANGES = ("training.epochs", "training.max_steps", "trainer.", "logging.", "report", *_RUN_NAMING)


def checkpoint_to_resume(run: RunFolder, resolved: dict[str, Any]) -> Path:
    """The checkpoint ``--resume`` continues ``run`` from (see ``latest_checkpoint``), checked against the recipe.

    Raises:
        NlpkitError: another task or a recipe that would train a different
            model, no checkpoint yet, or a checkpoint that is not safe to load.
    """
    from nlpkit.training.checkpoints import latest_checkpoint

    before = run.read_recipe()
    if before.get("task") != resolved["task"]:
        raise NlpkitError(f"--resume: {run.path} is a run of task '{before.get('task')}', but the recipe's task is "
                          f"'{resolved['task']}'; a run is resumed with the recipe it was started with")
    flat_before, flat_after = flatten_recipe(before), flatten_recipe(resolved)
    for key in sorted(set(flat_before) | set(flat_after)):
        if flat_before.get(key) != flat_after.get(key) and not key.startswith(_RESUMABLE_CHANGES):
            raise NlpkitError(
                f"--resume: the recipe's {key} is {flat_after.get(key)!r} but the run in {run.path} was trained with "
                f"{flat_before.get(key)!r}; only training.epochs, training.max_steps, trainer.*, logging.* and report may change"
            )
    try:
        newest = latest_checkpoint(run.checkpoint_dir)
    except NlpkitError as error:
        works = (", but predict, evaluate and export still work (they read model.safetensors)" if run.has_weights
                 else ": start it again with nlpkit run")
        raise NlpkitError(f"--resume: {error}; this run cannot be resumed{works}") from None
    if newest is None:
        every = before.get("training", {}).get("checkpoint_every_n_steps")
        raise NlpkitError(f"--resume: {run.path} has no checkpoint yet (the run stopped before its first one, written "
                          f"every {every} steps and at each epoch end); start it again with nlpkit run")
    return newest[0]


def run(
    recipe: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    plugins: list[str] | tuple[str, ...] = (),
    blocked: list[str] | tuple[str, ...] = (),
    resume: str | Path | None = None,
    quiet: bool = False,
) -> RunResult:
    """Validate a recipe, train it and return the run folder and its metrics.

    Args:
        recipe: a recipe YAML path, or a mapping with the same structure.
        overrides: ``key.sub=value`` strings.
        plugins: extra plugin modules to load.
        blocked: plugin names not to load.
        resume: an interrupted run's folder to continue (same recipe).
        quiet: no progress bar (nor start block and validation table, where logging shows them).

    Raises:
        NlpkitError: any user error, before training starts where possible.

    Example:
        >>> result = nlpkit.run("recipes/quickstart.yaml", overrides=["training.epochs=1"])
        >>> result.metrics["val_accuracy"]
    """
    plugin_set = load_plugins(plugins, blocked)
    validated = load_recipe(recipe, overrides, plugin_set.registries)
    return train(validated, plugin_set, resume, quiet)
