"""The run report of a real tiny run of each built-in task, checked against the run's own data.

Each run writes its report at its end (``report: true``); the tables are read
back from ``report.html`` and compared with what the run saved
(``predictions/validation.jsonl``), with ``nlpkit.load(run)``'s answers and
``evaluate``, and with the oracles (``seqeval``, ``sacrebleu``).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

import nlpkit
from nlpkit.cli import main
from nlpkit.report import Curves, Matrix, ReportSection, RunRecord, Table, _generic_curves, check_section
from nlpkit.testing import tiny_recipe, write_rows
from tests.helpers import sentiment_rows, write_csv
from tests.plugins.test_ner import conll_files
from tests.plugins.test_qa import qa_rows
from tests.plugins.test_translation import pairs, write_parallel

# Data text that must reach the page escaped, never as markup.
MARKUP = '<script>alert("x")</script> & co'


class _Tables(HTMLParser):
    """report.html's tables, each under the title of the heading before it; and the <pre> blocks likewise."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.pre: dict[str, str] = {}
        self.images: list[str] = []
        self._heading: str | None = None
        self._title = ""
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2", "h3"):
            self._heading = ""
        elif tag == "table":
            self._table = []
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._in_pre = True
            self.pre[self._title] = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self._title, self._heading = self._heading, None
        elif tag == "table" and self._table is not None:
            self.tables.setdefault(self._title, self._table)
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data
        if self._cell is not None:
            self._cell.append(data)
        if self._in_pre:
            self.pre[self._title] += data


def read_report(run: Path) -> _Tables:
    parser = _Tables()
    parser.feed((run / "report.html").read_text(encoding="utf-8"))
    return parser


def table(run: Path, title: str) -> list[dict[str, str]]:
    """A report table's rows as {column: cell}."""
    header, *rows = read_report(run).tables[title]
    return [dict(zip(header, row)) for row in rows]


def saved_predictions(run: Path) -> list[dict]:
    lines = (run / "predictions" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def with_report(recipe: dict, **training) -> dict:
    recipe["report"] = True
    recipe["training"].update(training)
    return recipe


# -- runs -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report-classification")
    validation = [{**row, "text": f"{row['text']} {MARKUP}"} for row in sentiment_rows(16, 2)]
    data = {"train": str(write_csv(tmp / "train.csv", sentiment_rows(48, 1))),
            "validation": str(write_csv(tmp / "validation.csv", validation))}
    return nlpkit.run(with_report(tiny_recipe("classification", data, tmp / "runs"), max_steps=6)).run_dir


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("report-ner")
    data = conll_files(tmp)
    recipe = with_report(tiny_recipe("ner", data, tmp / "runs"), max_steps=-1, epochs=3)
    recipe["trainer"]["val_check_interval"] = 1.0  # once an epoch
    recipe["optimization"]["lr"] = 3e-3
    return nlpkit.run(recipe).run_dir, data["validation"]


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report-qa")
    validation = qa_rows(6, 2, filler=4)
    validation[0]["context"] += f" {MARKUP}"
    data = {"train": str(write_rows(tmp / "train.jsonl", qa_rows(12, 1, filler=4))),
            "validation": str(write_rows(tmp / "valid.jsonl", validation))}
    recipe = tiny_recipe("qa", data, tmp / "runs", options={"doc_stride": 4, "max_question_length": 12})
    return nlpkit.run(with_report(recipe)).run_dir


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report-translation")
    validation = pairs(8, 2)
    validation[0] = (f"{validation[0][0]} {MARKUP}", f"{validation[0][1]} {MARKUP}")
    data = {"format": "parallel", "train": str(write_parallel(tmp, "train", pairs(48, 1))),
            "validation": str(write_parallel(tmp, "val", validation)), "options": {"target": "de"}}
    recipe = tiny_recipe("translation", data, tmp / "runs", "encoder-decoder", {"num_beams": 1, "max_new_tokens": 8})
    return nlpkit.run(with_report(recipe)).run_dir


@pytest.fixture(scope="module")
def generation_run(tmp_path_factory) -> Path:
    import random

    words = "the cat sat on a mat and the dog ran to the big red house by the sea".split()
    rng = random.Random(0)
    documents = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))} for _ in range(36)]
    tmp = tmp_path_factory.mktemp("report-generation")
    data = {"train": str(write_rows(tmp / "train.jsonl", documents[:24])),
            "validation": str(write_rows(tmp / "valid.jsonl", documents[24:]))}
    recipe = tiny_recipe("generation", data, tmp / "runs", "decoder",
                         {"sample_prompts": ["the cat", ""], "sample_max_new_tokens": 5})
    recipe["backbone"]["config"]["max_positions"] = 48
    return nlpkit.run(with_report(recipe)).run_dir


