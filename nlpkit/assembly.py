"""Assembly: from a recipe to (tokenizer, task, backbone config, model), and from a run folder back.

The one place where these parts are put together, used by ``nlpkit run`` and
``--resume`` (:mod:`nlpkit.training.trainer`), ``nlpkit check``,
``nlpkit.load`` (:mod:`nlpkit.inference`) and the conformance kit
(:mod:`nlpkit.testing`):

- :func:`prepare_inputs`: load and check the data, build the tokenizer
  (trained on the data, read from a file or from the pretrained folder), set
  the task up and size the backbone config; given a run folder, the
  tokenizer, task state and config come from it instead.
- :func:`build_model`: the backbone (a preset's, or a pretrained folder's with
  its weights), the task head (from the checkpoint's matching head where
  there is one), frozen and checkpointed layers as the recipe says.
- :func:`restore`: a finished run folder's task and model, its weights loaded.

Nothing here knows Lightning.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nlpkit import tokenization
from nlpkit.backbones.config import BackboneConfig
from nlpkit.backbones.layers import initialisation_skipped
from nlpkit.errors import NlpkitError
from nlpkit.recipe import Recipe, load_recipe
from nlpkit.registry import Registries
from nlpkit.schema import Context, validation_error
from nlpkit.runs import BACKBONE_FILE, SOURCE_CHECKPOINT_FILE, TASK_STATE_FILE, RunFolder
from nlpkit.tasks import ExportsToTransformers, Task, TaskModel, TaskTokenizer
from nlpkit.tokenization import Tokenizer

__all__ = ["PreparedInputs", "Restored", "prepare_inputs", "build_backbone_config", "build_model", "restore",
           "restore_task"]

log = logging.getLogger("nlpkit")


@dataclass
class PreparedInputs:
    """Everything built from the recipe and the data before any training."""

    task: Task
    splits: Any
    tokenizer: TaskTokenizer
    backbone_config: Any


def build_backbone_config(recipe: Recipe, registries: Registries, tokenizer: Tokenizer) -> Any:
    """The recipe's backbone config, sized to the tokenizer's vocabulary and padding id."""
    from nlpkit.backbones.config import BackboneConfig

    section = recipe.backbone
    if section.pretrained:
        from nlpkit.backbones.checkpoints import checkpoint_config

        config = checkpoint_config(section.pretrained, registries=registries).config
        if tokenizer.vocab_size > config.vocab_size:
            raise NlpkitError(f"{recipe.source}: tokenizer: {tokenizer.vocab_size} tokens, but {section.pretrained} "
                              f"embeds only {config.vocab_size}")
        _check_length(recipe, config)
        return config
    base = registries.backbone_presets.get(section.preset)().to_dict() if section.preset else {}
    if section.kind:
        base["kind"] = section.kind
    config = BackboneConfig.from_dict({**base, **section.config})
    _check_length(recipe, config)
    return dataclasses.replace(config, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)


def _check_length(recipe: Recipe, config: Any) -> None:
    if recipe.tokenizer.max_length > config.max_positions:
        raise NlpkitError(
            f"{recipe.source}: tokenizer.max_length: {recipe.tokenizer.max_length} is longer than the backbone's "
            f"max_positions ({config.max_positions})"
        )


def build_model(recipe: Recipe, registries: Registries, task: Task, config: Any) -> tuple[TaskModel, dict[str, Any] | None]:
    """The backbone (with its pretrained weights when the recipe names a folder), the task head, frozen parts.

    Returns:
        The model, and for a pretrained backbone what the run folder records of
        its source (folder, family, config.json), for export; else None.
    """
    from nlpkit.finetuning import checkpoint_layers, compile_layers, freeze

    section = recipe.backbone
    source = None
    if section.pretrained:
        from nlpkit.backbones.checkpoints import build_from_checkpoint, load_checkpoint
        from nlpkit.backbones.checkpoints._common import fingerprint

        loaded = load_checkpoint(section.pretrained, registries=registries)
        task.checkpoint_family = loaded.family
        # from_pretrained hands back an inference-ready module (eval mode); training wants dropout on.
        model = TaskModel(build_from_checkpoint(loaded).train(), task.build_head(config), task.renamed_weights)
        _initialise_head(task, model, loaded.family, loaded.extra_state)
        # The fingerprint lets a LoRA run, which keeps only its adapters, refuse another base later.
        source = {"folder": section.pretrained, "family": loaded.family, "config": loaded.hf_config,
                  "fingerprint": fingerprint(Path(section.pretrained))}
    else:
        task.checkpoint_family = expressing_family(config, registries)
        model = TaskModel(registries.backbone_kinds.get(config.kind)(config), task.build_head(config),
                          task.renamed_weights)
    if recipe.peft is not None:
        from nlpkit.adapters import apply_adapters

        trainable, total = apply_adapters(model.backbone, recipe.peft)
        log.info("LoRA adapters: %s of %s backbone parameters train (%.2f%%)", f"{trainable:,}", f"{total:,}",
                 100 * trainable / total)
    if section.gradient_checkpointing:
        checkpoint_layers(model.backbone)
    if recipe.training.compile:
        compile_layers(model.backbone)
    frozen = freeze(model.backbone, section.freeze_embeddings, section.freeze_layers, section.freeze)
    if frozen:
        log.info("frozen: %d of %d backbone parameters", frozen, sum(p.numel() for p in model.backbone.parameters()))
    return model, source


def expressing_family(config: BackboneConfig, registries: Registries, source: dict[str, Any] | None = None) -> str | None:
    """The checkpoint family of a backbone: its source folder's, else the first that expresses it, else None."""
    from nlpkit.backbones.checkpoints import infer_family

    if source and source.get("family"):
        return str(source["family"])
    try:
        return infer_family(config, registries=registries)
    except NlpkitError:  # a backbone no family expresses keeps nlpkit's own head layout
        return None


