"""Recipes: the YAML schema, loading, ``key.sub=value`` overrides and the resolved dump.

A recipe is validated completely before Lightning, ``datasets`` or any model
is touched, so a user error is the only thing printed. Every error names the
file (or the override), the key path, what was found and what was expected,
with a close-match suggestion for misspelled keys and names.

Recipes name things only by registry name: YAML is read with ``safe_load``
(no ``!!python/`` tags) and no field is ever imported as code.

Paths: a relative path resolves against the current directory; a path that
starts with ``${recipe_dir}`` resolves against the folder of the recipe file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from nlpkit._files import check_output_dir, read_text
from nlpkit._yaml import load_yaml
from nlpkit.chat_data import CHAT_FIELDS
from nlpkit.errors import NlpkitError
from nlpkit.registry import Registries, suggest
from nlpkit.schema import Context, build, describe

if TYPE_CHECKING:
    from nlpkit.tasks import Task

__all__ = [
    "Recipe",
    "BackboneSection",
    "PeftSection",
    "TokenizerSection",
    "DataSection",
    "OptimizationSection",
    "TrainingSection",
    "EarlyStoppingSection",
    "LoggingSection",
    "load_recipe",
    "read_recipe_file",
    "apply_overrides",
    "recipe_to_dict",
    "flatten_recipe",
    "RECIPE_DIR_VARIABLE",
]

RECIPE_DIR_VARIABLE = "${recipe_dir}"

# Lightning precision names; ints from YAML (32, 16, 64) are accepted as strings. "auto" is
# nlpkit's: bf16-mixed where the hardware multiplies bf16 natively, else 32-true
# (nlpkit.training.trainer.resolve_precision).
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "64")

# Trainer arguments that a recipe section already controls: one place for each setting.
_TRAINER_KEYS_OWNED = {
    "max_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "precision": "training.precision",
    "gradient_clip_val": "optimization.grad_clip",
    "accumulate_grad_batches": "optimization.accumulate_grad_batches",
    "default_root_dir": "output_dir",
    "callbacks": "training.early_stopping / training.monitor",
    "logger": "logging.trackers (metrics.csv is always written)",
    "enable_checkpointing": "training.monitor",
    "plugins": "nothing: recipes never name code",
}


def at_least(owner: Any, minimum: float, *names: str) -> None:
    """Raise ``ValueError("name: expected ... >= minimum, got ...")`` for the first field below ``minimum``.

    The message starts with the field's name, so the schema reports it at that key
    (``training.batch_size: expected an integer >= 1, got 0``). None is allowed (unset).
    """
    for name in names:
        value = getattr(owner, name)
        if value is not None and value < minimum:
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ValueError(f"{name}: expected {kind} >= {minimum:g}, got {value}")


def within(owner: Any, name: str, low: float, high: float, closed: str = "[)") -> None:
    """Raise ``ValueError("name: expected a number in [low, high), got ...")`` unless the field is inside.

    ``closed`` says which ends belong to the interval: ``[)``, ``(]``, ``()`` or ``[]``.
    """
    value = getattr(owner, name)
    if value is None:
        return
    above = value >= low if closed[0] == "[" else value > low
    below = value <= high if closed[1] == "]" else value < high
    if not (above and below):
        raise ValueError(f"{name}: expected a number in {closed[0]}{low:g}, {high:g}{closed[1]}, got {value}")


@dataclass
class BackboneSection:
    """Which backbone to build, and which of its parts to train.

    A named ``preset`` (optionally with ``config`` fields changed), or ``kind``
    + ``config`` from scratch, or ``pretrained``: a local Hugging Face-format
    folder whose weights (and, unless the tokenizer section says otherwise,
    tokenizer) are loaded.
    """

    preset: str | None = None
    kind: str | None = None
    pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    freeze: bool = False
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        at_least(self, 0, "freeze_layers")


@dataclass
class PeftSection:
    """LoRA adapters on the backbone instead of training all of its weights (``nlpkit/adapters.py``, through peft).

    ``target_modules`` names Linear layers in nlpkit's terms: ``query``,
    ``key``, ``value``, ``attention_output`` (the attention's output
    projection), ``mlp`` (every Linear of the feed-forward block),
    ``all-linear``, or regular expressions over module names
    (``attention.(query|value)``, ``decoder.layers.*mlp.up``).
    ``layers`` limits them to those layer indices. The defaults are the LoRA
    paper's: rank 8 on the query and value projections. The task head trains
    whole.
    """

    method: Literal["lora"] = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    use_dora: bool = False
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise ValueError('method: LoRA adapters need the peft package: pip install "nlpkit[peft]"')
        at_least(self, 1, "r", "alpha")
        within(self, "dropout", 0, 1)
        if not self.target_modules:
            from nlpkit.adapters import TARGETS

            raise ValueError(f"target_modules: expected at least one of {', '.join(TARGETS)} or a pattern")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"layers: expected a non-empty list of layer indices >= 0, got {self.layers}")


@dataclass
class TokenizerSection:
    """Load a ``tokenizer.json`` (``file``) or train one on the training split (``train``)."""

    file: str | None = None
    train: Literal["wordpiece", "bpe", "char"] | None = None
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True
    max_length: int = 128

    def __post_init__(self) -> None:
        at_least(self, 2, "vocab_size", "max_length")
        at_least(self, 1, "min_frequency")


@dataclass
class DataSection:
    """Where the examples come from and which columns the task reads.

    ``columns`` maps the task's field names to column names in the files
    (``{text: sentence}``); fields not listed keep their own name.
    ``hub`` names a dataset on the Hugging Face hub (online only); then
    ``train`` / ``validation`` / ``test`` name its splits.
    ``validation_split`` (a fraction) takes the last rows of the training file
    as validation, instead of a ``validation`` file.
    """

    format: str | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    hub: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    group_by_length: bool = False
    validation_split: float | None = None

    def __post_init__(self) -> None:
        within(self, "validation_split", 0.0, 1.0, "()")


@dataclass
class OptimizationSection:
    """AdamW with a learning-rate schedule."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    accumulate_grad_batches: int = 1
    layer_lr_decay: float = 1.0

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"betas: expected two numbers, got {self.betas}")
        for beta in self.betas:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas: expected two numbers in [0, 1), got {self.betas}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr}")
        if self.eps <= 0:
            raise ValueError(f"eps: expected a positive number, got {self.eps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip: expected a positive number or null, got {self.grad_clip}")
        at_least(self, 0, "weight_decay", "warmup_steps")
        at_least(self, 1, "accumulate_grad_batches")
        within(self, "warmup_ratio", 0.0, 1.0, "[)")
        within(self, "layer_lr_decay", 0.0, 1.0, "(]")


