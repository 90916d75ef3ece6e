"""From a validated recipe to a finished run folder: data, tokenizer, model, Lightning Trainer."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpkit.errors import NlpkitError
from nlpkit.plugins import PluginSet, load_plugins
from nlpkit.recipe import Recipe, load_recipe, recipe_to_dict
from nlpkit.registry import Registries
from nlpkit.runs import CHECKPOINT_DIR, METRICS_FILE, RunFolder
from nlpkit.tasks import Task, TaskModel
from nlpkit.tokenization import Tokenizer

__all__ = ["RunResult", "run", "train", "prepare_inputs", "build_backbone_config", "quiet_lightning"]

log = logging.getLogger("nlpkit")


@dataclass
class RunResult:
    """What :func:`nlpkit.run` returns.

    Attributes:
        run_dir: the new run folder.
        metrics: validation metrics at the best checkpoint (``val_*``) and, when
            the recipe has a test split, test metrics (``test_*``).
    """

    run_dir: Path
    metrics: dict[str, float]


@dataclass
class PreparedInputs:
    """Everything built from the recipe and the data before any training."""

    task: Task
    splits: Any
    tokenizer: Tokenizer
    backbone_config: Any


def build_backbone_config(recipe: Recipe, registries: Registries, tokenizer: Tokenizer) -> Any:
    """The recipe's backbone config, sized to the tokenizer's vocabulary and padding id."""
    from nlpkit.backbones.config import BackboneConfig

    section = recipe.backbone
    base = registries.backbone_presets.get(section.preset)().to_dict() if section.preset else {}
    if section.kind:
        base["kind"] = section.kind
    config = BackboneConfig.from_dict({**base, **section.config})
    if recipe.tokenizer.max_length > config.max_positions:
        raise NlpkitError(
            f"{recipe.source}: tokenizer.max_length: {recipe.tokenizer.max_length} is longer than the backbone's "
            f"max_positions ({config.max_positions})"
        )
    return dataclasses.replace(config, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)


def _train_tokenizer(recipe: Recipe, train_split: Any, columns: list[str]) -> Tokenizer:
    def texts():
        for batch in train_split.iter(batch_size=1000):
            for column in columns:
                yield from (str(t) for t in batch[column])

    tok = recipe.tokenizer
    return Tokenizer.train(
        texts(), tok.train, tok.vocab_size, tok.min_frequency, tok.lowercase, tok.max_length,
        length=len(train_split) * len(columns),
    )


def prepare_inputs(recipe: Recipe, registries: Registries) -> PreparedInputs:
    """Load and check the data, build the tokenizer, set up the task and size the backbone.

    ``nlpkit check`` stops here; ``nlpkit run`` goes on to train.
    """
    from nlpkit.data import load_splits, select_columns

    task_cls = registries.tasks.get(recipe.task)
    raw = load_splits(recipe.data, registries.data_formats)
    splits = select_columns(
        raw, recipe.data, [*task_cls.input_columns, *task_cls.target_columns], task_cls.optional_columns
    )
    if recipe.tokenizer.file is not None:
        tokenizer = Tokenizer.from_file(recipe.tokenizer.file, max_length=recipe.tokenizer.max_length)
    else:
        tokenizer = _train_tokenizer(recipe, splits["train"], task_cls.text_columns(splits["train"].column_names))
    task = task_cls(recipe.task_options, tokenizer)
    task.setup(dict(splits))
    for name, dataset in splits.items():
        source = getattr(recipe.data, name) or recipe.data.hub
        task.check_split(f"data.{name} ({source})", dataset)
    return PreparedInputs(task, splits, tokenizer, build_backbone_config(recipe, registries, tokenizer))


def _trainer(recipe: Recipe, run: RunFolder) -> tuple[Any, Any]:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    training = recipe.training
    checkpoint = ModelCheckpoint(
        dirpath=run.path / CHECKPOINT_DIR,
        filename="best",
        monitor=training.monitor,
        mode=training.monitor_mode,
        save_top_k=1,
        save_last=True,
    )
    callbacks: list[Any] = [checkpoint]
    if training.early_stopping is not None:
        callbacks.append(
            EarlyStopping(
                monitor=training.monitor,
                mode=training.monitor_mode,
                patience=training.early_stopping.patience,
                min_delta=training.early_stopping.min_delta,
            )
        )
    trainer = pl.Trainer(
        default_root_dir=run.path,
        max_epochs=training.epochs,
        max_steps=training.max_steps,
        precision=training.precision,
        gradient_clip_val=recipe.optimization.grad_clip,
        accumulate_grad_batches=recipe.optimization.accumulate_grad_batches,
        log_every_n_steps=training.log_every_n_steps,
        # name="" and version="" put metrics.csv straight into the run folder.
        logger=CSVLogger(save_dir=run.path, name="", version=""),
        callbacks=callbacks,
        **recipe.trainer,
    )
    return trainer, checkpoint


class _DropLightningAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Keep Lightning's output to what a user of nlpkit can act on."""
    # With features tokenized ahead of time, collation is cheap: extra DataLoader
    # workers cost more start-up time than they save on small CPU runs.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # The run folder is new and already holds the recipe: metrics.csv goes beside it on purpose.
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningAdverts())


