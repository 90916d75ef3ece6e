"""The Task contract: what a task plugin implements.

A task puts a head on a backbone and says how raw examples become features,
how a batch is collated, what the loss and the metrics are, and how outputs
turn into a human answer. Everything else (optimiser, schedule, precision,
devices, checkpoints, logging, CLI, run folders) is nlpkit's job.

The life of a task object:

1. ``Task(config, tokenizer)`` with the validated recipe section
   (``config_class``) and the run's :class:`nlpkit.tokenization.Tokenizer`.
2. Training only: ``setup(splits)`` learns what the data defines (a label set)
   and checks the other splits against it; ``state()`` returns it as JSON so a
   run folder restores it with ``load_state`` for prediction.
3. ``prepare(dataset)`` maps examples to features (a cached ``datasets.map``
   of ``encode``); ``collate(features)`` pads a batch.
4. ``build_head(backbone_config)`` (``checkpoint_family`` is set before it);
   ``forward(model, batch)``, ``loss``;
   ``evaluate_batch`` gives the arguments of every metric's ``update``;
   ``decode`` turns outputs into answers; ``batch_tokens`` (optional) says
   how many tokens a batch holds, for the throughput nlpkit shows and logs.

A task sees the backbone only through its interface: ``model.backbone(...)``
returns an output with ``last_hidden_state`` (and ``past_key_values`` when a
cache is asked for); decoders have ``lm_head`` / ``logits``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from nlpkit.errors import NlpkitError
from nlpkit.report_parts import Curves, Matrix, Prediction, ReportSection, RunRecord, Table, Text

from nlpkit.backbones.checkpoints._common import HeadShape
from nlpkit.backbones.config import BackboneConfig

if TYPE_CHECKING:
    from pathlib import Path

    import datasets
    import torchmetrics


__all__ = ["Task", "TaskModel", "Backbone", "BackboneOutputs", "BackboneConfig", "TaskTokenizer", "GeneratesText", "ExportsToTransformers", "HFHead",
           "HeadShape", "family_head", "head_layers", "head_weights", "shaped_hf_head", "NoOptions", "pad", "NlpkitError",
           "ReportSection", "Table", "Matrix", "Curves", "Text", "Prediction", "RunRecord", "answer_features"]


@dataclass
class NoOptions:
    """The recipe section of a task that has no options."""


@dataclass
class HFHead:
    """How a task head corresponds to a ``transformers`` head class of one checkpoint family.

    Used both ways: a pretrained checkpoint's matching head weights initialise
    the task head, and ``nlpkit export`` writes the head under these names so
    that ``transformers`` loads the folder with ``architecture``.

    Attributes:
        architecture: the ``transformers`` class, e.g. ``BertForSequenceClassification``.
        weights: head parameter name (``dense.weight``) -> checkpoint tensor name
            without the base-model prefix (``pooler.dense.weight``).
        config: ``config.json`` entries the head class reads (``num_labels``, ``id2label`` ...).
        inside_base_model: the checkpoint names among ``weights`` that the
            class keeps inside its base model (BERT's ``pooler.dense.weight``
            is ``bert.pooler.dense.weight`` there); the others are top-level.
    """

    architecture: str
    weights: dict[str, str]
    config: dict[str, Any]
    inside_base_model: tuple[str, ...] = ()


def family_head(family: str | None, kind: str) -> HeadShape | None:
    """The layout of ``family``'s ``transformers`` head class of ``kind`` (``sequence_classification`` ...), or None.

    The family files describe their head classes (``HEADS``), so a task
    builds its head as the family's class lays it out and exports to it.
    """
    from nlpkit.backbones.checkpoints import head_shape

    return head_shape(family, kind)


_HEAD_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU,
}


def head_layers(shape: HeadShape | None, backbone_config: BackboneConfig, outputs: int, dropout: float) -> nn.Sequential:
    """A head laid out as ``shape``: ``dense``, ``activation`` and ``norm`` where it has them, ``dropout``, ``out``.

    Args:
        shape: the family's head layout; None for dropout and the output layer alone.
        backbone_config: the backbone's config (its width, its norms' epsilon).
        outputs: the output layer's width (labels, 2 for QA's start and end).
        dropout: the dropout before the output layer.
    """
    hidden = backbone_config.hidden_size
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if shape is not None and shape.transform is not None:
        layers["dense"] = nn.Linear(hidden, hidden, bias=shape.transform_bias)
        layers["activation"] = _HEAD_ACTIVATIONS[shape.activation]()
        if shape.norm is not None:
            layers["norm"] = nn.LayerNorm(hidden, eps=backbone_config.norm_eps, bias=shape.norm_bias)
    layers["dropout"] = nn.Dropout(dropout)
    layers["out"] = nn.Linear(hidden, outputs)
    return nn.Sequential(layers)


def head_weights(shape: HeadShape) -> dict[str, str]:
    """The parameter names of a :func:`head_layers` head -> the family's names (``HFHead.weights``)."""
    layers = [("out", shape.output, True)]
    if shape.transform is not None:
        layers.append(("dense", shape.transform, shape.transform_bias))
        if shape.norm is not None:
            layers.append(("norm", shape.norm, shape.norm_bias))
    return {f"{ours}.{parameter}": f"{theirs}.{parameter}" for ours, theirs, bias in layers
            for parameter in (("weight", "bias") if bias else ("weight",))}


