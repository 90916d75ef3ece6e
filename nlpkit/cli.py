"""The ``nlpkit`` command: parses arguments and dispatches, one function per verb.

User errors (:class:`nlpkit.NlpkitError`) print one line on stderr and exit
with code 2; there is no traceback for a mistake in a recipe, file or option.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from nlpkit.errors import NlpkitError

__all__ = ["main"]

EXIT_USER_ERROR = 2


def cmd_run(args: argparse.Namespace) -> int:
    """Validate a recipe, train it into a new run folder and print the metrics."""
    from nlpkit.recipe import load_recipe
    from nlpkit.training.trainer import train

    plugin_set = _plugins(args)
    recipe = load_recipe(args.recipe, args.overrides, plugin_set.registries)
    result = train(recipe, plugin_set, resume=args.resume)
    if not result.primary:  # the other processes of a multi-process run stay quiet
        return 0
    print(f"run folder: {result.run_dir}")
    for key, value in result.metrics.items():
        print(f"{key:>20} {value:.4f}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a recipe and its data (schema, plugins, files, columns, labels) without training."""
    from nlpkit.recipe import load_recipe
    from nlpkit.training.trainer import prepare_inputs

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
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"  {key:<10} {shown}")
    print(f"  output     {recipe.output_dir}")
    return 0


def _read_jsonl(path: str) -> list[Any]:
    file = Path(path)
    if not file.is_file():
        raise NlpkitError(f"--input: file '{path}' does not exist")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise NlpkitError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return rows


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer texts (arguments) or JSON lines (``--input``) with a trained run; JSON lines out."""
    inputs: list[Any] = list(args.texts)
    if args.input:
        inputs.extend(_read_jsonl(args.input))
    if not inputs:
        raise NlpkitError("predict: give texts as arguments or --input FILE.jsonl")
    model = _load_run(args)
    for answer in model.predict(inputs, batch_size=args.batch_size):
        print(json.dumps(answer, ensure_ascii=False))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a trained run on a labelled file; prints the metrics as JSON."""
    model = _load_run(args)
    print(json.dumps(model.evaluate(args.data, format=args.format, batch_size=args.batch_size), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trained run as a Hugging Face-format folder that transformers loads."""
    model = _load_run(args)
    print(f"exported to {model.export(args.out, format=args.format)}")
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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="also load this plugin module")
    common.add_argument("--no-plugin", action="append", default=[], metavar="NAME", help="do not load this plugin")
    parser = argparse.ArgumentParser(prog="nlpkit", description="Plugin-based NLP tasks on PyTorch Lightning.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, function: Any) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, parents=[common], help=function.__doc__.splitlines()[0], description=function.__doc__)
        sub.set_defaults(function=function)
        return sub

    for name, function in (("run", cmd_run), ("check", cmd_check)):
        sub = verb(name, function)
        sub.add_argument("recipe", help="recipe YAML file")
        sub.add_argument("overrides", nargs="*", metavar="key.sub=value", help="change a recipe field")
        if name == "run":
            sub.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    sub = verb("predict", cmd_predict)
    sub.add_argument("run_dir", help="a run folder")
    sub.add_argument("texts", nargs="*", metavar="TEXT", help="texts to answer")
    sub.add_argument("--input", metavar="FILE.jsonl", help="JSON lines: a string or an object of the task's fields each")
    sub.add_argument("--batch-size", type=int, default=32)
    sub = verb("evaluate", cmd_evaluate)
    sub.add_argument("run_dir", help="a run folder")
    sub.add_argument("--data", required=True, metavar="FILE", help="a labelled file with the training data's columns")
    sub.add_argument("--format", default=None, help="data format (default: the file extension, else the run's training format)")
    sub.add_argument("--batch-size", type=int, default=32)
    sub = verb("export", cmd_export)
    sub.add_argument("run_dir", help="a run folder")
    sub.add_argument("out", help="the folder to write")
    sub.add_argument("--format", default="hf", help="export format (hf: a Hugging Face-format folder)")
    verb("plugins", cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nlpkit`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
