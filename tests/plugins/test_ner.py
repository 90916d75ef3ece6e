"""The NER plugin end to end: the task contract, windows, offsets, export, the command line."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import nlpkit
from nlpkit import NlpkitError
from nlpkit.cli import main
from nlpkit.testing import check_task, tiny_recipe, tiny_tokenizer
from nlpkit_ner import Ner, NerOptions
from nlpkit_ner.schemes import chunks
from tests.helpers import save_tiny_bert

PEOPLE = ["Anna", "Peter", "Maria", "John", "Zoë"]
PLACES = ["Paris", "Berlin", "Rome", "São"]
COMPANIES = ["Acme", "Globex"]
FILLER = "went to the city and saw a friend in with from".split()


def ner_rows(n: int, seed: int, length: tuple[int, int] = (3, 8)) -> list[dict[str, list[str]]]:
    """Sentences of filler words with people (two words), places and companies, tagged in IOB2."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(*length)):
            roll = rng.random()
            if roll < 0.2:
                tokens += [rng.choice(PEOPLE), "Smith"]
                tags += ["B-PER", "I-PER"]
            elif roll < 0.35:
                tokens.append(rng.choice(PLACES))
                tags.append("B-LOC")
            elif roll < 0.42:
                tokens.append(rng.choice(COMPANIES))
                tags.append("B-ORG")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_conll(path: Path, rows: list[dict[str, list[str]]]) -> Path:
    lines = ["-DOCSTART- -X- O", ""]
    for row in rows:
        lines += [f"{token} NN {tag}" for token, tag in zip(row["tokens"], row["tags"])] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def conll_files(folder: Path) -> dict[str, str]:
    return {"format": "conll", "train": str(write_conll(folder / "train.txt", ner_rows(48, 1))),
            "validation": str(write_conll(folder / "valid.txt", ner_rows(16, 2)))}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ner-run")
    return nlpkit.run(tiny_recipe("ner", conll_files(folder), folder / "runs")).run_dir


RAW_TEXTS = ["Anna  Smith went\tto Paris.", "Zoë 🎉 saw\t\tMaria   in São-Paulo ,naïve café!", "  leading and trailing  "]


@pytest.mark.parametrize("options", [None, {"train_scheme": "iobes", "decoding": "viterbi", "metric_mode": "strict",
                                            "label_all_subwords": True}], ids=["defaults", "iobes-viterbi-strict"])
def test_ner_passes_the_conformance_check(tmp_path, options):
    checked = check_task(Ner, ner_rows(16, 1), ner_rows(8, 2), tmp_path=tmp_path, options=options,
                         predict_inputs=RAW_TEXTS)
    assert {"val_loss", "val_f1", "val_precision", "val_recall", "val_f1_PER", "val_f1_LOC", "val_f1_ORG"} <= set(checked.metrics)
    for text, answer in zip(RAW_TEXTS, checked.answers):
        assert set(answer) == {"entities"}
        for entity in answer["entities"]:
            assert set(entity) == {"label", "text", "start", "end", "score"}
            assert text[entity["start"]:entity["end"]] == entity["text"]


def test_task_state_and_metrics_follow_the_data(trained_run):
    state = json.loads((trained_run / "task_state.json").read_text())
    assert state == {"labels": ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]}
    model = nlpkit.load(trained_run)
    assert model.task.metric_names == ("f1", "precision", "recall", "f1_LOC", "f1_ORG", "f1_PER")