def shaped_hf_head(shape: HeadShape, config: dict[str, Any]) -> HFHead:
    """The :class:`HFHead` of a :func:`head_layers` head laid out as ``shape``, with the class's ``config``."""
    weights = head_weights(shape)
    inside = tuple(theirs for theirs in weights.values() if theirs.rpartition(".")[0] in shape.inside_base_model)
    return HFHead(shape.architecture, weights, config, inside_base_model=inside)


class BackboneOutputs(Protocol):
    """What a backbone call returns (``nlpkit.backbones.BackboneOutput``)."""

    last_hidden_state: torch.Tensor  # (batch, seq, hidden): the last layer's (an encoder-decoder's decoder's)
    past_key_values: Any  # the updated cache when called with use_cache=True, else None
    encoder_last_hidden_state: torch.Tensor | None  # an encoder-decoder's encoder output


class Backbone(Protocol):
    """All a task may rely on of ``model.backbone`` (an encoder, decoder or encoder-decoder).

    ``backbone(input_ids, attention_mask=mask, ...)`` returns
    :class:`BackboneOutputs`. The keyword arguments by kind: an encoder takes
    ``token_type_ids``; a decoder ``position_ids``, ``past_key_values`` and
    ``use_cache``; an encoder-decoder ``decoder_input_ids``,
    ``decoder_attention_mask``, ``encoder_outputs``, ``past_key_values`` and
    ``use_cache``. A decoder's and an encoder-decoder's ``logits(hidden)``
    apply the LM head.
    """

    config: BackboneConfig

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> BackboneOutputs: ...

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor: ...


if TYPE_CHECKING:
    class BackboneModule(Backbone, nn.Module):
        """The type of ``TaskModel.backbone``: an ``nn.Module`` that offers the :class:`Backbone` protocol.

        For type checkers only (Python has no intersection types): tasks see the
        protocol, and nlpkit hands the same object to functions that take a
        module (``generate``, ``save_pretrained``, the fine-tuning controls).
        """


