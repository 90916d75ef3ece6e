"""Loading a trained run folder and using it: ``nlpkit.load(RUN_DIR).predict(texts)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from nlpkit._files import staged_folder
from nlpkit.backbones.config import config_of
from nlpkit.backbones.cpu import pack_for_cpu_inference
from nlpkit.chat_data import check_messages
from nlpkit.errors import NlpkitError
from nlpkit.plugins import PluginSet, load_plugins
from nlpkit.recipe import PeftSection, Recipe
from nlpkit.registry import Registries
from nlpkit.runs import RUN_FILE, SOURCE_CHECKPOINT_FILE, WEIGHTS_FILE, RunFolder
from nlpkit.tasks import ExportsToTransformers, GeneratesText, Task, TaskModel, answer_features

__all__ = ["LoadedModel", "PretrainedModel", "load"]


class LoadedModel:
    """A trained task model and what it needs to answer: tokenizer, task state, recipe.

    Attributes:
        task: the task object (its ``name`` says what the model does).
        model: the backbone and head, in evaluation mode.
        recipe: the run's resolved recipe.
        path: the run folder.
    """

    def __init__(self, task: Task, model: TaskModel, recipe: Recipe, path: Path, plugin_set: PluginSet) -> None:
        self.task = task
        self.model = model.eval()
        self.recipe = recipe
        self.path = path
        self.plugin_set = plugin_set

    def check_inputs(self, inputs: Sequence[Any], names: Sequence[str] | None = None) -> None:
        """Check that every input is a text or a mapping with the task's text fields.

        Args:
            inputs: what :meth:`predict` would be given.
            names: how messages name each input (``in.jsonl:3``); default ``input N``.

        Raises:
            NlpkitError: naming the first bad input, the field it lacks and the fields it has.
        """
        fields = [*self.task.input_columns, *self.task.optional_columns]
        for i, item in enumerate(inputs):
            name = names[i] if names is not None else f"input {i + 1}"
            if isinstance(item, str):
                continue
            if not isinstance(item, dict):
                raise NlpkitError(f"{name}: expected a string or an object with {', '.join(fields)}, "
                                  f"got {type(item).__name__}")
            for field in self.task.input_fields(list(item)):
                if field == "messages":  # a conversation, as the chat data format reads it
                    check_messages(item.get(field), name)
                elif not isinstance(item.get(field), str):
                    found = ", ".join(map(str, item)) or "none"
                    problem = f"missing field '{field}'" if field not in item else f"field '{field}' is not a string"
                    raise NlpkitError(f"{name}: {problem} (fields found: {found}; expected: {', '.join(fields)})")

    def _examples(self, inputs: Sequence[Any]) -> dict[str, list[Any]]:
        self.check_inputs(inputs)
        fields = [*self.task.input_columns, *self.task.optional_columns]
        rows = [{self.task.input_columns[0]: item} if isinstance(item, str) else item for item in inputs]
        present = [f for f in fields if any(f in row for row in rows)]
        return {f: [row.get(f) for row in rows] for f in present}

    def features(self, examples: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """Examples (column -> values) -> one feature dict per example, as ``prepare`` makes them."""
        encoded = self.task.encode(examples)
        return [dict(zip(encoded, values)) for values in zip(*encoded.values())]

    def predict(self, inputs: str | dict[str, Any] | Sequence[str | dict[str, Any]], batch_size: int = 32) -> Any:
        """Answer one input or a list of inputs.

        Inputs are batched in order of length (as sentence-transformers'
        ``encode`` does) and answered in the order given (:func:`answer_features`).

        Args:
            inputs: a text, a mapping of the task's fields (``{"text": ..., "text_pair": ...}``),
                or a list of either.
            batch_size: examples per forward pass.

        Returns:
            The task's answer for a single input; a list of answers for a list.
        """
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        features = self.features(self._examples(items)) if items else []
        answers = answer_features(self.task, self.model, features, batch_size)
        return answers[0] if single else answers

    def generate(self, prompts: str | Sequence[str], *, stream: Callable[[str], None] | None = None,
                 **options: Any) -> str | list[str] | list[list[str]]:
        """Continue prompts with the model (a run of a task that generates: ``generation``, ``translation``).

        Args:
            prompts: a text or a list of texts (one batch, left-padded).
            stream: called with each new piece of the first prompt's text as it is produced.
            **options: decoding options named as in ``transformers``' ``generate``
                (``max_new_tokens``, ``do_sample``, ``num_beams``, ``temperature``,
                ``top_k``, ``top_p`` ...), plus ``stop`` and ``seed``; see
                :class:`nlpkit.generation.GenerationOptions`. ``on_text`` and
                ``details`` as in :func:`nlpkit.generation.generate` (every
                row's text as it comes; token counts and finish reasons).

        Returns:
            The continuation only, special tokens skipped: a string for one
            prompt, a list for a list, a list of lists when ``num_return_sequences > 1``.

        Raises:
            NlpkitError: the run's task does not generate, an unknown option, a
                prompt longer than the model's context window.
        """
        from nlpkit.generation import generate

        if not isinstance(self.task, GeneratesText):
            raise NlpkitError(f"{self.path} is a '{self.task.name}' run, which cannot generate text; generate needs a "
                              f"run of a task that generates (generation, translation) or a pretrained decoder folder")
        return generate(self.model.backbone, self.task.tokenizer, prompts, encode=self.task.encode_prompts,
                        defaults=self.task.generation_defaults(), stream=stream, **options)

    def chat(self, messages: Any, *, stream: Callable[[str], None] | None = None, **options: Any) -> Any:
        """The assistant's reply to a conversation (or to each of a list of them), through the run's chat template.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]`` (roles
                system, user, assistant), or a list of such conversations.
            stream: called with each new piece of the first reply as it is produced.
            **options: decoding options, as in :meth:`generate`.

        Returns:
            ``{"role": "assistant", "content": str}``, a list of them for a list
            of conversations; see :func:`nlpkit.chat.reply`.

        Raises:
            NlpkitError: the run is not a decoder's generation run, or its
                tokenizer has no chat template (a run trained on plain text).
        """
        from nlpkit.chat import reply

        if not isinstance(self.task, GeneratesText) or self.model.backbone.config.kind != "decoder":
            raise NlpkitError(f"{self.path} is a '{self.task.name}' run; chat needs a decoder's generation run or a "
                              f"pretrained decoder folder")
        return reply(self.model.backbone, self.task.tokenizer, messages, defaults=self.task.generation_defaults(),
                     stream=stream, **options)

    def translate(self, texts: str | Sequence[str], *, batch_size: int = 32,
                  **options: Any) -> str | list[str] | list[list[str]]:
        """Translate (or summarise) texts with a sequence-to-sequence run, ``batch_size`` texts at a time.

        Options and result as :meth:`generate`; the run's recipe sets the
        defaults (``translation.num_beams`` ...).

        Raises:
            NlpkitError: the run is not of a sequence-to-sequence task.
        """
        if not isinstance(self.task, GeneratesText) or self.model.backbone.config.kind != "encoder-decoder":
            raise NlpkitError(f"{self.path} is a '{self.task.name}' run; translate needs a run of a sequence-to-"
                              f"sequence task (translation) or a pretrained encoder-decoder folder")
        return _in_batches(self.generate, texts, batch_size, options)

    def export(self, folder: str | Path, format: str = "hf", overwrite: bool = False) -> Path:
        """Write the model as a Hugging Face-format folder that ``transformers`` loads, or a LoRA run's adapter.

        ``hf`` (``nlpkit export --merge``, the default): the backbone goes under
        its family's names, the task head as the matching ``transformers`` head
        class (e.g. ``BertForSequenceClassification``); a LoRA run's adapters
        are merged into the weights. A fine-tuned checkpoint keeps its family
        and the rest of its original ``config.json``.

        ``peft`` (``nlpkit export --adapter``): a LoRA run fine-tuned from a
        checkpoint folder, as a PEFT adapter folder (``adapter_config.json``,
        ``adapter_model.safetensors``) that
        ``peft.PeftModel.from_pretrained(AutoModelFor...(base), folder)``
        loads onto that checkpoint; the task head is saved whole
        (``modules_to_save``).

        Either way the tokenizer goes beside the model, and the files are
        written beside ``folder`` first and moved in once all are written, so
        a failed export leaves ``folder`` as it was.

        Args:
            folder: where to write (created if needed).
            format: ``hf`` or ``peft``.
            overwrite: replace the model files ``folder`` already holds.

        Raises:
            NlpkitError: an unknown format, ``folder`` is a file or already
                holds a model (without ``overwrite``), a backbone no family can
                express, a task head without a ``transformers`` counterpart;
                for ``peft``: a run without adapters or without a base
                checkpoint folder, a layer the family fuses with others.
        """
        from nlpkit.backbones.checkpoints import infer_family, save_pretrained

        if format not in ("hf", "peft"):
            raise NlpkitError(f"--format: unknown export format '{format}'; known: hf, peft")
        target = Path(folder)
        if target.exists() and not target.is_dir():
            raise NlpkitError(f"{target} is a file; export writes a folder")
        held = _model_files(target)
        if held and not overwrite:
            raise NlpkitError(f"{target} already holds a model ({', '.join(sorted(f.name for f in held)[:4])}); "
                              f"pass --overwrite to replace it")
        source_file = self.path / SOURCE_CHECKPOINT_FILE
        source = json.loads(source_file.read_text(encoding="utf-8")) if source_file.is_file() else {}
        adapters = self._adapter_section(source) if format == "peft" else None
        registries = self.plugin_set.registries
        family = self.task.checkpoint_family or infer_family(self.model.backbone.config, registries=registries)
        spec = self.task.hf_head(family) if isinstance(self.task, ExportsToTransformers) else None
        if spec is None:
            raise NlpkitError(f"task '{self.task.name}' (with these options) has no transformers head for {family} "
                              f"checkpoints, so it cannot be exported in Hugging Face format")
        with staged_folder(target) as staging:
            if adapters is not None:
                from safetensors.torch import load_file

                from nlpkit.adapters import save_peft_adapter

                # The run's own file holds the adapters as trained (the loaded model has them merged).
                saved = load_file(str(self.path / WEIGHTS_FILE))
                save_peft_adapter(self.model, saved, adapters, family, spec, source["folder"], staging, registries)
            else:
                head_state = self.model.head.state_dict()
                extra = {hf_name: head_state[name] for name, hf_name in spec.weights.items()}
                hf_config = {**source.get("config", {}), **spec.config, "architectures": [spec.architecture]}
                save_pretrained(self.model.backbone, staging, family, extra, hf_config, registries=registries)
            self.task.tokenizer.save(staging)
            for stale in held:  # an old shard or .bin would be read before (or beside) the new weights
                stale.unlink()
        return target

    def _adapter_section(self, source: dict[str, Any]) -> PeftSection:
        """The run's ``peft:`` section; refused for a run without adapters, or without a base checkpoint for them."""
        if self.recipe.peft is None:
            raise NlpkitError(f"--adapter: {self.path} is not a LoRA run (its recipe has no peft: section); "
                              f"export the model with --merge")
        if self.recipe.backbone.pretrained is None or not isinstance(source.get("folder"), str):
            raise NlpkitError(f"--adapter: {self.path} trained its adapters on a backbone it built itself (no "
                              f"backbone.pretrained), so no checkpoint can take them; export the model with --merge")
        return self.recipe.peft

    def evaluate(self, data: str | Path, format: str | None = None, batch_size: int = 32) -> dict[str, float]:
        """Score the model on a labelled file with the task's loss and metrics.

        Args:
            data: a file with the columns of the run's training data.
            format: a data format name; by default the file's extension when it
                names one, else the format of the run's training data.
            batch_size: examples per forward pass.

        Returns:
            ``loss`` and each metric, as computed during training.
        """
        import dataclasses

        import pytorch_lightning as pl
        from torch.utils.data import DataLoader

        from nlpkit.data import evaluation_order, load_splits, select_task_columns
        from nlpkit.training.module import TaskModule
        from nlpkit.training.trainer import quiet_lightning

        path = Path(data)
        if not path.is_file():
            raise NlpkitError(f"--data: file '{data}' does not exist")
        formats = self.plugin_set.registries.data_formats
        # The file's extension when it names a format, else the format the run trained on
        # (CoNLL files end in .txt).
        suffix = path.suffix.lstrip(".").lower()
        fmt = format or (suffix if suffix in formats else self.recipe.data.format or suffix)
        if format is None and self.recipe.data.format == "chat" and suffix in ("json", "jsonl"):
            fmt = "chat"  # the run's conversations, in whichever layout its recipe mapped (data.columns)
        section = dataclasses.replace(self.recipe.data, train=None, validation=None, test=str(path), hub=None, format=fmt,
                                      validation_split=None)
        splits = select_task_columns(load_splits(section, formats), section, type(self.task))
        self.task.check_split(str(path), splits["test"])
        quiet_lightning()
        features = self.task.prepare(splits["test"])
        order = evaluation_order([self.task.feature_length(f) for f in features])  # as training's validation
        loader = DataLoader(features, batch_size=batch_size, sampler=order, collate_fn=self.task.collate)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        (results,) = trainer.test(TaskModule(self.task, self.model), dataloaders=loader, verbose=False)
        return {key.removeprefix("test_"): float(value) for key, value in results.items()}


