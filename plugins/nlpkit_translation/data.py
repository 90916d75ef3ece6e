"""Parallel text as two line-aligned files: ``train.en`` beside ``train.de``.

A recipe names the source file and the target language::

    data:
      format: parallel
      train: data/train.en          # the source side; its suffix is the source language
      validation: data/val.en
      options: {target: de}         # read data/train.de and data/val.de beside them

Line ``i`` of one file translates line ``i`` of the other. Rows become
``{"source": ..., "target": ...}``. TSV/CSV/JSONL files with one column per
side need no special format: name the columns with ``data.columns``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nlpkit import NlpkitError

if TYPE_CHECKING:
    import datasets


def target_path(source: Path, target: str) -> Path:
    """``train.en`` with target ``de`` -> ``train.de``."""
    if not source.suffix:
        raise NlpkitError(f"{source}: a parallel source file ends in its language (train.en); this one has no suffix")
    return source.with_suffix(f".{target}")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise NlpkitError(f"{path}: file does not exist (the other side of a parallel pair)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise NlpkitError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    # splitlines() would also split on \x0b, \x1c, U+2028 ...: lines are \n-separated.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def load_parallel(files: dict[str, str], target: str | None = None) -> datasets.DatasetDict:
    """Read each split's source file and its target-language twin into source/target rows.

    Raises:
        NlpkitError: no ``target`` option, a missing twin file, files of
            different lengths, or an empty line (naming the file and line).
    """
    import datasets  # here: the plugin is imported to load any run, and datasets takes a second to import

    if not target:
        raise NlpkitError("data.options.target: the parallel format needs the target language, e.g. {target: de}, "
                          "to find train.de beside train.en")
    splits = {}
    for split, path in files.items():
        source_file = Path(path)
        target_file = target_path(source_file, target)
        sources, targets = _read_lines(source_file), _read_lines(target_file)
        if len(sources) != len(targets):
            raise NlpkitError(f"{target_file}: {len(targets)} lines, but {source_file} has {len(sources)}; "
                              f"line i of one must translate line i of the other")
        for number, (source, translated) in enumerate(zip(sources, targets), start=1):
            for file, line in ((source_file, source), (target_file, translated)):
                if not line.strip():
                    raise NlpkitError(f"{file}:{number}: empty line (each line is one sentence of a pair)")
        splits[split] = datasets.Dataset.from_dict({"source": sources, "target": targets})
    return datasets.DatasetDict(splits)