@dataclass
class EarlyStoppingSection:
    """Stop when ``training.monitor`` has not improved for ``patience`` validations."""

    patience: int = 3
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        at_least(self, 0, "patience", "min_delta")


@dataclass
class TrainingSection:
    """Batch sizes, length of training, precision, seed and model selection."""

    batch_size: int = 32
    # Training batches by a budget of padded tokens instead of a count of examples.
    max_tokens: int | None = None
    eval_batch_size: int | None = None
    epochs: int = 3
    max_steps: int = -1
    precision: str = "auto"
    seed: int = 42
    monitor: str = "val_loss"
    monitor_mode: Literal["min", "max"] | None = None
    early_stopping: EarlyStoppingSection | None = None
    num_workers: int = 0
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 200
    # Average the weights of the last N epochs' ends into the run's model (instead of the best checkpoint).
    average_checkpoints: int | None = None
    # torch.compile each Transformer layer (nlpkit.finetuning.compile_layers); the first step reports the time.
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}"
                             f"{suggest(self.precision, PRECISIONS)}")
        at_least(self, 1, "batch_size", "max_tokens", "eval_batch_size", "epochs", "log_every_n_steps",
                 "checkpoint_every_n_steps", "average_checkpoints")
        at_least(self, 0, "num_workers")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(f"max_steps: expected -1 (no limit) or an integer >= 1, got {self.max_steps}")