def _initialise_head(task: Task, model: TaskModel, family: str, checkpoint_state: dict[str, Any]) -> None:
    """Start the task head from the checkpoint's matching head weights (BERT's pooler ...), where shapes agree."""
    spec = task.hf_head(family) if isinstance(task, ExportsToTransformers) else None
    if spec is None:
        return
    import torch

    head_state = model.head.state_dict()
    taken = []
    with torch.no_grad():
        for name, checkpoint_name in spec.weights.items():
            tensor = checkpoint_state.get(checkpoint_name)
            if tensor is not None and name in head_state and head_state[name].shape == tensor.shape:
                head_state[name].copy_(tensor)
                taken.append(checkpoint_name)
    if taken:
        log.info("task head starts from the checkpoint's %s", ", ".join(taken))


def _train_tokenizer(recipe: Recipe, train_split: Any, columns: list[str]) -> Tokenizer:
    def text_of(value: Any) -> str:
        # A list of pre-split words (NER's tokens) is text too: its words joined by spaces; a conversation
        # (chat data's messages) is its turns' contents, a line each.
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return "\n".join(str(message.get("content", "")) for message in value)
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    def texts() -> Iterator[str]:
        for batch in train_split.iter(batch_size=1000):
            for column in columns:
                yield from (text_of(value) for value in batch[column])

    tok = recipe.tokenizer
    if tok.train is None:  # load_recipe sets it when no file or pretrained folder gives the tokenizer
        raise NlpkitError("tokenizer.train: not set, and no tokenizer.file or backbone.pretrained to load one from")
    return Tokenizer.train(
        texts(), tok.train, tok.vocab_size, tok.min_frequency, tok.lowercase, tok.max_length,
        length=len(train_split) * len(columns),
    )


def prepare_inputs(recipe: Recipe, registries: Registries, run: RunFolder | None = None) -> PreparedInputs:
    """Load and check the data, build the tokenizer, set up the task and size the backbone.

    ``nlpkit check`` stops here; ``nlpkit run`` goes on to train. Given an
    existing ``run`` folder (a resumed run, or another process of a
    multi-process run), the tokenizer, task state and backbone config come from
    it instead of being learnt again, so every process trains the same model.
    """
    from nlpkit.data import describe_split, load_splits, select_task_columns

    task_cls = registries.tasks.get(recipe.task)
    raw = load_splits(recipe.data, registries.data_formats)
    splits = select_task_columns(raw, recipe.data, task_cls)
    if run is not None:
        task, config = restore_task(run, recipe, registries)
    else:
        if recipe.tokenizer.file is not None:
            tokenizer = Tokenizer.from_file(recipe.tokenizer.file, max_length=recipe.tokenizer.max_length)
        elif recipe.backbone.pretrained is not None:
            tokenizer = tokenization.from_pretrained(recipe.backbone.pretrained, max_length=recipe.tokenizer.max_length)
        else:
            tokenizer = _train_tokenizer(recipe, splits["train"], task_cls.text_columns(splits["train"].column_names))
        task = _new_task(task_cls, recipe, tokenizer)
        task.setup(dict(splits))
        config = build_backbone_config(recipe, registries, tokenizer)
    for name, dataset in splits.items():
        task.check_split(f"data.{name} ({describe_split(recipe.data, name)})", dataset)
    return PreparedInputs(task, splits, task.tokenizer, config)