def test_evaluate_gives_the_figures_of_training(trained_run):
    # The same words, the same decoding, the same metric: evaluate reproduces the best checkpoint's validation.
    model = nlpkit.load(trained_run)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    validation = model.recipe.data.validation
    scores = model.evaluate(validation)
    for name in ("f1", "precision", "recall", "f1_PER"):
        assert scores[name] == pytest.approx(metrics[f"val_{name}"], abs=1e-6), name
    # The loss is a mean over the labelled subwords of each batch: equal for equal batches.
    batch_size = model.recipe.training.batch_size
    assert model.evaluate(validation, batch_size=batch_size)["loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)


def force_tag(model, tag: str) -> None:
    """Make the loaded model answer ``tag`` for every word, whatever the input."""
    linear = model.model.head[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-5.0)
        linear.bias[model.task.labels.index(tag)] = 5.0


def test_predicted_offsets_slice_the_input_exactly(trained_run):
    model = nlpkit.load(trained_run)
    force_tag(model, "B-PER")  # every word an entity of its own
    for text, answer in zip(RAW_TEXTS, model.predict(RAW_TEXTS)):
        assert "".join(e["text"] for e in answer["entities"]) == "".join(text.split())
        for entity in answer["entities"]:
            assert text[entity["start"]:entity["end"]] == entity["text"] and entity["label"] == "PER"
            assert 0.9 < entity["score"] <= 1.0
    force_tag(model, "I-PER")  # one entity from the first word to the last, spaces and tabs inside
    (entity,) = model.predict(RAW_TEXTS[1])["entities"]
    assert (entity["label"], entity["text"], entity["start"], entity["end"]) == ("PER", RAW_TEXTS[1], 0, len(RAW_TEXTS[1]))
    # Random answers, many shapes of entities: every span is a slice of its input.
    task = model.task
    batch = task.collate(model.features({"tokens": RAW_TEXTS}))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(*batch["word_mask"].shape, len(task.labels), generator=generator) * 3
        for text, answer in zip(RAW_TEXTS, task.decode({"word_logits": logits}, batch)):
            assert all(text[e["start"]:e["end"]] == e["text"] and e["text"].strip() == e["text"] for e in answer["entities"])


# Raw text as people write it, and the same words pre-split as CoNLL writes them.
WRITTEN = [
    ("Angela Merkel visited the U.S. today.", ["Angela", "Merkel", "visited", "the", "U.S.", "today", "."]),
    ("(Reuters) Merkel's visit to Paris, then São-Paulo.",
     ["(", "Reuters", ")", "Merkel", "'s", "visit", "to", "Paris", ",", "then", "São-Paulo", "."]),
]


def test_raw_text_gives_the_spans_of_the_same_words_pre_split(trained_run):
    model = nlpkit.load(trained_run)

    def answer_words(words):  # pre-split words, read as evaluate reads them
        batch = model.task.collate(model.features({"tokens": [words]}))
        return model.task.decode(model.task.forward(model.model, batch), batch)[0]

    def spans(answer):
        return [(e["label"], e["text"], round(e["score"], 5)) for e in answer["entities"]]

    for forced in (None, "B-PER"):  # the trained model as it is; every word an entity, so each cut shows
        if forced:
            force_tag(model, forced)
        for text, words in WRITTEN:
            raw, pre_split = model.predict(text), answer_words(words)
            assert spans(raw) == spans(pre_split)
            assert all(text[e["start"]:e["end"]] == e["text"] for e in raw["entities"])
        if forced:
            assert [e["text"] for e in model.predict(WRITTEN[0][0])["entities"]] == WRITTEN[0][1]


def long_sentence(words: int = 120) -> dict[str, list[str]]:
    rng = random.Random(5)
    tokens, tags = [], []
    while len(tokens) < words:
        tokens += [rng.choice(PEOPLE), "Smith", rng.choice(FILLER), rng.choice(PLACES)]
        tags += ["B-PER", "I-PER", "O", "B-LOC"]
    return {"tokens": tokens, "tags": tags}


def test_a_sentence_longer_than_the_model_keeps_all_its_entities(trained_run):
    model = nlpkit.load(trained_run)
    task = model.task
    row = long_sentence()
    batch = task.collate(task.prepare(_dataset([row])).to_list())
    windows = int(batch["window_mask"].sum())
    assert windows > 3 and batch["input_ids"].shape[-1] <= task.tokenizer.max_length
    # Each word is read at a position that carries its gold label, in one of the windows.
    rows = torch.arange(1)[:, None]
    read = batch["labels"][rows, batch["word_window"], batch["word_token"]]
    assert torch.equal(read, batch["tags"])
    gold = [task.labels[i] for i in batch["tags"][0].tolist()]
    assert gold == row["tags"] and len(chunks(gold)) == len(chunks(row["tags"]))
    # A model that reads each word right finds every entity back, with the right offsets.
    text = " ".join(row["tokens"])
    perfect = torch.nn.functional.one_hot(batch["tags"], len(task.labels)).float() * 10
    (answer,) = task.decode({"word_logits": perfect}, batch)
    assert [(e["label"], e["text"]) for e in answer["entities"]] == [
        (type_, " ".join(row["tokens"][s:e])) for type_, s, e in chunks(row["tags"])]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in answer["entities"])
    predicted, expected = task.evaluate_batch(model.model, batch, {"word_logits": perfect})
    assert predicted == expected == [row["tags"]]
    # The real model runs over all windows of a long raw text and answers for every word.
    outputs = task.forward(model.model, batch)
    assert outputs["word_logits"].shape == (1, len(row["tokens"]), len(task.labels))
    assert model.evaluate(write_conll(trained_run.parent / "long.txt", [row]))["loss"] > 0


