"""The kit plugin authors use in their own tests: tiny parts and a conformance check.

:func:`check_task` runs a Task class through the whole contract on the CPU in
seconds, driving nlpkit's real code (no mocks): the class attributes, its
registration by its plugin module, ``setup``/``state``, ``prepare`` (a cached
``datasets.map``), ``collate``, ``forward``, ``loss`` (a finite scalar whose
gradients reach the head and the backbone), ``metrics``/``evaluate_batch``,
``decode``, then two training steps through :func:`nlpkit.run`, the run
folder, ``report_section`` on the run's saved validation predictions,
:func:`nlpkit.load`, ``predict`` and ``evaluate``. A broken part
raises :class:`ConformanceError` (an ``AssertionError``, so pytest reports it
as a failed test) whose message names the part and what was expected::

    Regression.loss: expected a finite scalar tensor, got shape (4,)

Pass the class; the check finds its plugin the way nlpkit does. The plugin
is the module that defines the class, or the nearest package above it that
defines ``nlpkit_register_tasks`` (pass ``plugin="module"`` when the hook lives
elsewhere). It is loaded like ``--plugin module``; an installed plugin is
loaded through its entry point as usual, and naming it again is harmless.
Rows use the task's field names (``input_columns``, ``optional_columns``,
``target_columns``), not your files' column names.

Example, a plugin author's test (``nlpkit_regression.py`` defines
``Regression`` and the ``@nlpkit.hookimpl`` that registers it)::

    from nlpkit.testing import check_task
    from nlpkit_regression import Regression

    def test_regression_follows_the_task_contract(tmp_path):
        rows = [{"text": "good " * n + "film", "value": float(n)} for n in range(4)] * 4
        check_task(Regression, rows[:12], rows[12:], tmp_path=tmp_path)

The tiny parts serve finer-grained tests: :func:`tiny_backbone_config` and
:func:`tiny_backbone` (each registered kind's ``-tiny`` preset shrunk to one
layer of width 32: milliseconds per step), :func:`tiny_tokenizer`,
:func:`tiny_classification_rows` / :func:`tiny_classification_data`,
:func:`write_rows` and :func:`tiny_recipe`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import re
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

    from nlpkit.backbones.config import BackboneConfig
    from nlpkit.tasks import Task
    from nlpkit.tokenization import Tokenizer

__all__ = [
    "ConformanceError",
    "TaskCheck",
    "TINY_BACKBONE",
    "check_task",
    "tiny_backbone",
    "tiny_backbone_config",
    "tiny_classification_data",
    "tiny_classification_rows",
    "tiny_recipe",
    "tiny_tokenizer",
    "write_rows",
]

# Changes applied to each kind's "-tiny" preset. One layer of width 32 keeps a training step in
# milliseconds on a CPU; no dropout, so a tiny model gives the same output twice in training mode.
TINY_BACKBONE: dict[str, Any] = {
    "num_layers": 1,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_positions": 128,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}

# Byte-level BPE: its training is deterministic, unlike WordPiece's in `tokenizers`
# (huggingface/tokenizers#1794), so a check gives the same verdict on every run.
_TOKENIZER = {"train": "bpe", "vocab_size": 400, "min_frequency": 1, "max_length": 32}

_POSITIVE = "good great fine lovely superb bright happy warm kind pleasant".split()
_NEGATIVE = "bad awful poor dreadful grim dull sad cold cruel nasty".split()
_NEUTRAL = "the a movie film story plot actor scene day book".split()


# -- tiny parts ---------------------------------------------------------------


def tiny_backbone_config(kind: str = "encoder", **changes: Any) -> BackboneConfig:
    """The registered ``{kind}-tiny`` preset, shrunk by :data:`TINY_BACKBONE`.

    Args:
        kind: ``encoder``, ``decoder`` or ``encoder-decoder``.
        **changes: further config fields, e.g. ``vocab_size=100``.

    Returns:
        A ``BackboneConfig`` with the preset's family options (norms,
        positions, activation) at a size that runs in milliseconds.

    Raises:
        ValueError: no ``{kind}-tiny`` preset.
    """
    from nlpkit.backbones.presets import PRESETS

    preset = f"{kind}-tiny"
    if preset not in PRESETS:
        kinds = sorted(name.removesuffix("-tiny") for name in PRESETS if name.endswith("-tiny"))
        raise ValueError(f"no tiny preset for backbone kind '{kind}'; known: {', '.join(kinds)}")
    return dataclasses.replace(PRESETS[preset](), **{**TINY_BACKBONE, **changes})


def tiny_backbone(kind: str = "encoder", vocab_size: int = 64, seed: int | None = 0, **changes: Any) -> nn.Module:
    """A randomly initialised tiny backbone module (see :func:`tiny_backbone_config`).

    Args:
        kind: ``encoder``, ``decoder`` or ``encoder-decoder``.
        vocab_size: rows of the token embedding; match your tokenizer's.
        seed: initialise from this seed without touching the global random
            state, so a test gets the same weights every run; None for fresh ones.
        **changes: further config fields (``pad_token_id=1`` ...).

    Returns:
        The ``Encoder``, ``Decoder`` or ``EncoderDecoder``; its call returns an
        output with ``last_hidden_state`` ``(batch, seq, 32)``.
    """
    import torch

    from nlpkit.backbones import build_backbone

    config = tiny_backbone_config(kind, vocab_size=vocab_size, **changes)
    if seed is None:
        return build_backbone(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(config)


def _sentence(rng: random.Random, words: Sequence[str]) -> str:
    picked = [rng.choice(words) for _ in range(rng.randint(1, 3))]
    picked += [rng.choice(_NEUTRAL) for _ in range(rng.randint(2, 4))]
    rng.shuffle(picked)
    return " ".join(picked)


def tiny_tokenizer(
    texts: Iterable[str] | None = None,
    kind: Literal["wordpiece", "bpe"] = "bpe",
    vocab_size: int = 400,
    max_length: int = 32,
) -> Tokenizer:
    """A tokenizer trained in milliseconds, with nlpkit's special tokens.

    Args:
        texts: training text; by default sentences of the words that
            :func:`tiny_classification_rows` uses.
        kind: ``bpe`` (deterministic, the default) or ``wordpiece``.
        vocab_size: the largest vocabulary (byte-level BPE starts from 256 bytes).
        max_length: encodings are truncated to this many tokens.

    Returns:
        A :class:`nlpkit.tokenization.Tokenizer` (pad, cls, sep ... set).
    """
    from nlpkit.tokenization import Tokenizer

    if texts is None:
        rng = random.Random(0)
        texts = [_sentence(rng, _POSITIVE + _NEGATIVE) for _ in range(200)]
    return Tokenizer.train(texts, kind, vocab_size=vocab_size, min_frequency=1, max_length=max_length)


def tiny_classification_rows(
    n: int = 32, seed: int = 0, pairs: bool = False, multi_label: bool = False
) -> list[dict[str, Any]]:
    """Labelled rows a tiny model learns in a few steps, keyed by the classification task's fields.

    Labels cycle, so every label is present from four rows on.

    Args:
        n: number of rows.
        seed: the sentences' random seed.
        pairs: sentence pairs (``text``, ``text_pair``) labelled ``same`` when
            both have the same sentiment, else ``different``.
        multi_label: ``label`` is a list of the tags ``pos`` / ``neg`` whose
            words the sentence holds (one or both).

    Returns:
        Rows ``{"text": ..., "label": ...}`` (and ``text_pair`` for pairs).
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if pairs:
            same = i % 2 == 0
            first = _POSITIVE if i % 4 < 2 else _NEGATIVE
            second = first if same else (_NEGATIVE if first is _POSITIVE else _POSITIVE)
            rows.append({"text": _sentence(rng, first), "text_pair": _sentence(rng, second),
                         "label": "same" if same else "different"})
        elif multi_label:
            tags = [["pos"], ["neg"], ["neg", "pos"]][i % 3]
            words = [w for tag in tags for w in rng.sample(_POSITIVE if tag == "pos" else _NEGATIVE, 2)]
            words += [rng.choice(_NEUTRAL) for _ in range(rng.randint(2, 4))]
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": tags})
        else:
            label = "pos" if i % 2 == 0 else "neg"
            rows.append({"text": _sentence(rng, _POSITIVE if label == "pos" else _NEGATIVE), "label": label})
    return rows