RUNS = ["classification_run", "ner_run", "qa_run", "translation_run", "generation_run"]


def run_folder(request, name: str) -> Path:
    value = request.getfixturevalue(name)
    return value[0] if isinstance(value, tuple) else value


# -- every task ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUNS)
def test_the_report_is_one_self_contained_file_with_its_figures_beside_it(request, name):
    run = run_folder(request, name)
    page = (run / "report.html").read_text(encoding="utf-8")
    report = read_report(run)
    # Nothing is fetched to show it: every image is inline, and the page links to nothing.
    assert report.images and all(src.startswith("data:image/png;base64,") for src in report.images)
    assert not re.search(r"""(?:href|src)=["'](?!data:)""", page) and "<script" not in page.lower()
    # The figures in report/ are the inline images, in order.
    figures = sorted((run / "report").glob("*.png"))
    assert [f.read_bytes() for f in figures] == [base64.b64decode(src.split(",", 1)[1]) for src in report.images]
    # The generic part: losses, a curve per validation metric, the learning rate the run logged; recipe and versions.
    titles = re.findall(r'<img src="[^"]*" alt="([^"]*)"', page)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"Loss", "Validation metrics", "Learning rate"} <= set(titles)
    drawn = re.search(r"drawn: ([^<]*)</p>", page).group(1).split(", ")
    assert set(drawn) == {key for key in metrics if key.startswith("val_") and key != "val_loss"}
    assert report.pre["Recipe"] == (run / "recipe.yaml").read_text(encoding="utf-8")
    versions = {row["package"]: row["version"] for row in table(run, "Versions")}
    assert versions["torch"] == json.loads((run / "run.json").read_text())["versions"]["torch"]
    finals = {row["metric"]: float(row["value"]) for row in table(run, "Final metrics")}
    assert finals == pytest.approx(metrics, abs=1e-4)


@pytest.mark.parametrize("name", RUNS)
def test_the_saved_predictions_are_the_run_models_answers_to_the_validation_split(request, name):
    run = run_folder(request, name)
    rows = saved_predictions(run)
    model = nlpkit.load(run)
    inputs = [{k: v for k, v in row["example"].items() if k not in model.task.target_columns} for row in rows]
    if model.task.name == "ner":  # predict takes text: the words joined by spaces, which it cuts back into them
        inputs = [" ".join(example["tokens"]) for example in inputs]
    answers = model.predict(inputs)
    assert len(rows) == len(answers) > 0
    for row, answer in zip(rows, answers):
        assert_close(row["prediction"], json.loads(json.dumps(answer)))


def assert_close(got, expected, where="prediction"):
    """Equal structures; floats (scores, probabilities) within 1e-4."""
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), where
        for key in expected:
            assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_close(a, b, f"{where}[{i}]")
    else:
        assert got == expected, where


