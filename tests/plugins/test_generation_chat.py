"""Chat data in the generation task: the assistant-only loss, a run trained on conversations, chat at inference."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

import nlpkit
from nlpkit.chat_templates import DEFAULT_CHAT_TOKENS
from nlpkit.cli import main
from nlpkit.testing import tiny_recipe, tiny_tokenizer, write_rows
from nlpkit_generation import IGNORE, LanguageModeling, LanguageModelingOptions

REPO = Path(__file__).resolve().parents[2]
QUESTION_ANSWER = REPO / "recipes" / "generation" / "templates" / "question-answer.jinja"
WORDS = "the cat sat on a mat and the dog ran to the big red house by the sea".split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))


def _conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turns = [{"role": "system", "content": _sentence(rng)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            turns += [{"role": "user", "content": _sentence(rng)}, {"role": "assistant", "content": _sentence(rng)}]
        out.append(turns)
    return out


def _task(**options) -> LanguageModeling:
    return LanguageModeling(LanguageModelingOptions(block_size=128, **options), tiny_tokenizer(WORDS * 4, max_length=128))


def _set_up(task: LanguageModeling, conversations) -> None:
    task.setup({"train": datasets.Dataset.from_dict({"messages": conversations})})


def _counted_text(task: LanguageModeling, ids, labels) -> list[str]:
    """The runs of counted labels, as text with special tokens kept: what the loss learns."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [task.tokenizer.decode(run, skip_special_tokens=False) for run in runs]


@pytest.mark.parametrize("template", ["default", "question-answer"])
def test_the_loss_counts_exactly_the_assistant_turns_and_the_token_that_ends_each(template):
    task = _task(chat_template=str(QUESTION_ANSWER) if template == "question-answer" else None)
    conversations = _conversations(6)
    _set_up(task, conversations)
    if template == "default":  # a tokenizer nlpkit trained gets the default's turn tokens, as special tokens
        ids = [task.tokenizer.backend.token_to_id(token) for token in DEFAULT_CHAT_TOKENS]
        assert None not in ids and set(ids) <= task.tokenizer.special_token_ids
    end = "<|im_end|>" if template == "default" else task.tokenizer.special_tokens["eos"]
    features = task.encode({"messages": conversations})
    for messages, ids, labels in zip(conversations, features["input_ids"], features["labels"]):
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert _counted_text(task, ids, labels) == [reply + end for reply in replies]


def test_loss_on_all_counts_every_token():
    task = _task(loss_on="all")
    conversations = _conversations(3)
    _set_up(task, conversations)
    features = task.encode({"messages": conversations})
    assert all(labels == ids for ids, labels in zip(features["input_ids"], features["labels"]))


def test_a_pretrained_tokenizer_without_room_for_the_default_chat_tokens_is_refused_in_one_line():
    task = _task()
    _set_up(task, _conversations(2))  # adds the default's two tokens to a 400-token vocabulary
    from nlpkit.backbones.presets import decoder_tiny
    import dataclasses

    with pytest.raises(nlpkit.NlpkitError, match="give a template written with the checkpoint's own tokens"):
        task.build_head(dataclasses.replace(decoder_tiny(), vocab_size=task.tokenizer.vocab_size - 2))


# -- a run trained on conversations -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chat")
    rows = [{"messages": c} for c in _conversations(40)]
    train = write_rows(tmp / "train.jsonl", rows[:32])
    validation = write_rows(tmp / "validation.jsonl", rows[32:])
    recipe = tiny_recipe("generation", {"format": "chat", "train": str(train), "validation": str(validation)},
                         tmp / "runs", "decoder", {"sample_every": 0, "packing": True, "block_size": 96})
    recipe["backbone"]["config"]["max_positions"] = 128
    recipe["tokenizer"]["max_length"] = 128
    return nlpkit.run(recipe).run_dir