def write_rows(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows to a data file whose format nlpkit reads from the extension.

    Args:
        path: ``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` (JSON lines).
        rows: mappings of column -> value; columns in order of first appearance.

    Returns:
        The path written.

    Raises:
        ValueError: an unknown extension, or a list or mapping in a CSV/TSV cell
            (write ``.jsonl``, or join the values yourself).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return path
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"write_rows: cannot tell the format of '{path.name}'; use .csv, .tsv, .jsonl or .json")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for number, row in enumerate(rows, start=1):
        for key, value in row.items():
            if isinstance(value, (list, tuple, dict)):
                raise ValueError(f"write_rows: row {number}: '{key}' holds a {type(value).__name__}; "
                                 f"{suffix} cells hold text and numbers only (write .jsonl)")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_classification_data(
    folder: str | os.PathLike[str],
    pairs: bool = False,
    multi_label: bool = False,
    sizes: tuple[int, int, int] = (64, 16, 16),
    format: Literal["csv", "tsv", "jsonl"] = "csv",
    seed: int = 0,
) -> dict[str, str]:
    """Write train, validation and test files of :func:`tiny_classification_rows`.

    Args:
        folder: where to write ``train``, ``validation`` and ``test`` files.
        pairs: sentence pairs (columns ``text``, ``text_pair``, ``label``).
        multi_label: several labels per row; CSV/TSV cells join them with ``,``
            (the task's default ``label_separator``).
        sizes: rows in train, validation and test.
        format: the files' format.
        seed: random seed of the first split (the others follow it).

    Returns:
        ``{"train": path, "validation": path, "test": path}``: a recipe's
        ``data`` section as it stands (columns keep the task's field names).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for offset, (split, n) in enumerate(zip(("train", "validation", "test"), sizes)):
        rows = tiny_classification_rows(n, seed + offset, pairs=pairs, multi_label=multi_label)
        if multi_label and format != "jsonl":
            rows = [{**row, "label": ",".join(row["label"])} for row in rows]
        files[split] = str(write_rows(folder / f"{split}.{format}", rows))
    return files


def tiny_recipe(
    task: str,
    data: Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    backbone_kind: str = "encoder",
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A recipe that trains a tiny backbone for two steps on the CPU.

    Args:
        task: the registered task name.
        data: the recipe's ``data`` section (``train``, ``validation``,
            optionally ``test``, ``columns`` ...).
        output_dir: the folder that receives the run folder.
        backbone_kind: which ``{kind}-tiny`` preset to shrink (see :data:`TINY_BACKBONE`).
        options: the task's own recipe section; omitted: its defaults.

    Returns:
        A recipe mapping for :func:`nlpkit.run`; change it with overrides
        (``training.max_steps=-1`` trains the full epochs).
    """
    recipe: dict[str, Any] = {
        "task": task,
        "backbone": {"preset": f"{backbone_kind}-tiny", "config": dict(TINY_BACKBONE)},
        "tokenizer": dict(_TOKENIZER),
        "data": dict(data),
        "optimization": {"lr": 1e-3},
        # Two epochs make two steps even when the training rows fit in one batch.
        # fp32 whatever the CPU: a conformance result should not depend on the machine.
        "training": {"batch_size": 4, "epochs": 2, "max_steps": 2, "seed": 0, "log_every_n_steps": 1, "precision": "32-true"},
        # devices=1 on the CPU: the check must not depend on (or take over) the machine's accelerators.
        # Validating after every step makes the best-checkpoint path run too, even within one epoch.
        "trainer": {"accelerator": "cpu", "devices": 1, "val_check_interval": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0},
        "output_dir": str(output_dir),
        # No report.html: drawing it costs more than the two training steps (a run may turn it on).
        "report": False,
    }
    if options is not None:
        recipe[task] = dict(options)
    return recipe


# -- the conformance check ----------------------------------------------------


class ConformanceError(AssertionError):
    """A part of the Task contract that a task class breaks.

    Attributes:
        part: what failed, e.g. ``Regression.loss`` or ``Regression: nlpkit.load``.
        detail: what was expected and what came instead.
    """

    def __init__(self, part: str, detail: str) -> None:
        super().__init__(f"{part}: {detail}")
        self.part = part
        self.detail = detail


@dataclass
class TaskCheck:
    """What :func:`check_task` produced, for further assertions of a plugin's own.

    Attributes:
        run_dir: the run folder of the two-step training run.
        metrics: its metrics (``val_loss``, ``val_<name>`` ...).
        answers: the loaded model's answers to the prediction inputs.
    """

    run_dir: Path
    metrics: dict[str, float]
    answers: list[Any]


def check_task(
    task_cls: type[Task],
    train_rows: Sequence[Mapping[str, Any]],
    validation_rows: Sequence[Mapping[str, Any]],
    *,
    tmp_path: str | os.PathLike[str],
    plugin: str | None = None,
    options: Mapping[str, Any] | None = None,
    predict_inputs: Sequence[str | Mapping[str, Any]] | None = None,
    backbone_kind: str | None = None,
    overrides: Sequence[str] = (),
) -> TaskCheck:
    """Run a task class through the whole Task contract with nlpkit's real code.

    In order: class attributes; registration by its plugin module; recipe
    validation of ``options``; ``setup``, ``check_split``, ``state`` and
    ``load_state``; ``prepare`` (a cached ``datasets.map``) and
    ``feature_length``; ``collate`` (tensors with the batch dimension first);
    ``build_head``, ``forward`` and ``loss`` (a finite scalar; backward
    reaches the head and the backbone); ``metrics`` with ``evaluate_batch``
    (every name in ``metric_names``, each a scalar); ``decode`` (one
    JSON-serialisable answer per example); two training steps through
    :func:`nlpkit.run`; the run folder; ``report_section`` on the saved
    validation predictions (its parts checked, not drawn; after ``predict``); :func:`nlpkit.load` with the same
    plugins; ``predict`` (a list in, a list out; one input in, the same
    answer out) and ``evaluate``. On the CPU, in seconds.

    Args:
        task_cls: the Task subclass.
        train_rows: training examples keyed by the task's field names.
        validation_rows: validation examples, likewise.
        tmp_path: a folder for the data files and the run folder (pytest's
            ``tmp_path``).
        plugin: the module whose ``nlpkit_register_tasks`` registers
            ``task_cls``; by default the class's module or the nearest package
            above it that defines the hook.
        options: the task's recipe section; by default its ``config_class``
            defaults.
        predict_inputs: inputs for ``predict`` (texts, or mappings of the
            input fields); by default the first four validation rows' inputs.
        backbone_kind: by default the first of ``task_cls.backbone_kinds``.
        overrides: ``key.sub=value`` recipe overrides for every step
            (``tokenizer.train=wordpiece`` ...).

    Returns:
        The run folder, its metrics and the predicted answers.

    Raises:
        ConformanceError: the first broken part, named in the message.
        ValueError: unusable arguments (too few rows, a row without a field).
    """
    checker = _Checker(task_cls, train_rows, validation_rows, Path(tmp_path), plugin, options,
                       predict_inputs, backbone_kind, list(overrides))
    return checker.run()


def _plugin_module(task_cls: type) -> str:
    """The class's module, or the nearest package above it that registers tasks."""
    module_name = task_cls.__module__
    if module_name == "__main__":
        raise ValueError(f"check_task: {task_cls.__name__} is defined in __main__; pass plugin='module'")
    parts = module_name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        module = sys.modules.get(candidate)
        if module is not None and hasattr(module, "nlpkit_register_tasks"):
            return candidate
    return module_name


def _shape(value: Any) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _close(a: Any, b: Any) -> bool:
    """Equal answers, floats to a tolerance that batch padding may cost."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


class _Checker:
    """One conformance run; each method checks one part of the contract, in the order of use."""

    def __init__(
        self,
        task_cls: type[Task],
        train_rows: Sequence[Mapping[str, Any]],
        validation_rows: Sequence[Mapping[str, Any]],
        tmp_path: Path,
        plugin: str | None,
        options: Mapping[str, Any] | None,
        predict_inputs: Sequence[str | Mapping[str, Any]] | None,
        backbone_kind: str | None,
        overrides: list[str],
    ) -> None:
        if not isinstance(task_cls, type):
            raise TypeError(f"check_task: expected a Task subclass, got {task_cls!r}")
        self.cls = task_cls
        self.name = task_cls.__name__
        self.train_rows = [dict(row) for row in train_rows]
        self.validation_rows = [dict(row) for row in validation_rows]
        self.tmp_path = tmp_path
        self.plugin = plugin or _plugin_module(task_cls)
        self.options = options
        self.predict_inputs = predict_inputs
        self.backbone_kind = backbone_kind
        self.overrides = overrides
        self.batch_size = 0  # of the in-process batch, set by check_prepare_and_collate
        # The code objects of the task's methods, to name the method an exception came from.
        self._task_code = {
            function.__code__
            for klass in task_cls.__mro__ if klass is not object
            for attribute in vars(klass).values()
            for function in [getattr(attribute, "__func__", attribute)]
            if isinstance(function, types.FunctionType)
        }

    # -- helpers ----------------------------------------------------------------

    def fail(self, member: str, detail: str) -> ConformanceError:
        """An error for ``Task.member`` (a method or attribute of the contract) or for a step (``predict``)."""
        from nlpkit.tasks import Task

        part = f"{self.name}.{member}" if hasattr(Task, member) else f"{self.name}: {member}"
        return ConformanceError(part, detail)

    def _blame(self, error: BaseException) -> str | None:
        """The task method innermost in the traceback, or None when the task is not in it."""
        blamed = None
        tb = error.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code in self._task_code:
                blamed = tb.tb_frame.f_code.co_name
            tb = tb.tb_next
        return blamed

    @contextmanager
    def step(self, doing: str) -> Iterator[None]:
        """Turn an exception into a ConformanceError naming the task method that raised it."""
        try:
            yield
        except ConformanceError:
            raise
        except Exception as error:
            method = self._blame(error)
            message = f"raised {type(error).__name__}: {error}"
            if method is None:
                raise self.fail(doing, message) from error
            # Any method of the class, its own helpers included, is named like a contract member.
            raise ConformanceError(f"{self.name}.{method}", f"{message} (during {doing})") from error

    # -- the check, part by part ----------------------------------------------------

    def run(self) -> TaskCheck:
        import torch

        self.check_attributes()
        self.check_rows()
        plugin_set = self.check_registration()
        self.write_data(self.check_backbone_kind(plugin_set))
        recipe = self.check_recipe(plugin_set)
        # The in-process steps draw random weights: keep the caller's random state as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            inputs = self.check_setup_and_state(recipe, plugin_set)
            batch = self.check_prepare_and_collate(inputs)
            model = self.check_forward_loss_backward(recipe, inputs, batch, plugin_set)
            self.check_metrics_and_decode(inputs.task, model, batch)
        result = self.check_fit()
        self.check_run_folder(result.run_dir, inputs.task.state())
        answers = self.check_load_and_predict(result.run_dir)
        self.check_report_section(inputs.task, result.run_dir)
        return TaskCheck(result.run_dir, result.metrics, answers)

    def check_rows(self) -> None:
        if len(self.train_rows) < 2 or not self.validation_rows:
            raise ValueError("check_task: needs at least 2 training rows and 1 validation row")
        fields = [*self.cls.input_columns, *self.cls.target_columns]
        for split, rows in (("train_rows", self.train_rows), ("validation_rows", self.validation_rows)):
            for i, row in enumerate(rows):
                missing = [f for f in fields if f not in row]
                if missing:
                    raise ValueError(f"check_task: {split}[{i}] has no '{missing[0]}' (rows are keyed by the task's "
                                     f"fields: {', '.join(fields)}); got {', '.join(row)}")

    def check_attributes(self) -> None:
        from nlpkit.recipe import Recipe
        from nlpkit.tasks import Task

        if not issubclass(self.cls, Task):
            raise self.fail("__bases__", "expected a subclass of nlpkit.tasks.Task")
        name = getattr(self.cls, "name", None)
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_.-]*", name):
            raise self.fail("name", f"expected a short lowercase registry name such as 'regression', got {name!r}")
        sections = [f.name for f in dataclasses.fields(Recipe)]
        if name in sections:
            raise self.fail("name", f"'{name}' is a recipe section of nlpkit's own ({', '.join(sections)}); "
                                    "the task's section could not be told apart from it")
        for attribute in ("backbone_kinds", "input_columns", "optional_columns", "target_columns", "metric_names"):
            value = getattr(self.cls, attribute)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
                hint = " (a one-element tuple needs a trailing comma)" if isinstance(value, str) else ""
                raise self.fail(attribute, f"expected a tuple of names such as ('x',), got {value!r}{hint}")
            if len(set(value)) != len(value):
                raise self.fail(attribute, f"names repeat in {value!r}")
        if not self.cls.backbone_kinds:
            raise self.fail("backbone_kinds", "expected at least one backbone kind, got ()")
        if not self.cls.input_columns:
            raise self.fail("input_columns", "expected at least one input field (the first is the main text), got ()")
        fields = [*self.cls.input_columns, *self.cls.optional_columns, *self.cls.target_columns]
        shared = sorted({f for f in fields if fields.count(f) > 1})
        if shared:
            raise self.fail("input_columns", f"field '{shared[0]}' is in more than one of input_columns, "
                                             "optional_columns and target_columns")
        if "loss" in self.cls.metric_names:
            raise self.fail("metric_names", "'loss' is taken: nlpkit logs val_loss itself")
        config_class = self.cls.config_class
        if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
            raise self.fail("config_class", f"expected a dataclass (the task's recipe section), got {config_class!r}")

    def check_registration(self) -> Any:
        from nlpkit.errors import NlpkitError
        from nlpkit.plugins import load_plugins

        try:
            plugin_set = load_plugins(plugins=[self.plugin])
        except NlpkitError as error:
            raise self.fail(f"plugin '{self.plugin}'", str(error)) from error
        tasks = plugin_set.registries.tasks
        if self.cls.name not in tasks:
            raise self.fail(
                f"plugin '{self.plugin}'",
                f"registers no task '{self.cls.name}': expected an @nlpkit.hookimpl nlpkit_register_tasks() "
                f"returning [{self.name}] (registered tasks: {', '.join(tasks.names()) or 'none'})",
            )
        registered = tasks.get(self.cls.name)
        if registered is not self.cls:
            raise self.fail(
                f"plugin '{tasks.owner(self.cls.name)}'",
                f"registers task '{self.cls.name}' as {registered.__module__}.{registered.__qualname__}, "
                f"not {self.cls.__module__}.{self.cls.__qualname__}",
            )
        return plugin_set

    def check_backbone_kind(self, plugin_set: Any) -> str:
        known = plugin_set.registries.backbone_kinds
        for kind in self.cls.backbone_kinds:
            if kind not in known:
                raise self.fail("backbone_kinds", f"unknown backbone kind '{kind}'; known: {', '.join(known.names())}")
        kind = self.backbone_kind or self.cls.backbone_kinds[0]
        if kind not in self.cls.backbone_kinds:
            raise ValueError(f"check_task: backbone_kind '{kind}' is not one of "
                             f"{self.name}.backbone_kinds {self.cls.backbone_kinds}")
        return kind

    def write_data(self, kind: str) -> None:
        # JSON lines keep types (numbers, lists of labels) exactly as the rows give them.
        folder = self.tmp_path / "data"
        folder.mkdir(parents=True, exist_ok=True)
        self.files = {
            "train": str(write_rows(folder / "train.jsonl", self.train_rows)),
            "validation": str(write_rows(folder / "validation.jsonl", self.validation_rows)),
        }
        self.recipe = tiny_recipe(self.cls.name, self.files, self.tmp_path / "runs", kind, self.options)

    def check_recipe(self, plugin_set: Any) -> Any:
        from nlpkit.errors import NlpkitError
        from nlpkit.recipe import load_recipe
        from nlpkit.schema import build

        # The task's own section first, so that its errors name the config class rather than the recipe.
        # Defaults are checked too: the run folder's recipe.yaml holds every field, and nlpkit.load
        # validates it again.
        raw: dict[str, Any] = {}
        for field in dataclasses.fields(self.cls.config_class):
            if field.default is not dataclasses.MISSING:
                raw[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                raw[field.name] = field.default_factory()
            value = raw.get(field.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                raw[field.name] = dataclasses.asdict(value)
        try:
            build(self.cls.config_class, {**raw, **(self.options or {})}, (self.cls.name,), "options")
        except (NlpkitError, TypeError) as error:
            raise self.fail("config_class", f"cannot hold the options {self.options or {}}: {error}") from error
        try:
            return load_recipe(self.recipe, self.overrides, plugin_set.registries)
        except NlpkitError as error:
            raise self.fail("recipe", str(error)) from error

    def check_setup_and_state(self, recipe: Any, plugin_set: Any) -> Any:
        from nlpkit.assembly import prepare_inputs

        with self.step("nlpkit's data preparation (setup, check_split)"):
            inputs = prepare_inputs(recipe, plugin_set.registries)
        task = inputs.task
        with self.step("state()"):
            state = task.state()
        try:
            text = json.dumps(state, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise self.fail("state", f"expected JSON-serialisable data (it is saved in the run folder), got {state!r}: {error}") from error
        if not isinstance(state, dict):
            raise self.fail("state", f"expected a dict, got {type(state).__name__}")
        with self.step("load_state(state()) on a fresh task"):
            fresh = self.cls(recipe.task_options, inputs.tokenizer)
            fresh.load_state(json.loads(text))
            restored = fresh.state()
        if restored != json.loads(text):
            raise self.fail("load_state", f"a fresh task given load_state({text}) has state() {restored!r}: "
                                          "a loaded run would not answer like the trained one")
        return inputs

    def check_prepare_and_collate(self, inputs: Any) -> dict[str, Any]:
        import datasets
        import torch

        task = inputs.task
        prepared = {}
        for split, dataset in inputs.splits.items():
            with self.step(f"prepare({split})"):
                prepared[split] = features = task.prepare(dataset)
                again = task.prepare(dataset)
            if not isinstance(features, datasets.Dataset):
                raise self.fail("prepare", f"expected a datasets.Dataset, got {type(features).__name__}")
            if self.cls.regroups_examples:  # language-model blocks: any number of rows, but some
                if len(features) == 0:
                    raise self.fail("prepare", f"expected feature rows from {len(dataset)} examples, got none")
            elif len(features) != len(dataset):
                raise self.fail("prepare", f"expected one feature row per example ({len(dataset)}), got {len(features)} "
                                           "(set regroups_examples = True if prepare joins or cuts examples)")
            if not features.cache_files or features._fingerprint != again._fingerprint:
                raise self.fail("prepare", "expected a cached datasets.map: two calls on the same data gave the "
                                           f"fingerprints {features._fingerprint} and {again._fingerprint} (datasets "
                                           "names its cache by hashing the task; keep the task's attributes plain data)")
        # A batch as the DataLoader makes it: rows of the prepared training split.
        train = prepared["train"]
        examples = [train[i] for i in range(min(4, len(train)))]
        with self.step("feature_length(features)"):
            length = task.feature_length(examples[0])
        if not isinstance(length, int) or length < 1:
            raise self.fail("feature_length", f"expected a positive int (used to group batches by length), got {length!r}")

        with self.step("collate(features)"):
            batch = task.collate(examples)
        if not isinstance(batch, Mapping):
            raise self.fail("collate", f"expected a dict of tensors, got {type(batch).__name__}")
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise self.fail("collate", f"expected a dict of tensors, got no tensor among {', '.join(map(str, batch))}")
        for key, tensor in tensors.items():
            if tensor.dim() == 0 or tensor.shape[0] != len(examples):
                raise self.fail("collate", f"'{key}': expected the batch dimension first, of size {len(examples)}, "
                                           f"got shape {tuple(tensor.shape)}")
        self.batch_size = len(examples)
        return dict(batch)

    def check_forward_loss_backward(self, recipe: Any, inputs: Any, batch: dict[str, Any], plugin_set: Any) -> Any:
        import torch
        from torch import nn

        from nlpkit.assembly import build_model

        task, config = inputs.task, inputs.backbone_config
        with self.step("build_head(backbone_config)"):
            model, _ = build_model(recipe, plugin_set.registries, task, config)
        if not isinstance(model.head, nn.Module):
            raise self.fail("build_head", f"expected an nn.Module, got {type(model.head).__name__}")
        model.train()

        with self.step("forward(model, batch) in training mode"):
            outputs = task.forward(model, batch)
        with self.step("loss(outputs, batch)"):
            loss = task.loss(outputs, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise self.fail("loss", f"expected a finite scalar tensor, got {_shape(loss)}")
        if not loss.is_floating_point() or not torch.isfinite(loss):
            raise self.fail("loss", f"expected a finite scalar tensor, got {loss.item()!r} ({loss.dtype})")
        if not loss.requires_grad:
            raise self.fail("loss", "expected a loss that depends on the model's parameters; it requires no gradient "
                                    "(computed under torch.no_grad(), or from detached tensors?)")
        with self.step("loss.backward()"):
            loss.backward()

        def reached(module: nn.Module) -> bool:
            return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())

        for name, parameter in model.named_parameters():
            if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
                raise self.fail("loss", f"non-finite gradient in '{name}'")
        if any(p.requires_grad for p in model.head.parameters()) and not reached(model.head):
            raise self.fail("forward", "no gradient reaches the head: the loss does not depend on model.head")
        if not reached(model.backbone):
            raise self.fail("forward", "no gradient reaches the backbone: the loss does not depend on "
                                       "model.backbone (is its output detached?)")
        model.zero_grad(set_to_none=True)
        return model.eval()

    def check_metrics_and_decode(self, task: Any, model: Any, batch: dict[str, Any]) -> None:
        import torch
        import torchmetrics

        with self.step("metrics()"):
            metrics = task.metrics()
        if not isinstance(metrics, Mapping):
            raise self.fail("metrics", f"expected a dict of torchmetrics metrics keyed by metric_names, got {type(metrics).__name__}")
        # A set-up task may add names that depend on its data (a score per label) to its own metric_names;
        # the class's names, the ones recipes may monitor, must stay among them.
        expected = list(task.metric_names)
        dropped = [n for n in self.cls.metric_names if n not in expected]
        if dropped or "loss" in expected:
            name = dropped[0] if dropped else "loss"
            raise self.fail("metric_names", f"the set-up task's metric_names {tuple(expected)} "
                                            + (f"lack the class's '{name}'" if dropped else "include 'loss', which nlpkit logs itself"))
        for key, metric in metrics.items():
            if not isinstance(metric, torchmetrics.Metric):
                raise self.fail("metrics", f"'{key}': expected a torchmetrics.Metric, got {type(metric).__name__}")

        def scalar(value: Any) -> bool:
            return isinstance(value, (float, int)) or (isinstance(value, torch.Tensor) and value.numel() == 1)

        computed: list[str] = []  # the names the metrics compute: a scalar metric's key, a dict metric's keys
        with torch.no_grad():
            with self.step("forward(model, batch) in evaluation mode"):
                outputs = task.forward(model, batch)
            if metrics:
                with self.step("evaluate_batch(model, batch, outputs)"):
                    arguments = task.evaluate_batch(model, batch, outputs)
                if not isinstance(arguments, (tuple, list)):
                    raise self.fail("evaluate_batch", f"expected a tuple: the arguments of each metric's update, "
                                                      f"got {type(arguments).__name__}")
                for key, metric in metrics.items():
                    with self.step(f"metric '{key}': update(*evaluate_batch(...)) and compute()"):
                        metric.update(*arguments)
                        value = metric.compute()
                    if isinstance(value, Mapping) and value and all(scalar(v) for v in value.values()):
                        computed.extend(value)
                    elif scalar(value):
                        computed.append(key)
                    else:
                        raise self.fail("metrics", f"'{key}'.compute(): expected a scalar, or a dict of scalars "
                                                   f"named in metric_names, got {_shape(value)}")
        missing = [n for n in expected if n not in computed]
        if missing:
            raise self.fail("metrics", f"missing '{missing[0]}' (metric_names: {', '.join(expected)}); "
                                       f"the metrics compute: {', '.join(computed) or 'none'}")
        extra = [n for n in computed if n not in expected]
        if extra:
            raise self.fail("metrics", f"'{extra[0]}' is not in metric_names ({', '.join(expected) or 'empty'}): "
                                       "recipes could not monitor it")
        with torch.no_grad():
            with self.step("decode(outputs, batch)"):
                answers = task.decode(outputs, batch)
        if not isinstance(answers, (list, tuple)) or len(answers) != self.batch_size:
            got = f"{len(answers)}" if isinstance(answers, (list, tuple)) else _shape(answers)
            raise self.fail("decode", f"expected a list of {self.batch_size} answers (one per example), got {got}")
        self.check_answers("decode", answers)

    def check_answers(self, member: str, answers: Sequence[Any]) -> None:
        for i, answer in enumerate(answers):
            try:
                json.dumps(answer, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise self.fail(member, f"answer {i + 1} is not JSON-serialisable ({error}): {answer!r}") from error

    def check_fit(self) -> Any:
        from nlpkit.training.trainer import run

        with self.step("nlpkit.run (two training steps)"):
            result = run(self.recipe, self.overrides, plugins=[self.plugin])
        expected = ["val_loss", *(f"val_{n}" for n in self.cls.metric_names)]
        missing = [k for k in expected if k not in result.metrics]
        if missing:
            raise self.fail("nlpkit.run (two training steps)", f"no '{missing[0]}' in the run's metrics "
                                                               f"{sorted(result.metrics)}")
        if not math.isfinite(result.metrics["val_loss"]):
            raise self.fail("loss", f"validation loss is {result.metrics['val_loss']} after two training steps")
        return result

    def check_run_folder(self, run_dir: Path, state: dict[str, Any]) -> None:
        from nlpkit.runs import RUN_FILE, TASK_STATE_FILE, WEIGHTS_FILE

        for name in (RUN_FILE, TASK_STATE_FILE, WEIGHTS_FILE):
            if not (run_dir / name).is_file():
                raise self.fail("run folder", f"no {name} in {run_dir}")
        saved = json.loads((run_dir / TASK_STATE_FILE).read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(state)):
            raise self.fail("setup", f"the run folder's task state {saved} differs from state() after setup on "
                                     f"the same data {state}: setup must depend on the data only")

    def check_report_section(self, task: Task, run_dir: Path) -> None:
        """The task's part of the run report, from the predictions the run saved (checked, not drawn: it is quick)."""
        from nlpkit.report import check_section, read_predictions, read_run_record

        predictions = read_predictions(run_dir)
        if not predictions:
            raise self.fail("run folder", f"no validation predictions in {run_dir} (predictions/validation.jsonl): "
                                          f"writing them failed, see the log")
        with self.step("report_section(the saved validation predictions)"):
            section = task.report_section(predictions, read_run_record(run_dir))
            check_section(section)

    def check_load_and_predict(self, run_dir: Path) -> list[Any]:
        from nlpkit.inference import LoadedModel, load

        with self.step("nlpkit.load"):
            loaded = load(run_dir, plugins=[self.plugin])
        if not isinstance(loaded, LoadedModel):  # a run folder loads as a run, never as a pretrained folder
            raise self.fail("nlpkit.load", f"expected a run, got a {type(loaded).__name__}")
        if type(loaded.task) is not self.cls:
            raise self.fail("nlpkit.load", f"expected a {self.name} task, got {type(loaded.task).__name__}")

        inputs: list[str | dict[str, Any]] = (
            [item if isinstance(item, str) else dict(item) for item in self.predict_inputs]
            if self.predict_inputs is not None else self.default_inputs()
        )
        if not inputs:
            raise ValueError("check_task: predict_inputs is empty")
        with self.step(f"predict(a list of {len(inputs)} inputs)"):
            answers = loaded.predict(inputs)
        if not isinstance(answers, list) or len(answers) != len(inputs):
            got = len(answers) if isinstance(answers, list) else _shape(answers)
            raise self.fail("predict", f"a list of {len(inputs)} inputs gave {got} answers, expected {len(inputs)}")
        self.check_answers("decode", answers)
        # The shortest input is the one the batch pads: alone it must get the same answer.
        padded = 0
        if not self.cls.regroups_examples:
            lengths = [loaded.task.feature_length(f) for f in loaded.features(loaded._examples(inputs))]
            padded = min(range(len(inputs)), key=lengths.__getitem__)
            if len(inputs) > 1 and lengths[padded] == max(lengths):
                raise ValueError(f"check_task: the predict inputs all encode to {lengths[0]} tokens; give inputs of "
                                 f"different lengths, so that the batch is really padded")
        with self.step("predict(a single input)"):
            single = loaded.predict(inputs[padded])
        self.check_answers("decode", [single])
        if not _close(single, answers[padded]):
            raise self.fail("predict", f"input {padded + 1} alone is answered {single!r} but {answers[padded]!r} in a "
                                       f"padded batch of {len(inputs)}: padding must not change answers (pass the "
                                       f"attention mask)")

        with self.step("evaluate(validation file)"):
            scores = loaded.evaluate(self.files["validation"])
        expected = {"loss", *self.cls.metric_names}
        if not expected <= set(scores):
            raise self.fail("evaluate", f"expected {sorted(expected)}, got {sorted(scores)}")
        return answers

    def default_inputs(self) -> list[str | dict[str, Any]]:
        fields = [*self.cls.input_columns, *self.cls.optional_columns]
        inputs: list[str | dict[str, Any]] = []
        for row in self.validation_rows[:4]:
            present = {f: row[f] for f in fields if f in row}
            inputs.append(present[fields[0]] if len(present) == 1 else present)
        return inputs
