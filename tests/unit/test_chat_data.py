"""The chat data format: conversations from messages rows and from instruction layouts, bad rows named."""

from __future__ import annotations

import json

import pytest

from nlpkit.data import load_chat
from nlpkit.errors import NlpkitError


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _messages(path, columns=None):
    return load_chat({"train": path}, columns=columns)["train"]["messages"]


def test_messages_rows_are_read_as_they_are(tmp_path):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Bye."}]
    path = _write(tmp_path / "chat.jsonl", [{"messages": conversation}])
    assert _messages(path) == [conversation]


def test_alpaca_rows_put_the_input_after_the_instruction_and_gsm8k_rows_read_as_user_and_assistant(tmp_path):
    alpaca = _write(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Name a colour.", "input": "", "output": "Red."},
    ])
    assert _messages(alpaca) == [
        [{"role": "user", "content": "Translate to French.\n\ncat"}, {"role": "assistant", "content": "chat"}],
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
    ]
    gsm8k = _write(tmp_path / "gsm8k.jsonl", [{"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}])
    assert _messages(gsm8k) == [[{"role": "user", "content": "1 + 1?"},
                                 {"role": "assistant", "content": "1 + 1 = 2\n#### 2"}]]


def test_other_column_names_are_mapped_with_data_columns_and_a_system_column_opens_the_conversation(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"query": "Why?", "reply": "Because.", "persona": "You are terse."}])
    assert _messages(path, {"user": "query", "assistant": "reply", "system": "persona"}) == [[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."}]]


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([{"messages": [{"role": "bot", "content": "x"}]}], None,
         "row 1: messages[0].role: expected one of system, user, assistant, got 'bot'"),
        ([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
          {"messages": [{"role": "user", "content": "only a question"}]}], None,
         "row 2: no assistant turn to learn from"),
        ([{"messages": [{"role": "user"}]}], None, "row 1: messages[0].content: expected a string, got nothing"),
        ([{"q": "a", "a": "b"}], None, "no conversation in its columns (q, a): expected 'messages', or a user"),
        ([{"question": "a", "answer": ""}], None, "row 1: 'answer' is empty"),
        ([{"question": "a", "answer": "b"}], {"assistant": "reply"},
         "missing column 'reply' (data.columns.assistant); found: question, answer"),
    ],
    ids=["role", "no-assistant", "content", "layout", "empty", "mapped-column"],
)
def test_a_bad_row_or_layout_is_named_by_file_and_row(tmp_path, rows, columns, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(NlpkitError) as error:
        load_chat({"train": path}, columns=columns)
    assert str(error.value).startswith(path)
    assert message in str(error.value)


def test_a_chat_recipe_maps_its_columns_through_data_columns_and_refuses_an_unknown_field(tmp_path):
    from nlpkit.recipe import load_recipe
    from nlpkit.data import load_splits, select_task_columns
    from nlpkit.plugins import load_plugins

    path = _write(tmp_path / "qa.jsonl", [{"query": "Why?", "reply": "Because."}, {"query": "How?", "reply": "So."}])
    recipe = {"task": "generation", "backbone": {"preset": "decoder-tiny"}, "tokenizer": {"train": "bpe"},
              "data": {"format": "chat", "train": path, "validation": path,
                       "columns": {"user": "query", "assistant": "reply"}}, "output_dir": str(tmp_path / "runs")}
    registries = load_plugins().registries
    loaded = load_recipe(recipe, registries=registries)
    splits = select_task_columns(load_splits(loaded.data, registries.data_formats), loaded.data,
                                 registries.tasks.get("generation"))
    assert splits["train"]["messages"][1] == [{"role": "user", "content": "How?"},
                                              {"role": "assistant", "content": "So."}]
    recipe["data"]["columns"] = {"usr": "query"}
    with pytest.raises(NlpkitError, match=r"data\.columns\.usr: unknown field of task 'generation'; did you mean 'user'"):
        load_recipe(recipe, registries=registries)
