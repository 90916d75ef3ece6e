"""The question-answering plugin: the task contract, windows, offsets, span choice, SQuAD files, export, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

import nlpkit
from nlpkit import NlpkitError
from nlpkit.cli import main
from nlpkit.testing import check_task, tiny_recipe, tiny_tokenizer, write_rows
from nlpkit.tokenization import Tokenizer
from nlpkit_qa import QAOptions, QuestionAnswering
from nlpkit_qa.data import load_squad
from tests.helpers import save_tiny_bert

PEOPLE = ["Anna", "Peter", "Maria", "John", "Zoe", "Omar"]
PLACES = ["Paris", "Berlin", "New York City", "Rome", "Lagos", "Kyoto"]
FILLER = "The weather was mild and the market sold bread, fish and old books to everyone.".split()


def qa_rows(n: int, seed: int, filler: int = 0, layout: str = "answers") -> list[dict]:
    """Rows 'Where does X live?' over a context naming where two or three people live, with filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        people = rng.sample(PEOPLE, 3)
        places = rng.sample(PLACES, 3)
        parts = []
        for person, place in zip(people, places):
            parts.append(" ".join(rng.choice(FILLER) for _ in range(rng.randint(0, filler))))
            parts.append(f"{person} lives in {place}.")
        context = " ".join(p for p in parts if p)
        asked = rng.randrange(3)
        answer, start = places[asked], context.index(f"{people[asked]} lives in ") + len(f"{people[asked]} lives in ")
        row = {"question": f"Where does {people[asked]} live?", "context": context}
        if layout == "answers":
            row["answers"] = {"text": [answer], "answer_start": [start]}
        else:
            row.update(answer=answer, answer_start=start)
        rows.append(row)
    return rows


def texts_of(rows: list[dict]) -> list[str]:
    return [r["question"] for r in rows] + [r["context"] for r in rows]


def task_with(tokenizer: Tokenizer, **options) -> QuestionAnswering:
    task = QuestionAnswering(QAOptions(**options), tokenizer)
    task.check_options()
    return task


def one_batch(task: QuestionAnswering, rows: list[dict]) -> tuple[list[dict], dict]:
    examples = {key: [row[key] for row in rows] for key in rows[0]}
    encoded = task.encode(examples)
    features = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
    return features, task.collate(features)


# -- the contract -----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["answers", "flat"])
def test_qa_passes_the_conformance_check(tmp_path, layout):
    # Contexts of 40-80 tokens at the kit's max_length of 32: every example is read in several windows.
    train, validation = qa_rows(16, 1, filler=6, layout=layout), qa_rows(8, 2, filler=6, layout=layout)
    inputs = [{"question": r["question"], "context": r["context"]} for r in validation[:4]]
    inputs[0]["context"] = inputs[0]["context"][:60]  # a shorter input, so the batch is really padded
    checked = check_task(QuestionAnswering, train, validation, tmp_path=tmp_path, predict_inputs=inputs,
                         options={"doc_stride": 4, "max_question_length": 12})
    assert {"val_loss", "val_exact_match", "val_f1"} <= set(checked.metrics)
    for answer, item in zip(checked.answers, inputs):
        assert set(answer) == {"answer", "start", "end", "score"}
        assert item["context"][answer["start"]:answer["end"]] == answer["answer"]
        assert 0.0 <= answer["score"] <= 1.0


# -- windows and offsets ------------------------------------------------------------