class TaskTokenizer(Protocol):
    """All a task may rely on of its tokenizer (``nlpkit.tokenization.Tokenizer``; README: Tokenizers).

    Encodings are ``tokenizers.Encoding`` objects: ``ids``, ``type_ids``,
    ``offsets`` (character offsets into the text each token comes from),
    ``sequence_ids`` (which text of a pair), ``word_ids`` (which pre-split word).
    """

    max_length: int

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_token_id(self) -> int: ...

    def token_id(self, role: str) -> int | None:
        """The id of a special token by role (``pad``, ``eos``, ``bos``, ``unk`` ...), None if absent."""
        ...

    def encode(self, text: str, pair: str | None = None, *, add_special_tokens: bool = True,
               truncation: bool = True) -> Any: ...

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None, add_special_tokens: bool = True,
                     truncation: bool = True) -> list[Any]: ...

    def encode_words(self, texts: Sequence[Sequence[str]], *, add_special_tokens: bool = True,
                     truncation: bool = True) -> list[Any]: ...

    def encode_windows(self, texts: Sequence[str], pairs: Sequence[str], *, stride: int, max_length: int | None = None,
                       add_special_tokens: bool = True) -> list[list[Any]]: ...

    @property
    def has_template(self) -> bool: ...

    def set_template(self, enabled: bool) -> None: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    @property
    def target(self) -> TaskTokenizer | None:
        """A translation pair's target-side tokenizer (Marian), None when one tokenizer serves both sides."""
        ...

    def save(self, folder: str | Path) -> None:
        """Write the tokenizer's files into ``folder`` (nlpkit keeps a run's tokenizer in its folder)."""
        ...

    # Chat: the template (None: none), conversations as ids, ids with the assistant's tokens marked.
    chat_template: str | None

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, *,
                            template: str | None = None, **variables: Any) -> list[int]: ...

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *, template: str | None = None,
                    **variables: Any) -> tuple[list[int], list[int]]: ...

    @property
    def special_token_ids(self) -> set[int]: ...

    def add_special_tokens(self, tokens: Sequence[str]) -> list[str]: ...


class TaskModel(nn.Module):
    """A backbone and a task head; the module that is trained and saved.

    Args:
        backbone: the backbone module.
        head: the task's head.
        renamed_weights: the task's ``renamed_weights``: old name prefixes
            of its weights mapped to the new ones, so that run folders and
            checkpoints saved before a rename still load.
    """

    backbone: BackboneModule

    def __init__(self, backbone: nn.Module, head: nn.Module, renamed_weights: dict[str, str] | None = None) -> None:
        super().__init__()
        self.backbone = backbone  # type: ignore[assignment]  # an nn.Module that offers the Backbone protocol
        self.head = head
        if renamed_weights:
            self.register_load_state_dict_pre_hook(_Renamer(renamed_weights))