def train(recipe: Recipe, plugin_set: PluginSet) -> RunResult:
    """Train the validated ``recipe`` into a new run folder."""
    import pytorch_lightning as pl

    from nlpkit.training.datamodule import TaskDataModule
    from nlpkit.training.module import TaskModule

    quiet_lightning()
    registries = plugin_set.registries
    pl.seed_everything(recipe.training.seed, verbose=False)
    inputs = prepare_inputs(recipe, registries)
    task, config = inputs.task, inputs.backbone_config
    backbone = registries.backbone_kinds.get(config.kind)(config)
    model = TaskModel(backbone, task.build_head(config))

    run = RunFolder.create(recipe.output_dir, recipe.name)
    resolved = recipe_to_dict(recipe)
    run.write_start(recipe.task, resolved, config.to_dict(), task.state(), [p.name for p in plugin_set.plugins])
    inputs.tokenizer.save(run.path)
    log.info("run folder: %s", run.path)

    module = TaskModule(task, model, recipe.optimization, resolved)
    datamodule = TaskDataModule(task, inputs.splits, recipe.training, recipe.data.group_by_length)
    trainer, checkpoint = _trainer(recipe, run)
    trainer.fit(module, datamodule=datamodule)

    # Validating from the best checkpoint loads its weights into `module` (and so `model`).
    best = checkpoint.best_model_path or None
    metrics: dict[str, float] = {}
    for results in trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False):
        metrics.update(results)
    if "test" in inputs.splits:
        for results in trainer.test(module, datamodule=datamodule, verbose=False):
            metrics.update(results)
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    run.save_weights(model)
    run.write_json(METRICS_FILE, metrics)
    return RunResult(run.path, metrics)


def run(
    recipe: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    plugins: list[str] | tuple[str, ...] = (),
    blocked: list[str] | tuple[str, ...] = (),
) -> RunResult:
    """Validate a recipe, train it and return the run folder and its metrics.

    Args:
        recipe: a recipe YAML path, or a mapping with the same structure.
        overrides: ``key.sub=value`` strings.
        plugins: extra plugin modules to load.
        blocked: plugin names not to load.

    Raises:
        NlpkitError: any user error, before training starts where possible.

    Example:
        >>> result = nlpkit.run("recipes/quickstart.yaml", overrides=["training.epochs=1"])
        >>> result.metrics["val_accuracy"]
    """
    plugin_set = load_plugins(plugins, blocked)
    validated = load_recipe(recipe, overrides, plugin_set.registries)
    return train(validated, plugin_set)