def test_a_long_context_gives_the_gold_span_in_every_window_that_holds_it():
    rows = qa_rows(1, 3, filler=120, layout="flat")
    (row,) = rows
    while len(row["context"]) < 2000:  # put the answer in the middle of a context of over 2,000 characters
        row["context"] = "Ships came and went all day. " + row["context"] + " Nobody counted the gulls that evening."
        row["answer_start"] += len("Ships came and went all day. ")
    assert row["context"][row["answer_start"]:].startswith(row["answer"])
    tokenizer = Tokenizer.train(texts_of(qa_rows(200, 4, filler=10)) + [row["context"]], "wordpiece",
                                vocab_size=300, min_frequency=1, lowercase=True, max_length=64)
    task = task_with(tokenizer, doc_stride=16, max_question_length=16)
    (feature,), batch = one_batch(task, rows)

    windows = feature["input_ids"]
    assert len(windows) > 10 and all(len(w) <= 64 for w in windows)
    start, end = row["answer_start"], row["answer_start"] + len(row["answer"])
    holders = 0
    for k, offsets in enumerate(feature["offsets"]):
        first, stop = feature["context_span"][k]
        inside = offsets[first][0] <= start and offsets[stop - 1][1] >= end
        s, e = feature["start_positions"][k], feature["end_positions"][k]
        if inside:
            holders += 1
            assert first <= s <= e < stop
            assert row["context"][offsets[s][0]:offsets[e][1]] == row["answer"]
        else:
            assert (s, e) == (0, 0)  # the window points at [CLS]
    assert holders >= 2  # the stride makes neighbouring windows overlap around the answer
    # All windows of the example are scored together: decode reads the answer from the batch as a whole.
    outputs = {side: torch.full(batch["input_ids"].shape, -5.0) for side in ("start_logits", "end_logits")}
    k = feature["start_positions"].index(next(s for s in feature["start_positions"] if s))
    outputs["start_logits"][0, k, feature["start_positions"][k]] = 5.0
    outputs["end_logits"][0, k, feature["end_positions"][k]] = 5.0
    (answer,) = task.decode(outputs, batch)
    assert (answer["answer"], answer["start"], answer["end"]) == (row["answer"], start, end)


TOKENIZERS = {
    "wordpiece-lowercase": dict(kind="wordpiece", lowercase=True),
    "byte-level-bpe": dict(kind="bpe", lowercase=False),
}


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_answers_slice_the_raw_context_exactly(kind):
    rows = qa_rows(12, 5, filler=3)
    rows[0]["context"] = "Omar  lives in   New York City, near the Café."
    rows[0]["answers"] = {"text": ["New York City"], "answer_start": [17]}
    rows[1]["context"] = "Zoe lives in Lagos."
    rows[1]["answers"] = {"text": ["Lagos"], "answer_start": [13]}
    tokenizer = Tokenizer.train(texts_of(qa_rows(200, 6, filler=6)), **TOKENIZERS[kind], vocab_size=400,
                                min_frequency=1, max_length=48)
    task = task_with(tokenizer, doc_stride=8, max_question_length=16)
    features, batch = one_batch(task, rows)
    # The model points at the gold tokens: the answers are the context's own characters (case kept).
    outputs = {side: torch.full(batch["input_ids"].shape, -5.0) for side in ("start_logits", "end_logits")}
    for b, feature in enumerate(features):
        k = next(k for k, s in enumerate(feature["start_positions"]) if s)
        outputs["start_logits"][b, k, feature["start_positions"][k]] = 5.0
        outputs["end_logits"][b, k, feature["end_positions"][k]] = 5.0
    for row, answer in zip(rows, task.decode(outputs, batch)):
        gold = row["answers"]["text"][0]
        assert answer["answer"] == gold == row["context"][answer["start"]:answer["end"]]
        assert answer["start"] == row["answers"]["answer_start"][0]
    if kind == "byte-level-bpe":  # its tokens carry the space before a word: the answer does not
        first = features[0]
        k = next(k for k, s in enumerate(first["start_positions"]) if s)
        assert rows[0]["context"][first["offsets"][k][first["start_positions"][k]][0]].isspace()