@pytest.mark.parametrize("name", ["classification_run", "qa_run", "translation_run"])
def test_data_text_is_escaped_never_markup(request, name):
    page = (run_folder(request, name) / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "<script" not in page.lower() and " & co" not in page


# -- classification -------------------------------------------------------------------------------------------------


def test_the_confusion_matrix_counts_the_saved_predictions(classification_run):
    rows = saved_predictions(classification_run)
    counts = Counter((row["example"]["label"], row["prediction"]["label"]) for row in rows)
    matrix = table(classification_run, "Confusion matrix")
    labels = [key for key in matrix[0] if key != "reference \\ prediction"]
    assert labels == ["neg", "pos"]
    shown = {(row["reference \\ prediction"], label): int(row[label]) for row in matrix for label in labels}
    assert shown == {(gold, predicted): counts[(gold, predicted)] for gold in labels for predicted in labels}
    assert sum(shown.values()) == 16
    # The per-label table agrees with the run's own metrics: its F1s average to val_macro_f1.
    metrics = json.loads((classification_run / "metrics.json").read_text())
    per_label = table(classification_run, "Per-label precision, recall and F1")
    assert sum(float(row["F1"]) for row in per_label) / 2 == pytest.approx(metrics["val_macro_f1"], abs=1e-4)
    assert sum(counts[(label, label)] for label in labels) / 16 == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    assert [int(row["support"]) for row in per_label] == [sum(n for (g, _), n in counts.items() if g == label)
                                                         for label in labels]


# -- NER ------------------------------------------------------------------------------------------------------------


def test_the_ner_per_type_table_equals_evaluate(ner_run):
    run, validation = ner_run
    evaluated = nlpkit.load(run).evaluate(validation)
    assert 0 < evaluated["f1"] < 1  # a model that finds some entities and misses some: the comparison says something
    rows = {row["type"]: row for row in table(run, "Per-type precision, recall and F1")}
    assert set(rows) == {"LOC", "ORG", "PER", "all (micro)"}
    for type_ in ("LOC", "ORG", "PER"):
        assert float(rows[type_]["F1"]) == pytest.approx(evaluated[f"f1_{type_}"], abs=1e-4)
    micro = rows["all (micro)"]
    assert [float(micro[k]) for k in ("precision", "recall", "F1")] == pytest.approx(
        [evaluated["precision"], evaluated["recall"], evaluated["f1"]], abs=1e-4)


def test_the_ner_span_errors_are_those_seqeval_sees(ner_run):
    from seqeval.metrics.sequence_labeling import get_entities

    run, _ = ner_run
    expected: Counter = Counter()
    for row in saved_predictions(run):
        words = row["example"]["tokens"]
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]  # words joined by single spaces
        gold = {(s, e + 1): t for t, s, e in get_entities(row["example"]["tags"])}
        predicted = {(starts.index(x["start"]), starts.index(x["start"]) + len(x["text"].split())): x["label"]
                     for x in row["prediction"]["entities"]}
        for (s, e), t in gold.items():
            if (s, e) not in predicted:
                expected[("missed", t, "", " ".join(words[s:e]))] += 1
            elif predicted[(s, e)] != t:
                expected[("wrong type", t, predicted[(s, e)], " ".join(words[s:e]))] += 1
        for (s, e), t in predicted.items():
            if (s, e) not in gold:
                expected[("spurious", "", t, " ".join(words[s:e]))] += 1
    errors = table(run, "Most frequent span errors")
    assert errors, "the tiny model makes mistakes: the table shows them"
    shown = {(r["error"], r["reference type"], r["predicted type"], r["span"]): int(r["times"]) for r in errors}
    assert shown == dict(expected.most_common(len(shown)))  # the most frequent, with their counts
    assert [int(r["times"]) for r in errors] == sorted((int(r["times"]) for r in errors), reverse=True)
    for row in errors:  # each with a sentence that holds it, marked
        assert f"[[ {row['span']} ]]" in row["first sentence (span in [[ ]])"]


# -- question answering -------------------------------------------------------------------------------------------


def test_the_qa_scores_are_the_runs_and_the_worst_answers_come_first(qa_run):
    metrics = json.loads((qa_run / "metrics.json").read_text())
    (totals,) = table(qa_run, "Scores of the saved answers")
    assert float(totals["exact match"]) == pytest.approx(metrics["val_exact_match"], abs=1e-3)
    assert float(totals["F1"]) == pytest.approx(metrics["val_f1"], abs=1e-3)
    worst = table(qa_run, "Worst answers")
    assert len(worst) == 6 and [float(r["F1"]) for r in worst] == sorted(float(r["F1"]) for r in worst)
    answers = Counter((row["example"]["question"], row["prediction"]["answer"]) for row in saved_predictions(qa_run))
    assert Counter((row["question"], row["answer"]) for row in worst) == answers


