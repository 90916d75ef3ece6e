"""``nlpkit predict`` with several fields: ``--field NAME=VALUE`` and a JSON object as TEXT.

Both make one example and go down the path of ``--input`` and of the Python
API (``nlpkit.load(RUN).predict``), so all four answer alike; their mistakes
are one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nlpkit
from nlpkit.cli import main
from nlpkit.testing import tiny_classification_data, tiny_recipe
from tests.helpers import assert_one_line_error

PAIR = {"text": "a lovely warm film", "text_pair": "a grim cruel story"}


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification run on sentence pairs (text, text_pair): two training steps, a few seconds."""
    tmp_path = tmp_path_factory.mktemp("pairs")
    data = tiny_classification_data(tmp_path / "data", pairs=True)
    return nlpkit.run(tiny_recipe("classification", data, tmp_path / "runs")).run_dir


def answers(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[Any]:
    assert main(argv) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def as_printed(answer: Any) -> Any:
    """An answer of the Python API as the CLI prints it (JSON: floats round-trip exactly)."""
    return json.loads(json.dumps(answer))


def test_field_json_text_and_input_answer_a_pair_as_the_python_api(pair_run, tmp_path, capsys):
    expected = as_printed(nlpkit.load(pair_run).predict(PAIR))
    run = str(pair_run)
    fields = ["--field", f"text={PAIR['text']}", "--field", f"text_pair={PAIR['text_pair']}"]
    by_field = answers(capsys, ["predict", run, *fields])
    by_json = answers(capsys, ["predict", run, json.dumps(PAIR)])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(PAIR) + "\n")
    by_file = answers(capsys, ["predict", run, "--input", str(rows)])
    assert by_field == by_json == by_file == [expected]
    # Pair answers differ from the first text's alone: the second text was read.
    assert expected != as_printed(nlpkit.load(pair_run).predict(PAIR["text"]))


def test_a_value_is_split_at_the_first_equals_sign_and_other_texts_stay_texts(pair_run, capsys):
    model = nlpkit.load(pair_run)
    run = str(pair_run)
    assert answers(capsys, ["predict", run, "--field", "text=a = b == c", "--field", "text_pair=x=y"]) == [
        as_printed(model.predict({"text": "a = b == c", "text_pair": "x=y"}))]
    # One field as JSON is that text; a text that starts with '[' but is no JSON is a text; --field takes any text.
    # (The same batches as the CLI's: padding moves a score in its last bits.)
    texts = ["a happy day", "[Reuters] a dull plot"]
    assert answers(capsys, ["predict", run, '{"text": "a happy day"}', texts[1]]) == as_printed(model.predict(texts))
    assert answers(capsys, ["predict", run, "--field", "text={not json} as it is"]) == [
        as_printed(model.predict("{not json} as it is"))]


@pytest.mark.parametrize("arguments, parts", [
    (["--field", "text"], ["argument --field: expected NAME=VALUE, got 'text'"]),
    (["--field", "=a good film"], ["argument --field: expected a field name before '='"]),
    (["--field", "txt=a good film"], ["--field: unknown field 'txt'; did you mean 'text'?",
                                      "task 'classification' takes: text; optional: text_pair"]),
    (["--field", "text_pair=a good film"], ["--field: missing field 'text'", "expected: text, text_pair"]),
    (["--field", "text=a", "--field", "text=b"], ["--field: field 'text' given twice"]),
    (["a good film", "--field", "text=a fine plot"], ["give TEXT arguments or --field NAME=VALUE, not both"]),
    (['["a good film", "a fine plot"]'], ["argument 1: a JSON list, not an object", "--input FILE.jsonl"]),
    (['{"text": "a good film",}'], ["argument 1: starts with '{' but is not a JSON object", "--field NAME=TEXT"]),
    (["fine", '{"text": "a", "hypothesis": "b"}'], ["argument 2: unknown field 'hypothesis'", "takes: text"]),
    (['{"text": 3}'], ["argument 1: field 'text' is not a string"]),
], ids=["no equals sign", "no name", "unknown field", "missing required field", "field twice", "text and field",
        "json list", "broken json object", "unknown json field", "json field not a string"])
def test_field_and_json_text_mistakes_are_one_line_with_exit_code_2(pair_run, capsys, arguments, parts):
    code = main(["predict", str(pair_run), *arguments])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured, parts)
    assert captured.out == ""  # nothing answered


def test_predict_help_describes_fields_and_json_text(capsys):
    assert main(["predict", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--field NAME=VALUE" in text and "a TEXT that starts with '{'" in text and "JSON list" in text