class _Renamer:
    """A load_state_dict pre-hook that renames old weight names (at the module's prefix) to new ones."""

    def __init__(self, renamed: dict[str, str]) -> None:
        self.renamed = renamed

    def __call__(self, module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in [key for key in state if key.startswith(prefix)]:
            for old, new in self.renamed.items():
                if key.startswith(prefix + old):
                    state[prefix + new + key[len(prefix + old):]] = state.pop(key)
                    break


def pad(sequences: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ints to the longest one: (batch, longest) long tensor."""
    longest = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            if side == "right":
                out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            else:
                out[i, longest - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
    return out


def _stacked(values: list[Any]) -> torch.Tensor | list[Any]:
    """A tensor of numbers or of equal-length lists of numbers; other values stay a list."""
    try:
        return torch.tensor(values)
    except (TypeError, ValueError, RuntimeError):  # strings, None, ragged lists
        return values


class Task:
    """Base class of task plugins: the contract plus a few defaults.

    Class attributes a subclass sets:
        name: registry name, used as ``task:`` in recipes and as the name of
            the task's own recipe section.
        backbone_kinds: kinds of backbone the task accepts.
        config_class: dataclass of the task's recipe section.
        input_columns: fields an example must have for prediction
            (the first is the main text), e.g. ``("text",)``.
        optional_columns: fields that may be present, e.g. ``("text_pair",)``.
        target_columns: fields that hold the answer in training data.
        metric_names: names of the metrics ``metrics()`` returns; recipes may
            monitor ``val_<name>``. A task may extend them on the instance
            once ``setup`` or ``load_state`` knows its labels (a score per
            label); those extra ones are logged but cannot be monitored.
        lower_is_better: the metric names that improve downwards (errors,
            perplexity); a recipe monitoring one keeps its lowest value.
        regroups_examples: ``prepare`` joins or cuts examples into feature
            rows (language-model blocks), so features do not correspond one
            to one with examples.
        learnt_attributes: instance attributes ``setup`` learns from the
            training data (a label list), saved and restored by the default
            ``state`` and ``load_state``; JSON-serialisable values.
        padded_features: features the default ``collate`` pads as token
            sequences besides ``input_ids``, with the value each is padded with.
        renamed_weights: old name prefixes of the model's weights (``head.0.``)
            mapped to new ones (``head.dense.``) after a change of the head, so
            that run folders written before it still load.
        checkpoint_family: the backbone's checkpoint family (``bert``,
            ``electra`` ...: a pretrained folder's, else the first family that
            expresses the config; None when none does), set by nlpkit before
            ``build_head`` so that a head can take the family's layout
            (:func:`family_head` and :func:`head_layers`).

    A task whose answers the backbone's LM head writes also derives from
    :class:`GeneratesText`; one that can be exported in Hugging Face format,
    or start its head from a checkpoint's, has ``hf_head``
    (:class:`ExportsToTransformers`).
    """

    name: ClassVar[str]
    backbone_kinds: ClassVar[tuple[str, ...]] = ("encoder",)
    config_class: ClassVar[type] = NoOptions
    input_columns: ClassVar[tuple[str, ...]] = ("text",)
    optional_columns: ClassVar[tuple[str, ...]] = ()
    target_columns: ClassVar[tuple[str, ...]] = ("label",)
    metric_names: tuple[str, ...] = ()  # not a ClassVar: an instance may extend it (see above)
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    regroups_examples: ClassVar[bool] = False
    renamed_weights: ClassVar[dict[str, str]] = {}
    padded_features: ClassVar[dict[str, int]] = {"token_type_ids": 0}
    learnt_attributes: ClassVar[tuple[str, ...]] = ()
    checkpoint_family: str | None = None

    def __init__(self, config: Any, tokenizer: TaskTokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer

    # -- data -----------------------------------------------------------------

    @classmethod
    def input_fields(cls, present: Sequence[str]) -> tuple[str, ...]:
        """The input fields every example must have, given the fields ``present`` in the data.

        ``input_columns`` by default. A task that reads either of two layouts
        says which one by what is there: the generation task takes a ``text``,
        or a chat ``messages`` list instead.
        """
        return cls.input_columns

    @classmethod
    def text_columns(cls, column_names: Sequence[str]) -> list[str]:
        """Columns whose text trains a tokenizer from scratch (default: the inputs present)."""
        return [c for c in (*cls.input_columns, *cls.optional_columns) if c in column_names]

    def setup(self, splits: dict[str, datasets.Dataset]) -> None:
        """Learn what the training data defines (a label set); training only.

        nlpkit then calls ``check_split`` on every split.
        """

    def check_options(self) -> None:
        """Check the options that depend on the tokenizer (a stride against ``tokenizer.max_length``).

        Called whenever the task is built (``nlpkit run``, ``nlpkit check``,
        ``nlpkit.load``), so ``nlpkit check`` catches what a field alone cannot
        decide; what a field alone decides belongs in the options dataclass's
        ``__post_init__``.

        Raises:
            NlpkitError: a message that starts with the option's name
                (``"doc_stride: 128 is not below tokenizer.max_length (128)"``),
                reported at that key of the task's recipe section.
        """

    def check_split(self, where: str, dataset: datasets.Dataset) -> None:
        """Check that the task's state can handle a split's targets (evaluation data too).

        Args:
            where: names the data in messages (``data.validation``, a file path).
            dataset: the examples.

        Raises:
            NlpkitError: naming the split and row, e.g. a label never seen in training.
        """

    def state(self) -> dict[str, Any]:
        """What ``setup`` learnt, as JSON-serialisable data saved in the run folder.

        The default saves the attributes named in ``learnt_attributes``.
        """
        return {name: getattr(self, name) for name in self.learnt_attributes}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state`` returned (when a run folder is loaded); the default sets the attributes back."""
        for name in self.learnt_attributes:
            setattr(self, name, state[name])

    def encode(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Turn a batch of examples (column -> values) into features (batched map function).

        Target columns may be absent (prediction); then produce no targets.
        """
        raise NotImplementedError

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """Examples -> features, through ``datasets.map`` so the result is cached on disk."""
        return dataset.map(
            self.encode,
            batched=True,
            remove_columns=dataset.column_names,
            desc=f"{self.name}: encoding",
        )

    def feature_length(self, features: dict[str, Any]) -> int:
        """Length of one example, for length-grouped batches (default: ``input_ids``)."""
        return len(features["input_ids"])

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad a list of features into a batch.

        The default suits one token sequence per example: ``input_ids`` padded
        with the tokenizer's pad id, with its ``attention_mask``; the other
        ``padded_features`` padded with their values; every other feature
        stacked into a tensor where its values are numbers or equal-length
        lists of numbers (labels), and left a list where not (strings,
        offsets: a batch may carry plain values).
        """
        batch: dict[str, Any] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if key == "input_ids":
                batch[key] = pad(values, self.tokenizer.pad_token_id)
                batch["attention_mask"] = pad([[1] * len(v) for v in values], 0)
            elif key in self.padded_features:
                batch[key] = pad(values, self.padded_features[key])
            else:
                batch[key] = _stacked(values)
        return batch

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        """How many tokens a collated training batch holds: what the throughput (tokens/s) counts.

        Optional. The default counts the non-padding input tokens (the sum of
        ``attention_mask``), else every ``input_ids`` entry, else nothing (0:
        no throughput is shown). A task whose batch holds more than its inputs
        counts them here (translation adds the target tokens).
        """
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return int(mask.sum())
        ids = batch.get("input_ids")
        return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0

    # -- model ----------------------------------------------------------------

    def build_head(self, backbone_config: BackboneConfig) -> nn.Module:
        """The task's head; its parameters are trained and saved with the backbone's."""
        raise NotImplementedError

    def forward(self, model: TaskModel, batch: dict[str, Any]) -> Any:
        """Run backbone and head on a batch; return what ``loss`` and ``decode`` read."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """A scalar training loss: the batch's mean (over examples, or over target tokens, see ``target_tokens``)."""
        raise NotImplementedError

    def target_tokens(self, batch: dict[str, Any]) -> int | None:
        """How many targets this collated batch's loss averages over: its label tokens that are not ignored.

        Optional. A task whose ``loss`` is a mean over target tokens (language
        modelling, translation, token tagging) returns their count, and nlpkit
        then weighs every token of an optimizer step alike: the gradient is
        the sum of the token losses over all accumulated batches and all
        processes, divided by their tokens, whatever the batch size,
        ``accumulate_grad_batches`` or number of devices (``loss`` still
        returns the batch's mean). None, the default, for a loss that is a
        mean over examples (classification, question answering): each batch
        of a step then weighs the same.
        """
        return None

    def metrics(self) -> dict[str, torchmetrics.Metric]:
        """Fresh torchmetrics metrics, keyed by the names in ``metric_names``."""
        return {}

    def evaluate_batch(self, model: TaskModel, batch: dict[str, Any], outputs: Any) -> tuple[Any, ...]:
        """The arguments passed to every metric's ``update`` for a validation or test batch.

        Tasks that judge decoded output (generation samples, BLEU) decode here.
        """
        raise NotImplementedError

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Turn a batch of outputs into human answers, one per example."""
        raise NotImplementedError

    def validation_samples(self, model: TaskModel) -> list[str]:
        """Lines to show after a validation pass (sample generations, a few translations).

        nlpkit logs them and appends them to the run folder's ``samples.txt``;
        called in the first process only, with the model in evaluation mode.
        The default shows nothing.
        """
        return []

    def validation_scores(self, model: TaskModel) -> dict[str, float]:
        """Scores a validation pass adds beside the metrics, from the model as a whole (answers it generates).

        Logged as ``val_<name>`` after each validation pass (not during the
        sanity check), in every process, with the model in evaluation mode;
        they are reported, not monitored. The default adds none.
        """
        return {}

    def report_section(self, predictions: list[Prediction], run: RunRecord) -> ReportSection | None:
        """The task's part of the run report (``nlpkit report``, and ``nlpkit run`` at its end); optional.

        Args:
            predictions: the best model's answer to every validation example
                (``Prediction.example`` holds its fields, ``Prediction.prediction``
                the ``decode`` answer), saved by the run; empty when the run saved none.
            run: the run's recipe, ``metrics.csv`` history, final metrics and samples.

        Returns:
            A :class:`ReportSection` of :class:`Table`, :class:`Matrix` (a heat map),
            :class:`Curves` and :class:`Text` parts, which nlpkit draws and renders
            (every text escaped); None (the default): the report has only its
            generic part (curves, recipe, versions).
        """
        return None


class GeneratesText:
    """Mix-in of a task whose answers the backbone's LM head writes (``generation``, ``translation``).

    A run folder of such a task offers ``generate`` (and, on an
    encoder-decoder, ``translate``). Derive from it beside :class:`Task`:
    ``class LanguageModeling(GeneratesText, Task)``.
    """

    tokenizer: TaskTokenizer

    def encode_prompts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of prompts as the model saw text in training (a decoder's
        prompt, an encoder-decoder's source), for ``generate``; never truncated."""
        raise NotImplementedError

    def generation_defaults(self) -> dict[str, Any]:
        """Decoding defaults of a trained model (``nlpkit.generation`` option names).

        By default the tokenizer's end-of-sequence, padding and start tokens.
        """
        roles = {"eos_token_id": "eos", "pad_token_id": "pad", "bos_token_id": "bos"}
        return {key: self.tokenizer.token_id(role) for key, role in roles.items()
                if self.tokenizer.token_id(role) is not None}


@runtime_checkable
class ExportsToTransformers(Protocol):
    """What a task has whose head matches a ``transformers`` head class (classification, NER ...).

    Optional: without ``hf_head`` a task's head starts fresh on pretrained
    backbones and its runs cannot be exported in Hugging Face format.
    """

    def hf_head(self, family: str) -> HFHead | None:
        """The ``transformers`` head class this task's head matches for a checkpoint family.

        Args:
            family: the checkpoint's ``model_type`` (``bert``, ``roberta`` ...).

        Returns:
            The head's class, weight names and config entries; None where the
            task (with these options) has no counterpart for ``family``.
        """
        ...


def answer_features(task: Task, model: TaskModel, features: list[dict[str, Any]], batch_size: int,
                    device: torch.device | None = None) -> list[Any]:
    """The task's answer to each feature (``encode``'s rows), batched in order of length, in the order given.

    ``predict`` and the run report's validation predictions both answer through this. A batch pads to
    its longest input, and on SST-2 sentences a random batch of 32 is half padding (MiniLM, 2 CPU
    cores: 32 inputs in 0.26 s as one batch, 0.18 s as four length-sorted batches of 8).

    Args:
        device: where the batches go (the model's device); None leaves them on the CPU.
    """
    order = sorted(range(len(features)), key=lambda i: _padded_size(features[i]))
    answers: list[Any] = [None] * len(features)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = task.collate([features[i] for i in chunk])
            if device is not None:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for i, answer in zip(chunk, task.decode(task.forward(model, batch), batch)):
                answers[i] = answer
    return answers


def _padded_size(feature: dict[str, Any]) -> tuple[int, int]:
    """What a feature adds to its batch's padded size: (windows, tokens of the longest); one window for most tasks."""
    ids = feature.get("input_ids")
    if not isinstance(ids, (list, tuple)) or not ids:
        return (0, 0)
    if isinstance(ids[0], (list, tuple)):  # a long input split into windows (QA, NER)
        return (len(ids), max(len(window) for window in ids))
    return (1, len(ids))