def test_decode_picks_the_best_span_over_all_windows():
    rows = qa_rows(1, 7, filler=40)
    tokenizer = tiny_tokenizer(texts_of(qa_rows(200, 8, filler=8)), kind="bpe", max_length=32)
    task = task_with(tokenizer, doc_stride=4, max_question_length=12, max_answer_length=4)
    (feature,), batch = one_batch(task, rows)
    assert len(feature["input_ids"]) >= 3
    (c0, stop0), (c1, _), (c2, _) = feature["context_span"][:3]
    assert stop0 - c0 >= 7
    start, end = (torch.full(batch["input_ids"].shape, -100.0) for _ in range(2))
    start[0, 0, c0], end[0, 0, c0 + 1] = 5.0, 5.0  # window 0: a span scoring 10
    start[0, 2, c2], end[0, 2, c2 + 2] = 6.0, 6.0  # window 2: the best, 12
    start[0, 1, 1], end[0, 1, 1] = 100.0, 100.0  # a question token: never an answer
    start[0, 1, c1 + 3], end[0, 1, c1] = 50.0, 50.0  # its end before its start
    start[0, 0, c0 + 2], end[0, 0, c0 + 6] = 7.0, 7.0  # 5 tokens: longer than max_answer_length
    outputs = {"start_logits": start, "end_logits": end}

    (answer,) = task.decode(outputs, batch)
    context, offsets = rows[0]["context"], feature["offsets"][2]
    first = offsets[c2][0]
    while context[first].isspace():  # a byte-level token's offsets may hold the space before its word
        first += 1
    assert (answer["start"], answer["end"]) == (first, offsets[c2 + 2][1])
    assert answer["answer"] == context[first:offsets[c2 + 2][1]]

    empty = task_with(tokenizer, doc_stride=4, max_question_length=12, max_answer_length=4, allow_empty=True)
    start[0, :, 0], end[0, :, 0] = 7.0, 7.0  # "no answer" scores 14 in every window: it beats 12
    (none,) = empty.decode(outputs, batch)
    assert (none["answer"], none["start"], none["end"]) == ("", -1, -1)
    assert task.decode(outputs, batch)[0]["answer"] == answer["answer"]  # without allow_empty: always a span
    start[0, 1, 0], end[0, 1, 0] = 5.0, 4.9  # the lowest no-answer score over the windows (9.9) is what competes
    assert empty.decode(outputs, batch)[0]["answer"] == answer["answer"]


def test_questions_longer_than_max_question_length_are_cut():
    tokenizer = tiny_tokenizer(texts_of(qa_rows(100, 9)), kind="bpe", max_length=32)
    task = task_with(tokenizer, doc_stride=4, max_question_length=6)
    row = {"question": "  Where does " + "the friend of " * 10 + "Anna live?", "context": "Anna lives in Rome."}
    full = tokenizer.encode(row["question"].lstrip(), add_special_tokens=False, truncation=False).ids
    assert len(full) > 32  # whole, it would not fit in a window
    (feature,), _ = one_batch(task, [row])
    question = feature["input_ids"][0][1:feature["context_span"][0][0] - 2]  # <s> question </s></s> context </s>
    assert 1 <= len(question) <= 6 and question == full[:len(question)]
    with pytest.raises(NlpkitError, match="question and its context"):
        task.encode({"question": ["Where?"]})


# -- options and checks ------------------------------------------------------------


def qa_files(folder: Path, layout: str = "answers") -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"train": str(write_rows(folder / "train.jsonl", qa_rows(12, 1, filler=4, layout=layout))),
            "validation": str(write_rows(folder / "valid.jsonl", qa_rows(6, 2, filler=4, layout=layout)))}