class PretrainedModel:
    """A pretrained Hugging Face-format folder used as it is.

    Attributes:
        backbone: the backbone module with the folder's weights, in eval mode.
        tokenizer: the folder's tokenizer.
        path: the folder.
    """

    def __init__(self, path: Path, dtype: torch.dtype | str | None = None, registries: Registries | None = None) -> None:
        from nlpkit import tokenization
        from nlpkit.backbones.checkpoints import build_from_checkpoint, load_checkpoint
        from nlpkit.backbones.checkpoints.sentence_transformers import read_sentence_pooling

        self.path = path
        loaded = load_checkpoint(path, registries=registries)
        self.backbone = build_from_checkpoint(loaded, dtype)
        pack_for_cpu_inference(self.backbone, release=True)  # inference only: one copy of the weights
        self.has_lm_head = config_of(self.backbone).kind != "encoder" and "lm_head.weight" not in loaded.fresh
        self.pooling = read_sentence_pooling(path)
        self.tokenizer = tokenization.from_pretrained(path, max_length=self.pooling.max_length)

    def generate(self, prompts: str | Sequence[str], *, stream: Callable[[str], None] | None = None,
                 **options: Any) -> str | list[str] | list[list[str]]:
        """Continue prompts with a pretrained decoder (or translate with an encoder-decoder).

        Prompts are encoded as ``transformers`` would (a Llama tokenizer adds
        BOS); defaults come from the folder's ``generation_config.json``, else
        its ``config.json``. Arguments and result as :meth:`LoadedModel.generate`.

        Raises:
            NlpkitError: the folder holds an encoder or no LM head weights, an
                unknown option, a prompt longer than the context window.
        """
        from nlpkit.generation import generate

        return generate(self.backbone, self.tokenizer, prompts, defaults=self._generation_defaults("generate"),
                        stream=stream, **options)

    def chat(self, messages: Any, *, stream: Callable[[str], None] | None = None, **options: Any) -> Any:
        """The assistant's reply through the folder's chat template; arguments and result as :meth:`LoadedModel.chat`.

        Raises:
            NlpkitError: the folder holds no decoder with an LM head, or its
                tokenizer has no chat template.
        """
        from nlpkit.chat import reply

        defaults = self._generation_defaults("chat")
        if config_of(self.backbone).kind != "decoder":
            raise NlpkitError(f"chat needs a decoder; {self.path} holds an encoder-decoder (translate it instead)")
        return reply(self.backbone, self.tokenizer, messages, defaults=defaults, stream=stream, **options)

    def _generation_defaults(self, verb: str) -> dict[str, Any]:
        """The folder's decoding defaults (generation_config.json, else config.json), its tokenizer's special ids after."""
        from nlpkit.backbones.checkpoints import generation_defaults

        if not self.has_lm_head:
            what = "an encoder" if config_of(self.backbone).kind == "encoder" else "no LM head weights (saved from a base class)"
            raise NlpkitError(f"{verb} needs a decoder or encoder-decoder with an LM head; {self.path} holds {what}")
        defaults = generation_defaults(self.path)
        for key, role in (("eos_token_id", "eos"), ("pad_token_id", "pad"), ("bos_token_id", "bos")):
            if defaults.get(key) is None and self.tokenizer.token_id(role) is not None:
                defaults[key] = self.tokenizer.token_id(role)
        return defaults

    def translate(self, texts: str | Sequence[str], *, batch_size: int = 32,
                  **options: Any) -> str | list[str] | list[list[str]]:
        """Translate (or summarise) with a pretrained encoder-decoder folder (BART, Marian, T5).

        A T5 folder needs its task prefix in the text (``"translate English to
        German: ..."``); nothing is added silently. Options and result as
        :meth:`LoadedModel.generate`.

        Raises:
            NlpkitError: the folder holds no encoder-decoder with an LM head.
        """
        if config_of(self.backbone).kind != "encoder-decoder":
            raise NlpkitError(f"translate needs an encoder-decoder; {self.path} holds a {config_of(self.backbone).kind}")
        return _in_batches(self.generate, texts, batch_size, options)

    @torch.inference_mode()
    def embed(self, texts: str | Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Sentence embeddings, pooled and normalised as the folder's sentence-transformers files say.

        Args:
            texts: a text, or a list of texts.
            batch_size: texts per forward pass.

        Returns:
            ``(hidden,)`` for one text, ``(len(texts), hidden)`` for a list (float32).

        Raises:
            NlpkitError: the folder holds no encoder.
        """
        from nlpkit.tasks import pad

        if config_of(self.backbone).kind != "encoder":
            raise NlpkitError(f"embed needs an encoder; {self.path} holds a {config_of(self.backbone).kind}")
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else list(texts)
        pad_id = self.tokenizer.pad_token_id
        chunks = []
        for start in range(0, len(items), batch_size):
            encodings = self.tokenizer.encode_batch(items[start : start + batch_size])
            ids = pad([e.ids for e in encodings], pad_id)
            mask = pad([[1] * len(e.ids) for e in encodings], 0)
            hidden = self.backbone(ids, attention_mask=mask).last_hidden_state.float()
            chunks.append(self._pool(hidden, mask))
        embeddings = torch.cat(chunks) if chunks else torch.empty(0, config_of(self.backbone).hidden_size)
        if self.pooling.normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
        return embeddings[0] if single else embeddings

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # hidden: (batch, seq, hidden); mask: (batch, seq), as sentence-transformers' Pooling module.
        weights = mask[..., None].to(hidden.dtype)
        if self.pooling.mode == "cls":
            return hidden[:, 0]
        if self.pooling.mode == "max":
            return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        total, count = (hidden * weights).sum(1), weights.sum(1).clamp(min=1e-9)
        return total / (count.sqrt() if self.pooling.mode == "mean_sqrt_len" else count)


# What makes a folder a model to transformers and to nlpkit: export refuses to mix its files with these.
_MODEL_FILE_PATTERNS = ("config.json", "adapter_config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "*.bin",
                        "*.bin.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "*.model", "*.spm")


def _model_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted({path for pattern in _MODEL_FILE_PATTERNS for path in folder.glob(pattern) if path.is_file()})


def _in_batches(generate: Callable[..., Any], texts: str | Sequence[str], batch_size: int,
                options: dict[str, Any]) -> Any:
    """``generate`` over ``texts`` in batches of ``batch_size`` (a single text as it is)."""
    if isinstance(texts, str):
        return generate(texts, **options)
    if batch_size < 1:
        raise NlpkitError(f"batch_size: expected an integer >= 1, got {batch_size}")
    items = list(texts)
    out: list[Any] = []
    for start in range(0, len(items), batch_size):
        out.extend(generate(items[start : start + batch_size], **options))
    return out


def load(path: str | Path, plugins: Iterable[str] = (), blocked: Iterable[str] = (),
         plugin_set: PluginSet | None = None, dtype: torch.dtype | str | None = None) -> LoadedModel | PretrainedModel:
    """Load a trained run folder, or a pretrained Hugging Face-format folder.

    Args:
        path: a run folder (``nlpkit run`` prints it; ``RunResult.run_dir``), or
            a pretrained folder (``config.json`` and weights).
        plugins: extra plugin modules (a run of a task from such a plugin needs it).
        blocked: plugin names not to load.
        plugin_set: an already loaded plugin set (the CLI passes its own).
        dtype: the weights' dtype for inference (``"bfloat16"``, ``torch.bfloat16``);
            None keeps float32. Float32 weights on the CPU are kept in
            oneDNN's packed layout instead of the usual one, which makes
            decoding 1.2-2x faster at no extra memory
            (``nlpkit.backbones.layers.pack_for_cpu_inference``); the usual
            layout comes back for what needs it (``export``, training the
            model further, ``state_dict``).

    Returns:
        For a run folder, a :class:`LoadedModel` with the verbs of its task
        (``predict``, ``evaluate``, ``export``, and ``generate`` for a task
        that generates); for a pretrained folder, a :class:`PretrainedModel`
        (an encoder's ``embed``, a decoder's or encoder-decoder's ``generate``).

    Raises:
        NlpkitError: not a run folder, an unknown format version, a task whose plugin is missing.
    """
    from nlpkit.assembly import restore

    if not (Path(path) / RUN_FILE).is_file() and (Path(path) / "config.json").is_file():
        # A family of a plugin named here must be found; else the installed plugins' (loaded on demand).
        named = plugin_set or (load_plugins(plugins, blocked) if plugins or blocked else None)
        return PretrainedModel(Path(path), dtype, named.registries if named is not None else None)
    run = RunFolder.open(path)
    plugin_set = plugin_set or load_plugins(plugins, blocked)
    restored = restore(run, plugin_set.registries)
    if dtype is not None:
        restored.model.to(_dtype(dtype))
    pack_for_cpu_inference(restored.model, release=True)  # inference only: one copy of the weights
    return LoadedModel(restored.task, restored.model, restored.recipe, run.path, plugin_set)


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise NlpkitError(f"dtype: expected a floating-point type such as float32 or bfloat16, got {dtype!r}")
    return found