def test_a_chat_run_keeps_its_template_and_chat_tokens_and_replies_through_them(chat_run):
    assert (chat_run / "tokenizer" / "chat_template.jinja").is_file() or any(chat_run.rglob("chat_template.jinja"))
    model = nlpkit.load(chat_run)
    question = [{"role": "user", "content": "the cat sat"}]
    answer = model.chat(question, max_new_tokens=5)
    assert answer["role"] == "assistant" and isinstance(answer["content"], str)
    # The reply is the continuation of the rendered conversation and its generation prompt, decoded.
    prompt = model.task.tokenizer.apply_chat_template(question, add_generation_prompt=True)
    assert model.task.tokenizer.decode(prompt, skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    both = model.chat([question, question + [answer, {"role": "user", "content": "a dog"}]], max_new_tokens=5)
    assert both[0] == answer and both[1]["role"] == "assistant"


def test_replies_stop_at_the_templates_end_of_turn_token(chat_run):
    from nlpkit.chat import end_of_turn_ids

    model = nlpkit.load(chat_run)
    tokenizer = model.task.tokenizer
    assert end_of_turn_ids(tokenizer) == [tokenizer.backend.token_to_id("<|im_end|>")]


def test_generate_chat_prints_the_reply_that_chat_gives(chat_run, capsys):
    expected = nlpkit.load(chat_run).chat([{"role": "system", "content": "be kind"},
                                           {"role": "user", "content": "the dog"}], max_new_tokens=6)
    assert main(["generate", str(chat_run), "the dog", "--chat", "--system", "be kind", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == expected["content"] + "\n"
    assert main(["generate", str(chat_run), "the dog", "a cat", "--chat", "--max-new-tokens", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["the dog", "a cat"]


def test_a_bad_conversation_is_a_one_line_error(chat_run):
    model = nlpkit.load(chat_run)
    with pytest.raises(nlpkit.NlpkitError, match=r"messages\[0\].role: expected one of system, user, assistant"):
        model.chat([{"role": "robot", "content": "hi"}])


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_nlpkit_chat_in_a_terminal_keeps_the_conversation(chat_run, tmp_path):
    model = nlpkit.load(chat_run)
    # A token seen anywhere in the conversation is not generated again: a two-step model's replies then
    # depend on everything before them, so the second reply shows whether the first turn was kept.
    options = {"max_new_tokens": 6, "no_repeat_ngram_size": 1}
    first = [{"role": "user", "content": "the cat"}]
    first_reply = model.chat(first, **options)
    second = [*first, first_reply, {"role": "user", "content": "the sea"}]
    expected = model.chat(second, **options)["content"]
    alone = model.chat([{"role": "user", "content": "the sea"}], **options)["content"]
    assert expected != alone  # else the screen could not show that the second turn saw the first

    session = f"nlpkit-chat-{time.monotonic_ns()}"
    command = f"{sys.executable} -m nlpkit.cli chat {chat_run} --max-new-tokens 6 --no-repeat-ngram-size 1"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "20", command], check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        def lines() -> list[str]:
            shown = [line.rstrip() for line in screen().splitlines()]
            while shown and not shown[-1]:
                shown.pop()
            return shown

        def wait_for_prompt(turns: int) -> list[str]:
            # The prompt is back, after this many of the user's turns: the reply before it is complete.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                shown = lines()
                if shown and shown[-1] == ">" and sum(line.startswith("> ") for line in shown) == turns:
                    return shown[:-1]
                time.sleep(0.2)
            raise AssertionError("the terminal shows:\n" + "\n".join(lines()))

        wait_for_prompt(0)
        subprocess.run(["tmux", "send-keys", "-t", session, "the cat", "Enter"], check=True)
        wait_for_prompt(1)
        subprocess.run(["tmux", "send-keys", "-t", session, "the sea", "Enter"], check=True)
        transcript = f"> the cat\n{first_reply['content']}\n> the sea\n{expected}"
        visible = "".join(c for c in transcript if c.isprintable() or c == "\n")  # a terminal shows no control bytes
        assert wait_for_prompt(2) == [line.rstrip() for line in visible.splitlines()]
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_an_exported_chat_run_renders_its_conversations_in_transformers_as_in_nlpkit(chat_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = nlpkit.load(chat_run)
    folder = model.export(tmp_path / "exported")
    conversation = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "the dog"},
                    {"role": "assistant", "content": "a cat"}, {"role": "user", "content": "the sea"}]
    ids = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(conversation, tokenize=True,
                                                                                 add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert list(ids) == model.task.tokenizer.apply_chat_template(conversation, add_generation_prompt=True)


def test_answer_accuracy_is_the_share_of_replies_whose_answer_matches_the_reference(chat_run):
    import dataclasses

    model = nlpkit.load(chat_run)
    task = model.task
    # The whole reply is the answer: references made of the model's own greedy replies all match.
    task.config = dataclasses.replace(task.config, answer_pattern=r"^([\s\S]*)$", answer_max_new_tokens=4)
    questions = [[{"role": "user", "content": "the cat"}], [{"role": "user", "content": "a dog"}]]
    replies = model.chat(questions, max_new_tokens=4)
    task.questions = [[*q, r] for q, r in zip(questions, replies)]
    assert task.validation_scores(model.model) == {"answer_accuracy": 1.0}
    task.questions = [task.questions[0], [*questions[1], {"role": "assistant", "content": "42"}]]
    assert task.validation_scores(model.model) == {"answer_accuracy": 0.5}