def check_recipe(tmp_path: Path, data: dict, **options) -> Path:
    recipe = tiny_recipe("qa", data, tmp_path / "runs", options={"doc_stride": 4, "max_question_length": 12, **options})
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_nlpkit_check_catches_a_doc_stride_the_windows_cannot_hold(tmp_path, capsys):
    recipe = check_recipe(tmp_path, qa_files(tmp_path / "data"))
    assert main(["check", str(recipe)]) == 0
    capsys.readouterr()
    assert main(["check", str(recipe), "qa.doc_stride=40"]) == 2
    assert capsys.readouterr().err.strip() == f"nlpkit: error: {recipe}: qa.doc_stride: 40 is not below tokenizer.max_length (32)"
    assert main(["check", str(recipe), "qa.doc_stride=20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qa.doc_stride: 20 is not below the 16 context tokens a window holds" in err[0]
    assert main(["check", str(recipe), "qa.max_answer_length=0"]) == 2
    assert "qa.max_answer_length: expected an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["answers", "flat"])
def test_malformed_answers_are_one_line_errors_naming_file_and_row(tmp_path, capsys, layout):
    files = qa_files(tmp_path / "data", layout)
    recipe = check_recipe(tmp_path, files)
    rows = [json.loads(line) for line in Path(files["validation"]).read_text().splitlines()]
    for change, message in [
        (lambda r: r.update(answers={"text": ["Rome"], "answer_start": [999]}) if layout == "answers"
         else r.update(answer_start=999), "lies outside the context"),
        (lambda r: r.update(answers={"text": ["Mars"], "answer_start": [0]}) if layout == "answers"
         else r.update(answer="Mars", answer_start=0), "not the answer 'Mars'"),
    ]:
        broken = [dict(r) for r in rows]
        change(broken[2])
        write_rows(files["validation"], broken)
        assert main(["check", str(recipe)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{files['validation']}" in err[0] and "row 3:" in err[0] and message in err[0]


def test_rows_without_answers_need_allow_empty_and_a_training_file_needs_answers(tmp_path, capsys):
    files = qa_files(tmp_path / "data")
    rows = [json.loads(line) for line in Path(files["train"]).read_text().splitlines()]
    rows[4]["answers"] = {"text": [], "answer_start": []}
    write_rows(files["train"], rows)
    recipe = check_recipe(tmp_path, files)
    assert main(["check", str(recipe)]) == 2
    assert "row 5: no answer; questions without one (SQuAD v2) need qa.allow_empty: true" in capsys.readouterr().err
    assert main(["check", str(recipe), "qa.allow_empty=true"]) == 0
    capsys.readouterr()
    write_rows(files["train"], [{"question": r["question"], "context": r["context"]} for r in rows])
    assert main(["check", str(recipe)]) == 2
    assert "no answer column; expected an 'answers' column" in capsys.readouterr().err


# -- the squad format ----------------------------------------------------------------


def squad_json(path: Path, articles: int = 4) -> Path:
    data = []
    for a in range(articles):
        paragraphs = []
        for p, row in enumerate(qa_rows(2, 10 + a)):
            qas = [{"id": f"q{a}-{p}", "question": row["question"],
                    "answers": [{"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"],
                                                                               row["answers"]["answer_start"])] * 2}]
            if a == 3:  # SQuAD v2: an unanswerable question
                qas.append({"id": f"q{a}-{p}-x", "question": "Who lives on the moon?", "answers": [],
                            "plausible_answers": [{"text": "Anna", "answer_start": 0}], "is_impossible": True})
            paragraphs.append({"context": row["context"], "qas": qas})
        data.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def test_the_squad_format_reads_nested_json_and_slices_articles(tmp_path):
    path = str(squad_json(tmp_path / "squad.json"))
    every = load_squad({"train": path})["train"]
    assert every.column_names == ["id", "title", "question", "context", "answers"]
    assert len(every) == 10 and every[0]["id"] == "q0-0"
    assert len(every[0]["answers"]["text"]) == 2  # every gold answer is kept (dev files have several)
    assert every[-1]["answers"] == {"text": [], "answer_start": []}  # is_impossible
    row = every[0]
    assert row["context"][row["answers"]["answer_start"][0]:].startswith(row["answers"]["text"][0])

    one = load_squad({"train": path}, articles="1:3")["train"]
    assert sorted(set(one["title"])) == ["Article_1", "Article_2"]
    splits = {"train": ":2", "validation": "-1:"}
    assert set(load_squad({"train": path}, articles=splits)["train"]["title"]) == {"Article_0", "Article_1"}
    assert set(load_squad({"validation": path}, articles=splits)["validation"]["title"]) == {"Article_3"}
    assert set(load_squad({"test": path}, articles=splits)["test"]["title"]) == {f"Article_{a}" for a in range(4)}
    assert set(load_squad({"train": path}, articles="::2")["train"]["title"]) == {"Article_0", "Article_2"}

    for bad, message in [("0-2", "data.options.articles: expected a slice of the file's articles such as '0:20'"),
                         ({"train": "a:b"}, "data.options.articles.train: expected a slice"),
                         ({"dev": "0:1"}, "data.options.articles: unknown split 'dev'"),
                         ("1:2:0", "data.options.articles: the step of '1:2:0' is 0"),
                         ("7:9", "data.options.articles '7:9' selects none of its 4 articles")]:
        with pytest.raises(NlpkitError) as caught:
            load_squad({"train": path}, articles=bad)
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_squad_recipe_checks_and_names_a_bad_answer_by_its_json_path(tmp_path, capsys):
    path = squad_json(tmp_path / "squad.json")
    data = {"format": "squad", "train": str(path), "validation": str(path),
            "options": {"articles": {"train": "0:3", "validation": "3:"}}}
    recipe = check_recipe(tmp_path, data, allow_empty=True)
    assert main(["check", str(recipe)]) == 0
    assert "train 6 rows, validation 4 rows" in capsys.readouterr().out
    assert main(["check", str(recipe), "data.options.articles.train=0..3"]) == 2
    assert capsys.readouterr().err.startswith("nlpkit: error: data.options.articles.train: expected a slice")

    document = json.loads(path.read_text())
    document["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    path.write_text(json.dumps(document))
    assert main(["check", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: data[1].paragraphs[0].qas[0] (id q1-0): answer 1: the context at" in err[0]


# -- a run: export to transformers, predict from the command line ------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random BERT saved by transformers, with a lower-casing WordPiece tokenizer of the QA words."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = tiny_tokenizer(texts_of(qa_rows(200, 11, filler=4)), kind="wordpiece", vocab_size=200, max_length=64)
    return save_tiny_bert(folder, tokenizer)


def test_export_loads_as_bert_for_question_answering_with_the_same_logits(tiny_bert, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    recipe = tiny_recipe("qa", qa_files(tmp_path / "data"), tmp_path / "runs",
                         options={"doc_stride": 16, "max_question_length": 16})
    recipe["backbone"] = {"pretrained": str(tiny_bert)}
    recipe["tokenizer"] = {"max_length": 64}  # the folder's own tokenizer, within its 64 positions
    run_dir = nlpkit.run(recipe).run_dir
    model = nlpkit.load(run_dir)
    out = model.export(tmp_path / "exported")
    hf_model = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    assert type(hf_model).__name__ == "BertForQuestionAnswering"

    rows = [{"question": r["question"], "context": r["context"]} for r in qa_rows(4, 12)]
    batch = model.task.collate(model.features({k: [r[k] for r in rows] for k in ("question", "context")}))
    assert batch["input_ids"].shape[1] == 1  # one window each: the sequences transformers reads
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = hf_tokenizer([r["question"] for r in rows], [r["context"] for r in rows], padding=True,
                           return_tensors="pt")
    assert torch.equal(batch["input_ids"][:, 0], encoded["input_ids"])
    with torch.no_grad():
        ours = model.task.forward(model.model, batch)
        theirs = hf_model(**encoded)
    real = encoded["attention_mask"].bool()
    for side in ("start_logits", "end_logits"):
        assert (ours[side][:, 0][real] - getattr(theirs, side)[real]).abs().max().item() < 1e-4

    # The command line answers with only a question and a context.
    assert main(["predict", str(run_dir), "--field", f"question={rows[0]['question']}",
                 "--field", f"context={rows[0]['context']}"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"answer", "start", "end", "score"}
    assert rows[0]["context"][answer["start"]:answer["end"]] == answer["answer"]
    # ... and a JSON object as TEXT answers the same, as the Python API does.
    assert main(["predict", str(run_dir), json.dumps(rows[0])]) == 0
    assert json.loads(capsys.readouterr().out) == answer
    assert model.predict([rows[0]]) == [answer]
