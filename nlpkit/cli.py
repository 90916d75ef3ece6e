"""The ``nlpkit`` command: parses arguments and dispatches, one function per verb.

User errors (:class:`nlpkit.NlpkitError`) print one line on stderr and exit
with code 2; there is no traceback for a mistake in a recipe, file or option.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from nlpkit._files import read_text
from nlpkit.errors import NlpkitError
from nlpkit.scaffold import KINDS

__all__ = ["main"]

EXIT_USER_ERROR = 2


def cmd_run(args: argparse.Namespace) -> int:
    """Validate a recipe, train it into a new run folder and print the metrics."""
    from nlpkit.recipe import load_recipe
    from nlpkit.training.trainer import train

    plugin_set = _plugins(args)
    recipe = load_recipe(args.recipe, args.overrides, plugin_set.registries)
    result = train(recipe, plugin_set, resume=args.resume, quiet=args.quiet)
    if not result.primary:  # the other processes of a multi-process run stay quiet
        return 0
    print(f"run folder: {result.run_dir}")
    for key, value in result.metrics.items():
        print(f"{key:>20} {value:.4f}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a recipe and its data (schema, plugins, files, columns, labels) without training."""
    from nlpkit.recipe import load_recipe
    from nlpkit.assembly import prepare_inputs

    plugin_set = _plugins(args)
    recipe = load_recipe(args.recipe, args.overrides, plugin_set.registries)
    inputs = prepare_inputs(recipe, plugin_set.registries)
    config = inputs.backbone_config
    print(f"recipe {args.recipe}: ok")
    print(f"  task       {recipe.task} ({plugin_set.registries.tasks.owner(recipe.task)})")
    origin = recipe.backbone.pretrained or recipe.backbone.preset or "custom"
    print(f"  backbone   {origin}: {config.kind}, {config.num_layers} layers, "
          f"hidden {config.hidden_size}, vocabulary {config.vocab_size}")
    print("  data       " + ", ".join(f"{name} {len(split)} rows" for name, split in inputs.splits.items()))
    for key, value in inputs.task.state().items():
        print(f"  {key:<10} {_summary(value)}")
    print(f"  output     {recipe.output_dir}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List the runs in OUTPUT_DIR, newest first: name, task, backbone, status, best monitored metric, wall time.

    Status: running (its process lives), finished, interrupted (its process
    is gone without finishing: continue it with --resume), failed (it stopped
    on an error; run.json says which). A run of another machine shows running
    while its heartbeat is under 10 minutes old.
    """
    from nlpkit.run_table import list_runs, render_table, rows_as_json

    rows = list_runs(args.output_dir)
    if args.json:
        print(rows_as_json(rows))
    elif not rows:
        print(f"no runs in {args.output_dir}")
    else:
        from rich.console import Console

        console = Console()
        # Piped into a file or another program: whole lines, not cut to 80 columns.
        (console if console.is_terminal else Console(width=200, no_color=True)).print(render_table(rows))
    return 0


def _read_jsonl(path: str) -> list[tuple[int, Any]]:
    """The rows of a JSON-lines file with their line numbers (blank lines skipped)."""
    rows = []
    for number, line in enumerate(read_text(path, "--input file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise NlpkitError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return rows


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer texts or examples with a trained run; one JSON line out per input.

    Inputs, each answered as nlpkit.load(RUN).predict answers it:
      TEXT                  a text: the task's first input field
      '{"text": "a", "text_pair": "b"}'
                            a TEXT that starts with '{': one example, a JSON
                            object of the task's fields
      --field NAME=VALUE    one example, field by field: repeat it for each
                            field (split at the first '='; values are text);
                            not together with TEXT
      --input FILE.jsonl    one input a line: a JSON string, or an object of
                            the task's fields

    A TEXT that is a JSON list, or starts with '{' but is not valid JSON, is an
    error: give such a text as it is with --field. --field and a JSON TEXT
    refuse a field the task does not take; --input rows may hold other keys
    (an id), which are ignored.
    """
    fields = _field_example(args.fields)
    if fields and args.texts:
        raise NlpkitError("predict: give TEXT arguments or --field NAME=VALUE, not both "
                          "(--field gives one example, field by field)")
    inputs: list[Any] = []
    names: list[str] = []
    strict: list[int] = []  # the inputs whose field names must all be the task's (--field, JSON TEXT)
    if fields:
        strict.append(len(inputs))
        inputs.append(fields)
        names.append("--field")
    for number, text in enumerate(args.texts, start=1):
        item = _text_argument(text, f"argument {number}")
        if isinstance(item, dict):
            strict.append(len(inputs))
        inputs.append(item)
        names.append(f"argument {number}")
    if args.input:
        for number, row in _read_jsonl(args.input):
            inputs.append(row)
            names.append(f"{args.input}:{number}")
    if not inputs:
        raise NlpkitError("predict: give texts as arguments, --field NAME=VALUE or --input FILE.jsonl")
    model = _load_run(args)
    for index in strict:
        _check_field_names(model.task, inputs[index], names[index])
    model.check_inputs(inputs, names)
    for answer in model.predict(inputs, batch_size=args.batch_size):
        print(json.dumps(answer, ensure_ascii=False))
    return 0


def _summary(value: Any, shown: int = 12) -> str:
    """A task state entry in one line: a label list as its labels (the first few), a list of records by its length."""
    if not isinstance(value, list):
        return str(value)
    if any(isinstance(item, (list, dict)) for item in value):
        return f"{len(value)} entries"  # the validation conversations the generation task keeps for its scores
    more = f" ... ({len(value)} in all)" if len(value) > shown else ""
    return ", ".join(map(str, value[:shown])) + more


def _field(text: str) -> tuple[str, str]:
    """``--field NAME=VALUE`` -> (NAME, VALUE), split at the first '='."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected a field name before '=', got {text!r}")
    return name.strip(), value


def _field_example(fields: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The one example that ``--field`` arguments give (empty when there are none)."""
    example: dict[str, str] = {}
    for name, value in fields:
        if name in example:
            raise NlpkitError(f"--field: field '{name}' given twice")
        example[name] = value
    return example


def _text_argument(text: str, where: str) -> Any:
    """A TEXT argument: a JSON object is an example of the task's fields, anything else a text."""
    start = text.lstrip()[:1]
    try:
        value = json.loads(text) if start in ("{", "[") else text
    except json.JSONDecodeError as error:
        if start == "[":  # "[Reuters] ..." is a text
            return text
        raise NlpkitError(f"{where}: starts with '{{' but is not a JSON object ({error.msg} at character "
                          f"{error.pos + 1}); give a text that starts with '{{' as --field NAME=TEXT") from None
    if isinstance(value, list):
        raise NlpkitError(f"{where}: a JSON list, not an object of the task's fields; give one TEXT or JSON object "
                          f"per example, or --input FILE.jsonl (a text that starts with '[': --field NAME=TEXT)")
    return value


def _check_field_names(task: Any, example: dict[str, Any], where: str) -> None:
    """Refuse a field name that the task does not take, suggesting the closest one."""
    from nlpkit.registry import suggest

    known = [*task.input_columns, *task.optional_columns]
    for name in example:
        if name not in known:
            optional = f"; optional: {', '.join(task.optional_columns)}" if task.optional_columns else ""
            raise NlpkitError(f"{where}: unknown field '{name}'{suggest(str(name), known)} (task '{task.name}' "
                              f"takes: {', '.join(task.input_columns)}{optional})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a trained run on a labelled file; prints the metrics as JSON."""
    model = _load_run(args)
    print(json.dumps(model.evaluate(args.data, format=args.format, batch_size=args.batch_size), indent=2))
    return 0


# `nlpkit generate` flags -> decoding options (None: not given, the model's default holds).
_GENERATE_FLAGS = (
    ("max_new_tokens", int, "tokens to generate at most"),
    ("do_sample", None, "sample instead of taking the most likely token"),
    ("temperature", float, "sampling temperature"),
    ("top_k", int, "sample among the k most likely tokens (0: all)"),
    ("top_p", float, "sample among the most likely tokens holding this probability mass"),
    ("min_p", float, "drop tokens less likely than this times the most likely one"),
    ("num_beams", int, "beam search with this many beams"),
    ("num_return_sequences", int, "continuations per prompt"),
    ("repetition_penalty", float, "penalise tokens already present (1.0: off)"),
    ("no_repeat_ngram_size", int, "never repeat an n-gram of this size"),
    ("seed", int, "seed of the sampling, for a reproducible output"),
)


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue prompts with a trained run or a pretrained decoder folder; one prompt streams as it is generated."""
    from nlpkit.inference import load

    options = {name: getattr(args, name) for name, _, _ in _GENERATE_FLAGS if getattr(args, name) is not None}
    if args.stop:
        options["stop"] = args.stop
    model = load(args.path, plugin_set=_plugins(args), dtype=args.dtype)
    if not hasattr(model, "generate"):
        raise NlpkitError(f"{args.path}: this model cannot generate text")
    prompts = list(args.prompts)
    if args.chat:  # each prompt is a user's message, answered through the model's chat template
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        if args.system:
            conversations = [[{"role": "system", "content": args.system}, *c] for c in conversations]

        def respond(batch: Any, **extra: Any) -> Any:
            answers = model.chat(batch, **extra, **options)
            return [[m["content"] for m in a] if isinstance(a, list) else a["content"] for a in answers]

        run = respond
    else:
        run, conversations = (lambda batch, **extra: model.generate(batch, **extra, **options)), prompts
    if len(prompts) == 1 and options.get("num_beams", 1) == 1 and options.get("num_return_sequences", 1) == 1:
        run(conversations[:1], stream=lambda piece: print(piece, end="", flush=True))
        print()
        return 0
    for prompt, answer in zip(prompts, run(conversations)):
        for text in answer if isinstance(answer, list) else [answer]:
            print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with a generation run or a pretrained decoder folder: type a message, read the reply, /exit to end.

    Replies stream as they are generated and the conversation is kept, so each
    turn sees the earlier ones; the model's chat template renders it.
    """
    from nlpkit.chat import interactive
    from nlpkit.inference import load

    options = {name: getattr(args, name) for name, _, _ in _GENERATE_FLAGS if getattr(args, name) is not None}
    model = load(args.path, plugin_set=_plugins(args), dtype=args.dtype)
    if not hasattr(model, "chat"):
        raise NlpkitError(f"{args.path}: this model cannot chat (it needs a decoder's generation run or folder)")
    model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=1)  # no template, wrong model: say so now
    try:
        import readline  # noqa: F401  # line editing and history for input(), where the platform has it
    except ImportError:
        pass
    interactive(lambda history, stream: model.chat(history, stream=stream, **options), system=args.system)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate texts (arguments, or a file's lines with --input) with a run or a pretrained seq2seq folder."""
    from nlpkit.inference import load

    options = {name: getattr(args, name) for name, _, _ in _GENERATE_FLAGS if getattr(args, name) is not None}
    texts = list(args.texts)
    if args.input:
        texts.extend(_read_lines(args.input))
    if not texts:
        raise NlpkitError("translate: give texts as arguments or --input FILE (one text a line)")
    model = load(args.path, plugin_set=_plugins(args), dtype=args.dtype)
    if not hasattr(model, "translate"):
        raise NlpkitError(f"{args.path}: this model cannot translate")
    for answer in model.translate(texts, batch_size=args.batch_size, **options):
        # One line per input, so the output lines up with the input file; n-best as JSON lists.
        print(json.dumps(answer, ensure_ascii=False) if isinstance(answer, list) else answer.replace("\n", " "))
    return 0


def _read_lines(path: str) -> list[str]:
    lines = read_text(path, "--input file").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise NlpkitError(f"{path}:{number}: empty line (one text a line)")
    return [line.rstrip("\r") for line in lines]


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a run or a pretrained folder over HTTP (LitServe): /v1/predict, /v1/completions, /v1/chat/completions,
    /v1/embeddings, /v1/translate.

    Concurrent requests are batched (--max-batch-size, --batch-timeout-ms);
    GET /health shows readiness and the batch sizes served. SIGTERM or Ctrl+C
    finishes the requests in flight, then stops.
    """
    try:
        from nlpkit.serving import ServeOptions, serve
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("litserve", "fastapi"):
            raise
        raise NlpkitError(f'serve needs LitServe ({error.name} is not installed): pip install "nlpkit[serve]"') from None

    serve(ServeOptions(path=args.path, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                       batch_timeout_ms=args.batch_timeout_ms, workers=args.workers, dtype=args.dtype,
                       api_key=args.api_key, max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
                       plugins=list(args.plugin), blocked=list(args.no_plugin)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trained run as a Hugging Face-format folder that transformers loads (or a PEFT adapter folder)."""
    model = _load_run(args)
    print(f"exported to {model.export(args.out, format=args.format, overwrite=args.overwrite)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's report: RUN_DIR/report.html (self-contained) and its figures in RUN_DIR/report/.

    The report shows the training and validation loss, every validation
    metric, the learning rate and the throughput against steps, the final
    metrics, what the task shows of the best model's errors on the validation
    split (from the predictions the run saved), the recipe and the versions.
    """
    from nlpkit.report import write_report

    print(f"report: {write_report(args.run_dir, _plugins(args))}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List each plugin (name, module, distribution, version) and what it registered."""
    plugin_set = _plugins(args)
    for info in plugin_set.plugins:
        source = f"{info.distribution} {info.version}" if info.distribution else "--plugin"
        print(f"{info.name}: module {info.module}, distribution {source}")
        for table, names in info.registered.items():
            print(f"  {table.replace('_', ' ')}: {', '.join(names)}")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """Write a new task plugin package: the task, its test, a tiny recipe and its data.

    Writes the folder DIR/NAME (refused if it exists and is not empty); for
    NAME sentiment:
      pyproject.toml           distribution nlpkit-sentiment, with the entry
                               point sentiment = "nlpkit_sentiment"
      nlpkit_sentiment/        the task (task: sentiment in recipes), modelled
                               on nlpkit's own plugins
      tests/test_task.py       nlpkit.testing.check_task on the task
      recipe.yaml, data/       a tiny model trained from scratch in seconds
      README.md                what to edit
    NAME is lowercase letters, digits and single underscores. Kinds:
      sequence     a label per text or text pair (encoder), like classification
      tokens       a tag per word of pre-split text (encoder), like a simple NER
      generation   a causal language model that generates text (decoder)
    It works as written: cd DIR/NAME && pip install -e . && python -m pytest &&
    nlpkit run recipe.yaml
    """
    from nlpkit.scaffold import write_plugin

    def taken() -> dict[str, str]:  # called once the name and folder are checked: it loads the plugins
        plugin_set = _plugins(args)
        tasks = plugin_set.registries.tasks
        used = {info.name: f"the name of plugin module {info.module}" for info in plugin_set.plugins}
        used.update({task: f"task '{task}' of plugin '{tasks.owner(task)}'" for task in tasks.names()})
        return used

    folder = write_plugin(args.name, args.kind, args.output, taken=taken)
    print(f"wrote the {args.kind} task plugin '{args.name}' into {folder}; to try it:")
    print(f"  cd {folder}")
    print("  pip install -e .          # nlpkit finds the task through the package's entry point")
    print("  python -m pytest          # nlpkit.testing.check_task on the task")
    print("  nlpkit run recipe.yaml    # a tiny model, in seconds")
    print(f"and {folder / 'README.md'} says what to edit")
    return 0


def _load_run(args: argparse.Namespace) -> Any:
    from nlpkit.inference import load
    from nlpkit.runs import RUN_FILE

    folder = Path(args.run_dir)
    if not (folder / RUN_FILE).is_file() and (folder / "config.json").is_file():
        raise NlpkitError(f"{args.run_dir} is a pretrained folder, not a run folder: {args.verb} needs a trained run "
                          f"(train one with a recipe whose backbone.pretrained names this folder)")
    return load(folder, plugin_set=_plugins(args))


def _plugins(args: argparse.Namespace) -> Any:
    from nlpkit.plugins import load_plugins

    return load_plugins(args.plugin, args.no_plugin)


def _add_decoding_flags(sub: argparse.ArgumentParser) -> None:
    for name, kind, text in _GENERATE_FLAGS:
        flag = "--" + name.replace("_", "-")
        if kind is None:
            sub.add_argument(flag, action="store_true", default=None, help=text)
        else:
            sub.add_argument(flag, type=kind, default=None, help=text)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (not the verb's whole usage) and exit code 2."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USER_ERROR, f"nlpkit: error: {message} (see: {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="also load this plugin module")
    common.add_argument("--no-plugin", action="append", default=[], metavar="NAME", help="do not load this plugin")
    parser = _Parser(prog="nlpkit", description="Plugin-based NLP tasks on PyTorch Lightning.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, function: Any) -> argparse.ArgumentParser:
        doc = inspect.cleandoc(function.__doc__)
        # A docstring of several lines (usage examples) is shown as it is written.
        formatter = argparse.RawDescriptionHelpFormatter if "\n" in doc else argparse.HelpFormatter
        sub = verbs.add_parser(name, parents=[common], help=doc.splitlines()[0], description=doc,
                               formatter_class=formatter)
        sub.set_defaults(function=function)
        return sub

    for name, function in (("run", cmd_run), ("check", cmd_check)):
        sub = verb(name, function)
        sub.add_argument("recipe", help="recipe YAML file")
        sub.add_argument("overrides", nargs="*", metavar="key.sub=value", help="change a recipe field")
        if name == "run":
            sub.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
            sub.add_argument("--quiet", action="store_true", help="print only the run folder and the final metrics")
    sub = verb("runs", cmd_runs)
    sub.add_argument("output_dir", nargs="?", default="runs", metavar="OUTPUT_DIR",
                     help="the folder that holds the run folders (default: runs)")
    sub.add_argument("--json", action="store_true", help="print the runs as a JSON list, for scripts")
    sub = verb("predict", cmd_predict)
    sub.add_argument("run_dir", help="a run folder")
    sub.add_argument("texts", nargs="*", metavar="TEXT",
                     help="texts to answer; a TEXT that starts with '{' is a JSON object of the task's fields")
    sub.add_argument("--field", dest="fields", action="append", default=[], type=_field, metavar="NAME=VALUE",
                     help="a field of the one example to answer (repeat for each field; not with TEXT)")
    sub.add_argument("--input", metavar="FILE.jsonl", help="JSON lines: a string or an object of the task's fields each")
    sub.add_argument("--batch-size", type=_positive_int, default=32)
    sub = verb("evaluate", cmd_evaluate)
    sub.add_argument("run_dir", help="a run folder")
    sub.add_argument("--data", required=True, metavar="FILE", help="a labelled file with the training data's columns")
    sub.add_argument("--format", default=None, help="data format (default: the file extension, else the run's training format)")
    sub.add_argument("--batch-size", type=_positive_int, default=32)
    sub = verb("generate", cmd_generate)
    sub.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", help="a run folder, or a pretrained Hugging Face-format folder")
    sub.add_argument("prompts", nargs="+", metavar="PROMPT", help="texts to continue")
    _add_decoding_flags(sub)
    sub.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end a continuation at this text")
    sub.add_argument("--chat", action="store_true",
                     help="answer each prompt as a user's message, through the model's chat template")
    sub.add_argument("--system", default=None, metavar="TEXT", help="with --chat: a system message before each prompt")
    sub.add_argument("--dtype", default=None, help="weights' dtype for inference (float32, bfloat16)")
    sub = verb("chat", cmd_chat)
    sub.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", help="a generation run, or a pretrained decoder folder")
    sub.add_argument("--system", default=None, metavar="TEXT", help="a system message that opens the conversation")
    _add_decoding_flags(sub)
    sub.add_argument("--dtype", default=None, help="weights' dtype for inference (float32, bfloat16)")
    sub = verb("translate", cmd_translate)
    sub.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", help="a translation run, or a pretrained seq2seq folder")
    sub.add_argument("texts", nargs="*", metavar="TEXT", help="texts to translate")
    sub.add_argument("--input", metavar="FILE", help="translate every line of this file (one output line each)")
    _add_decoding_flags(sub)
    sub.add_argument("--batch-size", type=_positive_int, default=32)
    sub.add_argument("--dtype", default=None, help="weights' dtype for inference (float32, bfloat16)")
    sub = verb("serve", cmd_serve)
    sub.add_argument("path", metavar="RUN_OR_FOLDER", help="a run folder, or a pretrained Hugging Face-format folder")
    sub.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this machine only)")
    sub.add_argument("--port", type=_positive_int, default=8000)
    sub.add_argument("--max-batch-size", type=_positive_int, default=8,
                     help="requests answered together by one model call (default: 8; 1 turns batching off)")
    sub.add_argument("--batch-timeout-ms", type=_non_negative_float, default=None,
                     help="how long a free worker collects requests for a batch, in milliseconds (default: 10 "
                          "for a model that generates text, else 1; 0 takes only those waiting, but polls without "
                          "pause: a busy core)")
    sub.add_argument("--workers", type=_positive_int, default=1, help="model copies, each in its own process (default: 1)")
    sub.add_argument("--dtype", default=None, help="weights' dtype for inference (float32, bfloat16)")
    sub.add_argument("--api-key", default=None, metavar="KEY",
                     help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    sub.add_argument("--max-queue", type=_positive_int, default=256,
                     help="requests waiting for an answer; one more is refused with 503 (default: 256)")
    sub.add_argument("--max-body-bytes", type=_positive_int, default=4 * 1024 * 1024,
                     help="a larger request body is refused with 413 (default: 4 MiB)")
    sub = verb("export", cmd_export)
    sub.add_argument("run_dir", help="a run folder")
    sub.add_argument("out", help="the folder to write")
    sub.add_argument("--format", default="hf", choices=("hf", "peft"),
                     help="hf: a Hugging Face-format folder (the default); peft: a LoRA run's PEFT adapter folder")
    kept = sub.add_mutually_exclusive_group()
    kept.add_argument("--merge", dest="format", action="store_const", const="hf",
                      help="a LoRA run's adapters merged into the weights (the same as --format hf)")
    kept.add_argument("--adapter", dest="format", action="store_const", const="peft",
                      help="a LoRA run's adapters and head as a PEFT adapter folder for its base checkpoint "
                           "(the same as --format peft)")
    sub.add_argument("--overwrite", action="store_true", help="replace the model a folder already holds")
    sub = verb("report", cmd_report)
    sub.add_argument("run_dir", help="a run folder")
    verb("plugins", cmd_plugins)
    sub = verb("new-plugin", cmd_new_plugin)
    sub.add_argument("name", metavar="NAME", help="the task's name, e.g. sentiment (package nlpkit_sentiment)")
    sub.add_argument("--kind", choices=KINDS, default="sequence", help="what the task does (default: sequence)")
    sub.add_argument("--output", default=".", metavar="DIR", help="the folder that receives NAME/ (default: .)")
    return parser


def _configure_logging(quiet: bool) -> None:
    """Messages as they are on standard error; in a terminal, above the progress bar.

    A live progress bar redraws the last lines of the terminal: messages then
    go through ``rich``'s handler on the bar's console, which prints them above
    the bar instead of through it. ``quiet``: only warnings and errors.
    """
    handlers: list[logging.Handler] | None = None
    if sys.stdout.isatty() and sys.stderr.isatty():
        from rich import get_console
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        handlers = [RichHandler(console=get_console(), show_time=False, show_level=False, show_path=False,
                                highlighter=NullHighlighter())]
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers)
    logging.getLogger("nlpkit").setLevel(logging.WARNING if quiet else logging.NOTSET)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nlpkit`` console script; returns the exit code (2: a user error)."""
    try:
        code = _run_verb(argv)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return code
    except BrokenPipeError:  # stdout piped into a reader that stopped early (nlpkit runs --json | head)
        # Python flushes stdout again at exit; pointing it at /dev/null keeps that flush from a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a shell reports for a process SIGPIPE ended


def _run_verb(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a bad argument (code 2, one line printed) or --help (0)
        return int(stop.code or 0)
    _configure_logging(quiet=getattr(args, "quiet", False))
    try:
        return args.function(args)
    except NlpkitError as error:
        message = " ".join(str(error).split())
        print(f"nlpkit: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("nlpkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