def _dataset(rows):
    import datasets

    return datasets.Dataset.from_list(rows)


def test_subword_labels_first_or_all(trained_run):
    model = nlpkit.load(trained_run)
    row = {"tokens": [["Globexcorporation", "Smith"]], "tags": [["B-ORG", "B-PER"]]}
    features = model.task.encode(row)
    ids, labels = features["input_ids"][0][0], features["labels"][0][0]
    assert len(ids) > 4 and labels[0] == labels[-1] == -100  # special tokens are never labelled
    assert labels.count(-100) == len(ids) - 2  # first subwords only
    every = Ner(NerOptions(label_all_subwords=True), model.task.tokenizer)
    every.load_state(model.task.state())
    labels = every.encode(row)["labels"][0][0]
    assert labels.count(-100) == 2


def test_bad_rows_are_named(trained_run, tmp_path):
    model = nlpkit.load(trained_run)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}) + "\n" +
                   json.dumps({"tokens": ["EU", "rejects"], "tags": ["E-ORG", "O"]}) + "\n")
    with pytest.raises(NlpkitError, match=r"bad.jsonl: row 2: tag 'E-ORG' of word 1 \('EU'\) is not a IOB2 tag"):
        model.evaluate(bad)
    bad.write_text(json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-GPE", "O"]}) + "\n")
    with pytest.raises(NlpkitError, match=r"row 1: entity type 'GPE' never seen in training \(training types: LOC, ORG, PER\)"):
        model.evaluate(bad)
    bad.write_text(json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-ORG"]}) + "\n")
    with pytest.raises(NlpkitError, match="row 1: 2 tokens but 1 tags"):
        model.evaluate(bad)


def test_iob1_data_trains_in_iobes(tmp_path):
    rows = ner_rows(16, 3)
    for row in rows:  # the same entities written in IOB1: I- everywhere, B- only between two of a type
        row["tags"] = [t.replace("B-", "I-") for t in row["tags"]]
    data = {"format": "conll", "train": str(write_conll(tmp_path / "train.txt", rows)),
            "validation": str(write_conll(tmp_path / "valid.txt", rows[:4]))}
    result = nlpkit.run(tiny_recipe("ner", data, tmp_path / "runs", options={"scheme": "iob1", "train_scheme": "iobes"}))
    model = nlpkit.load(result.run_dir)
    assert model.task.labels[:5] == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    features = model.task.encode({"tokens": [rows[0]["tokens"]], "tags": [rows[0]["tags"]]})
    written = [model.task.labels[i] for i in features["tags"][0]]
    assert chunks(written) == chunks(rows[0]["tags"]) and all(t[0] in "OBIES" for t in written)


def test_cli_run_evaluate_predict_on_conll_files(tmp_path, capsys):
    files = conll_files(tmp_path)
    recipe = tmp_path / "ner.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe("ner", files, tmp_path / "runs")))
    assert main(["run", str(recipe)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    # A .txt file names no format: the run's own (conll) is used.
    assert main(["evaluate", str(run_dir), "--data", files["validation"]]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {"loss", "f1", "precision", "recall", "f1_PER"} <= set(scores)
    assert main(["predict", str(run_dir), "Anna Smith went to Paris", "Maria  Smith\tin Rome"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(answers) == 2 and all(set(a) == {"entities"} for a in answers)


def test_cli_malformed_conll_file_exits_2_naming_file_and_line(tmp_path):
    files = conll_files(tmp_path)
    Path(files["train"]).write_text("EU NN B-ORG\nrejects NN O\n\nGerman NN B-MISC\ncall NN\n")
    recipe = tmp_path / "ner.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe("ner", files, tmp_path / "runs")))
    done = subprocess.run([str(Path(sys.executable).parent / "nlpkit"), "run", str(recipe)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (f"nlpkit: error: {files['train']}:5: expected 3 columns "
                                            "(as on line 1), got 2: 'call NN'")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random BERT saved by transformers, with a WordPiece tokenizer of the NER words."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    texts = [" ".join(row["tokens"]) for row in ner_rows(200, 7)]
    tokenizer = tiny_tokenizer(texts, kind="wordpiece", vocab_size=120, max_length=64)
    return save_tiny_bert(folder, tokenizer)


def test_export_loads_as_token_classification_with_the_same_logits(tiny_bert, tmp_path):
    transformers = pytest.importorskip("transformers")
    recipe = tiny_recipe("ner", conll_files(tmp_path), tmp_path / "runs")
    recipe["backbone"] = {"pretrained": str(tiny_bert)}
    recipe["tokenizer"] = {"max_length": 64}  # the folder's own tokenizer, within its 64 positions
    model = nlpkit.load(nlpkit.run(recipe).run_dir)
    out = model.export(tmp_path / "exported")
    hf_model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    assert type(hf_model).__name__ == "BertForTokenClassification"
    assert hf_model.config.id2label == dict(enumerate(model.task.labels))

    words = [row["tokens"] for row in ner_rows(4, 9)]
    batch = model.task.collate(model.features({"tokens": words}))
    assert batch["input_ids"].shape[1] == 1  # one window each: the same sequences transformers reads
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = hf_tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"][:, 0], encoded["input_ids"])
    with torch.no_grad():
        ours = model.task.forward(model.model, batch)["token_logits"][:, 0]
        theirs = hf_model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    real = encoded["attention_mask"].bool()
    assert (ours[real] - theirs[real]).abs().max().item() < 1e-4


def test_raw_text_entity_format_trains(tmp_path):
    def jsonl(path, rows):
        lines = []
        for row in rows:
            text, entities = "", []
            for token, tag in zip(row["tokens"], row["tags"]):
                start = len(text)
                text += token + " "
                if tag.startswith("B-"):
                    entities.append({"start": start, "end": start + len(token), "label": tag[2:]})
                elif tag.startswith("I-"):
                    entities[-1]["end"] = start + len(token)
            lines.append(json.dumps({"text": text, "entities": entities}))
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    data = {"format": "entity-spans", "train": jsonl(tmp_path / "train.jsonl", ner_rows(16, 1)),
            "validation": jsonl(tmp_path / "valid.jsonl", ner_rows(4, 2))}
    result = nlpkit.run(tiny_recipe("ner", data, tmp_path / "runs"))
    assert "val_f1" in result.metrics
    assert nlpkit.load(result.run_dir).task.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