# -- translation --------------------------------------------------------------------------------------------------


def test_the_translation_scores_are_the_runs_and_the_worst_sentences_are_shown_beside_their_references(translation_run):
    sacrebleu = pytest.importorskip("sacrebleu")
    metrics = json.loads((translation_run / "metrics.json").read_text())
    totals = {row["metric"]: float(row["value"]) for row in table(translation_run, "Scores of the saved translations")}
    assert totals == pytest.approx({"bleu": metrics["val_bleu"], "chrf": metrics["val_chrf"]}, abs=1e-3)
    worst = table(translation_run, "Worst-translated validation sentences")
    model = nlpkit.load(translation_run)
    assert [row["translation"] for row in worst] == model.translate([row["source"] for row in worst])
    scores = [float(row["chrF"]) for row in worst]
    assert len(worst) == 8 and scores == sorted(scores)
    for row, score in zip(worst, scores):
        assert score == pytest.approx(sacrebleu.sentence_chrf(row["translation"], [row["reference"]]).score, abs=1e-3)
    assert 'alt="BLEU and chrF per validation"' in (translation_run / "report.html").read_text()


# -- generation ---------------------------------------------------------------------------------------------------


def test_the_generation_report_shows_perplexity_the_samples_and_the_hardest_texts(generation_run):
    report = read_report(generation_run)
    page = (generation_run / "report.html").read_text(encoding="utf-8")
    assert 'alt="Perplexity"' in page
    samples = (generation_run / "samples.txt").read_text(encoding="utf-8")
    assert samples.strip() and report.pre["Samples"] == samples.rstrip("\n")
    hardest = table(generation_run, "Hardest validation texts")
    scored = nlpkit.load(generation_run).predict([row["text"] for row in hardest])
    assert [float(row["perplexity"]) for row in hardest] == pytest.approx([s["perplexity"] for s in scored], rel=1e-4)
    assert len(hardest) == 10 and [float(r["perplexity"]) for r in hardest] == sorted(
        (float(r["perplexity"]) for r in hardest), reverse=True)


# -- the command, the recipe key, the generic part -----------------------------------------------------------------