def _new_task(task_cls: type[Task], recipe: Recipe, tokenizer: Tokenizer) -> Task:
    """The task with its options and tokenizer, its options checked against the tokenizer."""
    task = task_cls(recipe.task_options, tokenizer)
    try:
        task.check_options()
    except ValueError as error:  # NlpkitError included: reported at the option's key, as the schema does
        options = [f.name for f in dataclasses.fields(task_cls.config_class)]
        raise validation_error(Context(recipe.source), (recipe.task,), str(error), options) from None
    return task


def restore_task(run: RunFolder, recipe: Recipe, registries: Registries) -> tuple[Task, BackboneConfig]:
    """A run folder's task (its options, tokenizer and learnt state) and backbone config."""
    task = _new_task(registries.tasks.get(recipe.task), recipe, Tokenizer.load(run.path))
    task.load_state(run.read_json(TASK_STATE_FILE))
    config = BackboneConfig.from_dict(run.read_json(BACKBONE_FILE), source=str(run.path / BACKBONE_FILE))
    source = run.read_json(SOURCE_CHECKPOINT_FILE) if (run.path / SOURCE_CHECKPOINT_FILE).is_file() else None
    task.checkpoint_family = expressing_family(config, registries, source)
    return task, config


@dataclass
class Restored:
    """A finished run folder, ready to answer: its resolved recipe, task and model (weights loaded, eval mode)."""

    recipe: Recipe
    task: Task
    model: TaskModel


def restore(run: RunFolder, registries: Registries) -> Restored:
    """Rebuild a finished run's task and model from its folder alone (for ``nlpkit.load``).

    Raises:
        NlpkitError: a file of the folder that is missing or invalid (named),
            a task whose plugin is not loaded, weights that do not fit.
    """
    recipe = load_recipe(run.read_recipe(), registries=registries, check_files=False)
    recipe.source = str(run.path / "recipe.yaml")
    task, config = restore_task(run, recipe, registries)
    if recipe.peft is None:
        with initialisation_skipped():  # the strict load below replaces every weight
            model = TaskModel(registries.backbone_kinds.get(config.kind)(config), task.build_head(config),
                              task.renamed_weights)
        run.load_weights(model)
        return Restored(recipe, task, model.eval())
    from nlpkit.adapters import apply_adapters, base_weight_names, merge_adapters

    from_folder = recipe.backbone.pretrained is not None
    backbone = _adapters_base(run, registries) if from_folder else registries.backbone_kinds.get(config.kind)(config)
    model = TaskModel(backbone, task.build_head(config), task.renamed_weights)
    apply_adapters(model.backbone, recipe.peft)
    run.load_weights(model, loaded_already=base_weight_names(model) if from_folder else None)
    # Merged once here, a run with adapters answers at the plain backbone's speed (packed CPU path
    # included) and exports as a plain checkpoint.
    merge_adapters(model.backbone)
    return Restored(recipe, task, model.eval())


def _adapters_base(run: RunFolder, registries: Registries) -> Any:
    """The base checkpoint a LoRA run's adapters were trained on, refused if it is not the same any more."""
    from nlpkit.backbones.checkpoints import build_from_checkpoint, load_checkpoint
    from nlpkit.backbones.checkpoints._common import fingerprint

    source = run.read_json(SOURCE_CHECKPOINT_FILE)
    if not isinstance(source, dict) or not isinstance(source.get("folder"), str):
        raise NlpkitError(f"{run.path / SOURCE_CHECKPOINT_FILE}: expected the base checkpoint's 'folder' in it")
    folder = Path(source["folder"])
    if not (folder / "config.json").is_file():
        raise NlpkitError(f"{run.path}: this LoRA run keeps only its adapters; its base checkpoint {folder} "
                          f"is not there any more")
    if fingerprint(folder) != source.get("fingerprint"):
        raise NlpkitError(f"{run.path}: its adapters were trained on another checkpoint than the one now in "
                          f"{folder} (config.json or the weight files changed)")
    return build_from_checkpoint(load_checkpoint(folder, registries=registries))