# The trackers logging.trackers may name, each with the package it needs (installed by the extra of
# the same name: nlpkit[tensorboard] ...). csv needs none: the run's metrics.csv is always written.
TRACKER_PACKAGES = {"csv": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass
class MlflowSection:
    """Where MLflow keeps the run: a tracking URI (default: ``sqlite:///RUN/mlflow.db`` in the run folder)."""

    tracking_uri: str | None = None
    experiment: str | None = None  # default: the recipe's name

    def __post_init__(self) -> None:
        import os

        uri = self.tracking_uri
        # MLflow 3 refuses a folder as its store (a plain path or file: URI) unless told otherwise: say so now,
        # not in a traceback once training has started.
        if uri is not None and uri != "databricks" and (":" not in uri or uri.startswith("file:")) \
                and not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
            raise ValueError(f"tracking_uri: MLflow keeps runs in a database or on a server, not in a folder "
                             f"({uri!r}); give sqlite:///PATH/mlflow.db or a server's http(s):// address, "
                             f"or leave it unset for the run folder's mlflow.db")


@dataclass
class WandbSection:
    """The Weights & Biases run: offline (no account needed; ``wandb sync`` uploads it later) unless ``online``."""

    project: str | None = None  # default: the recipe's name
    entity: str | None = None
    mode: Literal["offline", "online"] = "offline"


@dataclass
class LoggingSection:
    """Experiment trackers that get the run's metrics and recipe, beside its metrics.csv (``nlpkit/training/trackers.py``)."""

    trackers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = field(default_factory=list)
    mlflow: MlflowSection = field(default_factory=MlflowSection)
    wandb: WandbSection = field(default_factory=WandbSection)

    def __post_init__(self) -> None:
        for name in self.trackers:
            if self.trackers.count(name) > 1:
                raise ValueError(f"trackers: '{name}' is named twice")


@dataclass
class Recipe:
    """A whole, validated experiment. Paths are absolute once loaded."""

    task: str
    backbone: BackboneSection
    data: DataSection
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    optimization: OptimizationSection = field(default_factory=OptimizationSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    trainer: dict[str, Any] = field(default_factory=dict)
    peft: PeftSection | None = None
    logging: LoggingSection = field(default_factory=LoggingSection)
    output_dir: str = "runs"
    name: str | None = None
    report: bool = True  # write report.html at the end of the run (nlpkit.report)
    # The task's own section, stored under the task's name in YAML; a dataclass
    # instance of the task's ``config_class``.
    task_options: Any = None
    source: str = "<recipe>"


_SECTION_FIELDS = [f.name for f in dataclasses.fields(Recipe) if f.name not in ("task_options", "source")]
RESERVED_TASK_NAMES = frozenset(_SECTION_FIELDS)


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML file into a mapping, with safe loading only."""
    raw = load_yaml(read_text(path, "recipe file"), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise NlpkitError(f"{path}: expected a mapping of sections at the top level, got {describe(raw)}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Apply ``key.sub=value`` overrides to ``raw`` in place; values are YAML scalars.

    Returns:
        The overridden key paths, mapped to the override text, for error messages.
    """
    applied = {}
    for text in overrides:
        key, sep, value_text = text.partition("=")
        keys = tuple(key.strip().split("."))
        if not sep or not key.strip() or any(not k for k in keys):
            raise NlpkitError(f"malformed override '{text}': expected key.sub=value")
        value = load_yaml(value_text, f"override '{text}'") if value_text.strip() else ""
        node = raw
        for depth, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise NlpkitError(f"override '{text}': '{where}' is {describe(child)}, not a section")
            node = child
        node[keys[-1]] = value
        applied[keys] = text
    return applied


def _resolve_path(value: str, recipe_dir: Path) -> Path:
    if value.startswith(RECIPE_DIR_VARIABLE):
        return (recipe_dir / value[len(RECIPE_DIR_VARIABLE):].lstrip("/\\")).resolve()
    return Path(value).expanduser().resolve()


def _resolve_task_paths(options: Any, recipe_dir: Path) -> None:
    """A task option that starts with ``${recipe_dir}`` is a path beside the recipe (a chat template file)."""
    if not dataclasses.is_dataclass(options):
        return
    for option in dataclasses.fields(options):
        value = getattr(options, option.name)
        if isinstance(value, str) and value.startswith(RECIPE_DIR_VARIABLE):
            setattr(options, option.name, str(_resolve_path(value, recipe_dir)))


def load_recipe(
    recipe: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    registries: Registries | None = None,
    check_files: bool = True,
) -> Recipe:
    """Read, override and validate a recipe.

    Args:
        recipe: a YAML file path, or a mapping with the same structure.
        overrides: ``key.sub=value`` strings applied before validation.
        registries: the plugin registries to check names against (tasks,
            presets, formats); loaded from the installed plugins when None.
        check_files: check what training needs: that data and tokenizer files
            exist, the trackers' packages and logins, the Trainer arguments'
            names against Lightning's (a run folder's recipe is read without:
            it needs none of them to predict, and importing Lightning takes seconds).

    Returns:
        The validated :class:`Recipe`, with absolute paths.

    Raises:
        NlpkitError: one line naming the file or override, key path and problem.
    """
    if isinstance(recipe, dict):
        raw = _deep_copy(recipe)
        source, recipe_dir = "<recipe>", Path.cwd()
    else:
        raw = read_recipe_file(recipe)
        source, recipe_dir = str(recipe), Path(recipe).resolve().parent
    ctx = Context(source, apply_overrides(raw, list(overrides or [])))
    if registries is None:
        from nlpkit.plugins import load_plugins

        registries = load_plugins().registries

    if "task" not in raw:
        raise ctx.error(("task",), f"missing required key (expected a task name; known: {', '.join(registries.tasks)})")
    task_name = raw["task"]
    if not isinstance(task_name, str):
        raise ctx.error(("task",), f"expected a task name, got {describe(task_name)}")
    if task_name not in registries.tasks:
        known = ", ".join(registries.tasks) or "(none)"
        raise ctx.error(("task",), f"unknown task '{task_name}'; known: {known}{suggest(task_name, registries.tasks.names())}")
    task_cls = registries.tasks.get(task_name)

    sections = {k: v for k, v in raw.items() if k != task_name}
    known_keys = _SECTION_FIELDS + [task_name]
    for key in sections:
        if key in registries.tasks:
            raise ctx.error((str(key),), f"the recipe's task is {task_name}; `{key}:` belongs to task {key} "
                                         f"(the options of task {task_name} go under `{task_name}:`)")
        if key not in _SECTION_FIELDS:
            raise ctx.error((str(key),), f"unknown key{suggest(str(key), known_keys)} (known: {', '.join(known_keys)})")
    recipe_obj: Recipe = build(Recipe, sections, (), ctx)
    recipe_obj.source = source
    recipe_obj.task_options = build(task_cls.config_class, raw.get(task_name), (task_name,), ctx)
    _resolve_task_paths(recipe_obj.task_options, recipe_dir)

    _check_backbone(recipe_obj, task_cls, registries, ctx, recipe_dir, check_files)
    _check_data(recipe_obj, task_cls, registries, recipe_dir, ctx, check_files)
    _check_tokenizer(recipe_obj, recipe_dir, ctx, check_files)
    _check_training(recipe_obj, task_cls, ctx)
    _check_trainer(recipe_obj, ctx, check_files)
    _check_logging(recipe_obj, ctx, check_files)
    recipe_obj.output_dir = str(_resolve_path(recipe_obj.output_dir, recipe_dir))
    if check_files:
        try:
            check_output_dir(recipe_obj.output_dir)
        except NlpkitError as error:
            raise ctx.error(("output_dir",), str(error).removeprefix("output_dir: ")) from None
    if recipe_obj.name is None:
        recipe_obj.name = Path(source).stem if source != "<recipe>" else task_name
    return recipe_obj


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(raw)) if raw else {}


def _check_backbone(recipe: Recipe, task_cls: type[Task], registries: Registries, ctx: Context, recipe_dir: Path,
                    check_files: bool) -> None:
    from nlpkit.backbones.config import BackboneConfig

    section = recipe.backbone
    if section.pretrained is not None:
        _check_pretrained(recipe, section.pretrained, task_cls, registries, ctx, recipe_dir, check_files)
        return
    if section.preset is None and section.kind is None:
        raise ctx.error(("backbone",), f"expected 'preset' (one of: {', '.join(registries.backbone_presets)}) or 'kind' with 'config'")
    if section.preset is not None:
        if section.preset not in registries.backbone_presets:
            names = registries.backbone_presets.names()
            raise ctx.error(
                ("backbone", "preset"),
                f"unknown preset '{section.preset}'; known: {', '.join(names)}{suggest(section.preset, names)}",
            )
        base = registries.backbone_presets.get(section.preset)().to_dict()
    else:
        base = {}
    if section.kind is not None:
        if section.kind not in registries.backbone_kinds:
            names = registries.backbone_kinds.names()
            raise ctx.error(("backbone", "kind"), f"unknown backbone kind '{section.kind}'; known: {', '.join(names)}{suggest(section.kind, names)}")
        if section.preset is not None and base.get("kind") != section.kind:
            raise ctx.error(("backbone", "kind"), f"'{section.kind}' contradicts preset '{section.preset}' (a {base.get('kind')})")
        base["kind"] = section.kind
    config = build(BackboneConfig, {**base, **section.config}, ("backbone", "config"), ctx)
    if config.kind not in task_cls.backbone_kinds:
        raise ctx.error(
            ("backbone",),
            f"task '{task_cls.name}' needs a backbone of kind {' or '.join(task_cls.backbone_kinds)}, got {config.kind}",
        )


def _check_pretrained(recipe: Recipe, given: str, task_cls: type[Task], registries: Registries, ctx: Context,
                      recipe_dir: Path, check_files: bool) -> None:
    section = recipe.backbone
    for key in ("preset", "kind"):
        if getattr(section, key) is not None:
            raise ctx.error(("backbone", key), "cannot be combined with backbone.pretrained (the folder's config.json says what it is)")
    if section.config:
        raise ctx.error(("backbone", "config"), "a pretrained backbone's architecture comes from its config.json and cannot change")
    resolved = _resolve_path(given, recipe_dir)
    section.pretrained = str(resolved)
    if not check_files:
        return
    from nlpkit.backbones.checkpoints import checkpoint_config

    try:
        # A missing folder is reported as written, so that a hub id reads as one.
        config = checkpoint_config(resolved if resolved.exists() else given, registries=registries).config
    except NlpkitError as error:
        raise ctx.error(("backbone", "pretrained"), str(error)) from None
    if config.kind not in task_cls.backbone_kinds:
        raise ctx.error(
            ("backbone", "pretrained"),
            f"task '{task_cls.name}' needs a backbone of kind {' or '.join(task_cls.backbone_kinds)}; "
            f"{section.pretrained} holds a {config.kind}",
        )
    if section.freeze_layers > config.num_layers:
        raise ctx.error(("backbone", "freeze_layers"), f"{section.freeze_layers} is more than the backbone's {config.num_layers} layers")


def _check_data(recipe: Recipe, task_cls: type[Task], registries: Registries, recipe_dir: Path, ctx: Context,
                check_files: bool) -> None:
    data = recipe.data
    fields = [*task_cls.input_columns, *task_cls.optional_columns, *task_cls.target_columns]
    if data.format == "chat":  # the chat format reads data.columns itself: its own fields
        fields = list(CHAT_FIELDS)
    for key in data.columns:
        if key not in fields:
            raise ctx.error(("data", "columns", key), f"unknown field of task '{task_cls.name}'{suggest(key, fields)} (known: {', '.join(fields)})")
    if data.validation_split is not None:
        if data.validation is not None or data.hub is not None:
            other = "validation" if data.validation is not None else "hub"
            raise ctx.error(("data", "validation_split"), f"carves validation rows off data.train; it cannot be "
                                                          f"combined with data.{other}")
    if data.hub is None:
        for split in ("train", "validation"):
            if getattr(data, split) is None and not (split == "validation" and data.validation_split is not None):
                hint = " or data.validation_split (a fraction of the training file)" if split == "validation" else ""
                raise ctx.error(("data", split), f"missing required key (expected a file path{hint})")
        for split in ("train", "validation", "test"):
            value = getattr(data, split)
            if value is None:
                continue
            path = _resolve_path(value, recipe_dir)
            if check_files and path.is_dir():
                raise ctx.error(("data", split), f"'{value}' is a folder; expected a data file")
            if check_files and not path.is_file():
                raise ctx.error(("data", split), f"file '{value}' does not exist (looked for {path})")
            setattr(data, split, str(path))
        if data.format is None and data.train is not None:  # data.train is set: checked above
            data.format = Path(data.train).suffix.lstrip(".").lower() or "(none)"
            if data.format not in registries.data_formats:
                names = registries.data_formats.names()
                raise ctx.error(("data", "format"), f"cannot tell the format from the extension of '{data.train}'; set one of: {', '.join(names)}")
    elif data.format is not None:
        raise ctx.error(("data", "format"), "not used with data.hub (the hub dataset has its own format)")
    if data.format is not None and data.format not in registries.data_formats:
        names = registries.data_formats.names()
        raise ctx.error(("data", "format"), f"unknown data format '{data.format}'; known: {', '.join(names)}{suggest(data.format, names)}")


def _check_tokenizer(recipe: Recipe, recipe_dir: Path, ctx: Context, check_files: bool) -> None:
    tok = recipe.tokenizer
    if tok.file is not None and tok.train is not None:
        raise ctx.error(("tokenizer",), "set either 'file' (load a tokenizer.json) or 'train' (wordpiece, bpe or char), not both")
    if tok.file is None and tok.train is None and recipe.backbone.pretrained is None:
        tok.train = "wordpiece"
    if tok.train is not None and recipe.backbone.pretrained is not None:
        raise ctx.error(("tokenizer", "train"), "a pretrained backbone needs its own tokenizer (leave tokenizer.train unset)")
    if tok.file is not None:
        path = _resolve_path(tok.file, recipe_dir)
        if check_files and path.is_dir():
            raise ctx.error(("tokenizer", "file"), f"'{tok.file}' is a folder; expected a tokenizer.json file")
        if check_files and not path.is_file():
            raise ctx.error(("tokenizer", "file"), f"file '{tok.file}' does not exist (looked for {path})")
        tok.file = str(path)


def _check_logging(recipe: Recipe, ctx: Context, check_files: bool) -> None:
    """What the trackers need to start: their packages and, for online W&B, a login.

    Training alone needs them: a run folder's recipe is read without (predicting needs no tracker).
    """
    import importlib.util

    if not check_files:
        return
    section = recipe.logging
    for name in section.trackers:
        package = TRACKER_PACKAGES[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ctx.error(("logging", "trackers"), f'{name} needs the {package} package: pip install "nlpkit[{name}]"')
    if "wandb" in section.trackers and section.wandb.mode == "online" and not _wandb_login_found():
        raise ctx.error(("logging", "wandb", "mode"), "'online' needs a Weights & Biases login and finds none "
                        "(WANDB_API_KEY, or the netrc entry `wandb login` writes); log in, or keep mode 'offline' "
                        "and upload later with wandb sync")


def _wandb_login_found() -> bool:
    """Whether wandb.init will find credentials, or can ask for them at a terminal.

    Without either, online wandb fails once training has started ("api_key not configured (no-tty)"); this
    reads the same places it does first (its environment variables, then the netrc entry of its host).
    """
    import netrc
    import os
    import sys
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or sys.stdin.isatty():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _check_training(recipe: Recipe, task_cls: type[Task], ctx: Context) -> None:
    training = recipe.training
    if training.max_tokens is not None and recipe.data.group_by_length:
        raise ctx.error(("training", "max_tokens"), "already groups examples by length; drop data.group_by_length")
    monitors = ["val_loss"] + [f"val_{name}" for name in task_cls.metric_names]
    if training.monitor not in monitors:
        raise ctx.error(("training", "monitor"), f"unknown metric '{training.monitor}'; known: {', '.join(monitors)}{suggest(training.monitor, monitors)}")
    if training.monitor_mode is None:
        lower = {"val_loss", *(f"val_{name}" for name in task_cls.lower_is_better)}
        training.monitor_mode = "min" if training.monitor in lower else "max"


def _check_trainer(recipe: Recipe, ctx: Context, check_names: bool) -> None:
    """Check pass-through Trainer arguments by name.

    The names are checked against Lightning's signature lazily (only when the
    section is not empty and ``check_names``), so most recipes never import
    Lightning here.
    """
    if not recipe.trainer:
        return
    for key in recipe.trainer:
        if key in _TRAINER_KEYS_OWNED:
            raise ctx.error(("trainer", key), f"set through {_TRAINER_KEYS_OWNED[key]}, not the trainer section")
    if not check_names:
        return
    import inspect

    from pytorch_lightning import Trainer

    names = [n for n in inspect.signature(Trainer.__init__).parameters if n != "self" and n not in _TRAINER_KEYS_OWNED]
    for key, value in recipe.trainer.items():
        if key not in names:
            raise ctx.error(("trainer", key), f"unknown Trainer argument{suggest(key, names)}")
        if isinstance(value, dict):
            raise ctx.error(("trainer", key), "expected a plain value, got a mapping")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe as plain data (the task section under the task's name)."""
    out = {}
    for f in dataclasses.fields(Recipe):
        if f.name in ("task_options", "source"):
            continue
        value = getattr(recipe, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a section (an instance, not a class)
            value = dataclasses.asdict(value)
        out[f.name] = value
    out[recipe.task] = dataclasses.asdict(recipe.task_options)
    return out


def flatten_recipe(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The recipe as one level of dotted keys (``training.batch_size``), the way overrides name them.

    An empty mapping (``data.columns: {}``) holds no value and gives no key.
    """
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            out.update(flatten_recipe(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