def test_report_false_writes_none_and_nlpkit_report_writes_it_from_the_folder(tmp_path, capsys):
    data = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(24, 1))),
            "validation": str(write_csv(tmp_path / "validation.csv", sentiment_rows(8, 2)))}
    run = nlpkit.run(tiny_recipe("classification", data, tmp_path / "runs")).run_dir  # report: false
    assert not (run / "report.html").exists() and len(saved_predictions(run)) == 8
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    assert sum(int(v) for row in table(run, "Confusion matrix") for k, v in row.items() if k in ("neg", "pos")) == 8
    # Not a run folder: one line, exit code 2.
    assert main(["report", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("nlpkit: error: ") and "not an nlpkit run folder" in line


def test_throughput_is_drawn_from_the_columns_that_hold_one(tmp_path):
    history = [{"step": 0.0, "train_loss": 2.0, "train|tokens_per_sec": 900.0}, {"step": 1.0, "val_loss": 1.5},
               {"step": 10.0, "train_loss": 1.0, "train|tokens_per_sec": 1100.0}]
    parts, notes = _generic_curves(RunRecord(tmp_path, {}, history, {}))
    curves = {part.title: part for part in parts if isinstance(part, Curves)}
    assert curves["Throughput"].series == {"train|tokens_per_sec": [(0.0, 900.0), (10.0, 1100.0)]}
    assert curves["Loss"].series == {"train_loss": [(0.0, 2.0), (10.0, 1.0)], "val_loss": [(1.0, 1.5)]}
    parts, notes = _generic_curves(RunRecord(tmp_path, {}, history[1:2], {}))
    assert "Throughput" not in {part.title for part in parts} and any("no throughput" in note for note in notes)


THIRD_PARTY = """
import nlpkit
from nlpkit.tasks import Curves, Matrix, ReportSection, Table, Task, Text
from nlpkit_classification import Classification


class Reviews(Classification):
    name = "reviews"

    def report_section(self, predictions, run):
        wrong = [p for p in predictions if p.prediction["label"] != p.example["label"]]
        scores = [[sum(p.prediction["scores"][label] for p in predictions) / len(predictions) for label in self.labels]]
        return ReportSection("Reviews <b>& errors</b>", [
            Table("Wrong answers", ["text", "label", "answer"],
                  [[p.example["text"], p.example["label"], p.prediction["label"]] for p in wrong]),
            Matrix("Mean scores", ["all"], self.labels, scores),
            Curves("Validation loss again", {"val_loss": run.curve("val_loss")}),
            Text("A word", "<i>text</i> & more"),
        ], note="a third-party section")


class Quiet(Classification):
    name = "quiet"
    report_section = Task.report_section  # the contract's default: no section


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [Reviews, Quiet]
"""


def test_a_third_party_task_adds_its_own_section_and_one_without_gets_the_generic_part(tmp_path, monkeypatch):
    (tmp_path / "report_plugin.py").write_text(THIRD_PARTY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    validation = [{**row, "text": f"{row['text']} {MARKUP}"} for row in sentiment_rows(8, 2)]
    data = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(24, 1))),
            "validation": str(write_csv(tmp_path / "validation.csv", validation))}
    run = nlpkit.run(with_report(tiny_recipe("reviews", data, tmp_path / "runs")), plugins=["report_plugin"]).run_dir
    page = (run / "report.html").read_text(encoding="utf-8")
    rows = saved_predictions(run)
    wrong = [[r["example"]["text"], r["example"]["label"], r["prediction"]["label"]] for r in rows
             if r["prediction"]["label"] != r["example"]["label"]]
    assert read_report(run).tables["Wrong answers"][1:] == wrong
    assert "<h2>Reviews &lt;b&gt;&amp; errors&lt;/b&gt;</h2>" in page and "<b>" not in page
    assert read_report(run).pre["A word"] == "<i>text</i> & more" and "&lt;i&gt;text&lt;/i&gt; &amp; more" in page
    assert {'alt="Mean scores"', 'alt="Validation loss again"'} <= set(re.findall(r'alt="[^"]*"', page))
    (mean,) = table(run, "Mean scores")
    assert float(mean["neg"]) + float(mean["pos"]) == pytest.approx(1.0, abs=1e-3)

    quiet = nlpkit.run(with_report(tiny_recipe("quiet", data, tmp_path / "runs")), plugins=["report_plugin"]).run_dir
    page = (quiet / "report.html").read_text(encoding="utf-8")
    assert "task &#x27;quiet&#x27; adds no section of its own" in page and 'alt="Loss"' in page


@pytest.mark.parametrize("section, message", [
    (ReportSection("s", [Table("t", ["a", "b"], [[1, 2], [1]])]), "part 1 (Table 't'): row 2 has 1 cells for 2 columns"),
    (ReportSection("s", [Matrix("m", ["r"], ["a", "b"], [[1]])]), "part 1 (Matrix 'm'): expected 1 rows of 2 values"),
    (ReportSection("s", [Table("t", [], []), Curves("c", {"x": [(1, "a")]})]), "part 2 (Curves 'c'): series 'x'"),
    (ReportSection("s", ["a text"]), "a part must be a Table, Matrix, Curves or Text"),
    ("a section", "expected a ReportSection or None, got str"),
])
def test_a_section_nlpkit_cannot_render_is_refused_naming_the_part(section, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_section(section)


# -- in a browser ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(classification_run, tmp_path):
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    shot = tmp_path / "report.png"
    # Offline on purpose: the report must need no network.
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,1600", "--proxy-server=127.0.0.1:9",
                    (classification_run / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    pixels = list(image.getdata())
    non_white = sum(1 for r, g, b in pixels if r + g + b < 720) / len(pixels)
    assert image.size == (1200, 1600)
    assert len(set(pixels[::97])) > 10 and non_white > 0.03, f"a blank page? {non_white:.1%} of pixels not white"
