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
4. ``build_head(backbone_config)``; ``forward(model, batch)``, ``loss``;
   ``evaluate_batch`` gives the arguments of every metric's ``update``;
   ``decode`` turns outputs into answers.

A task sees the backbone only through its interface: ``model.backbone(...)``
returns an output with ``last_hidden_state`` (and ``past_key_values`` when a
cache is asked for); decoders have ``lm_head`` / ``logits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import nn

from nlpkit.errors import NlpkitError

if TYPE_CHECKING:
    import datasets
    import torchmetrics

    from nlpkit.backbones import BackboneConfig
    from nlpkit.tokenization import Tokenizer

__all__ = ["Task", "TaskModel", "HFHead", "NoOptions", "pad", "NlpkitError"]


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
        weights: head parameter name (``0.weight``) -> checkpoint tensor name
            without the base-model prefix (``pooler.dense.weight``).
        config: ``config.json`` entries the head class reads (``num_labels``, ``id2label`` ...).
    """

    architecture: str
    weights: dict[str, str]
    config: dict[str, Any]


class TaskModel(nn.Module):
    """A backbone and a task head; the module that is trained and saved."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head


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
        generates: the backbone's LM head writes the task's answers, so a run
            folder offers ``generate`` (see ``encode_prompts``).
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
    generates: ClassVar[bool] = False

    def __init__(self, config: Any, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer

    # -- data -----------------------------------------------------------------

    @classmethod
    def text_columns(cls, column_names: Sequence[str]) -> list[str]:
        """Columns whose text trains a tokenizer from scratch (default: the inputs present)."""
        return [c for c in (*cls.input_columns, *cls.optional_columns) if c in column_names]

    def setup(self, splits: dict[str, datasets.Dataset]) -> None:
        """Learn what the training data defines (a label set); training only.

        nlpkit then calls ``check_split`` on every split.
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
        """What ``setup`` learnt, as JSON-serialisable data saved in the run folder."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state`` returned (when a run folder is loaded)."""

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
        """Pad a list of features into a batch of tensors."""
        raise NotImplementedError

    # -- model ----------------------------------------------------------------

    def build_head(self, backbone_config: BackboneConfig) -> nn.Module:
        """The task's head; its parameters are trained and saved with the backbone's."""
        raise NotImplementedError

    def forward(self, model: TaskModel, batch: dict[str, Any]) -> Any:
        """Run backbone and head on a batch; return what ``loss`` and ``decode`` read."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """A scalar training loss."""
        raise NotImplementedError

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

    # -- generation (tasks with ``generates = True``) ---------------------------

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

    # -- checkpoints ----------------------------------------------------------

    def hf_head(self, family: str) -> HFHead | None:
        """The ``transformers`` head class this task's head matches for a checkpoint family.

        Optional: None (the default) means the head starts fresh on pretrained
        backbones and the task cannot be exported in Hugging Face format.

        Args:
            family: the checkpoint's ``model_type`` (``bert``, ``roberta`` ...).
        """
        return None
