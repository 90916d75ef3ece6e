"""Fine-tuning each encoder family with each encoder head, then exporting to the family's head classes.

Each tiny random checkpoint (the parity tests' config of the family, sized
to a tokenizer trained on the task's words) is fine-tuned for two steps with
the classification, NER and question-answering heads through recipes with
`backbone.pretrained`. The head takes the family's layout (its family file's
`HEADS`: BERT's tanh pooler, RoBERTa's and ELECTRA's `classifier.dense` +
`out_proj` with tanh / GELU, DistilBERT's ReLU `pre_classifier` ...), and
the exported folder loads in the family's `*ForSequenceClassification`,
`*ForTokenClassification` or `*ForQuestionAnswering` with the run's logits.
The heads' own tests (test_classification.py, test_ner.py, test_qa.py)
cover their data and answers; these cover the families.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

import nlpkit
from nlpkit.testing import tiny_classification_data, tiny_classification_rows, tiny_recipe, tiny_tokenizer
from tests.parity._tiny import FAMILIES, Family, build
from tests.parity.test_deberta import VARIANTS
from tests.plugins.test_ner import conll_files, ner_rows
from tests.plugins.test_qa import qa_files, qa_rows, texts_of

transformers = pytest.importorskip("transformers")

# Two token types for every family here: nlpkit's trained tokenizers mark a pair's second segment with
# type 1 (RoBERTa's own tokenizer folders never do; the backbone parity tests keep its one type).
_TYPES = {"roberta": dict(type_vocab_size=2), "xlm-roberta": dict(type_vocab_size=2)}
# The parity tests' configs; DeBERTa's is its v3 variant (shared position projections, log buckets).
SPECS = {**FAMILIES, "deberta-v2": Family("deberta-v2", "encoder", "DebertaV2ForSequenceClassification",
                                          "DebertaV2Config", VARIANTS["v3"])}
ENCODERS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "modernbert", "deberta-v2"]
HEADS = {"classification": "AutoModelForSequenceClassification", "ner": "AutoModelForTokenClassification",
         "qa": "AutoModelForQuestionAnswering"}


def _task_data(task: str, folder: Path) -> tuple[dict[str, Any], list[str], dict[str, Any] | None]:
    """The recipe's data section, texts to train the tokenizer on, and the task's options."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "classification":
        return tiny_classification_data(folder, pairs=True), [r["text"] for r in tiny_classification_rows(200, 0)], None
    if task == "ner":
        return conll_files(folder), [" ".join(row["tokens"]) for row in ner_rows(200, 7)], None
    return qa_files(folder), texts_of(qa_rows(200, 11, filler=4)), {"doc_stride": 16, "max_question_length": 16}


def _pretrained(family: str, tokenizer: Any, folder: Path) -> None:
    spec = SPECS[family]
    pad = tokenizer.pad_token_id
    # 64 usable positions; RoBERTa's table has pad_token_id + 1 rows more (its positions count from there).
    positions = 64 + (pad + 1 if family in ("roberta", "xlm-roberta") else 0)
    config = dict(spec.config, **_TYPES.get(family, {}), vocab_size=tokenizer.vocab_size, pad_token_id=pad,
                  max_position_embeddings=positions)
    build(dataclasses.replace(spec, config=config)).save_pretrained(folder)
    tokenizer.save(folder)


def _inputs(hf_model: Any, batch: dict[str, Any], window: bool = False) -> dict[str, torch.Tensor]:
    """The batch's tensors that the transformers class takes (ModernBERT has no token types)."""
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids")
             if name in inspect.signature(hf_model.forward).parameters]
    return {name: batch[name][:, 0] if window else batch[name] for name in names}


def _logits(task: str, model: Any, hf_model: Any, tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours and transformers' logits on the same token ids, over real tokens."""
    if task == "classification":
        rows = tiny_classification_rows(3, 5, pairs=True)
        batch = model.task.collate(model.features({k: [r[k] for r in rows] for k in ("text", "text_pair")}))
        with torch.no_grad():
            return model.task.forward(model.model, batch), hf_model(**_inputs(hf_model, batch)).logits
    if task == "ner":
        batch = model.task.collate(model.features({"tokens": [row["tokens"] for row in ner_rows(4, 9)]}))
        ids, mask = batch["input_ids"][:, 0], batch["attention_mask"][:, 0]
        with torch.no_grad():
            ours = model.task.forward(model.model, batch)["token_logits"][:, 0]
            theirs = hf_model(input_ids=ids, attention_mask=mask).logits
        return ours[mask.bool()], theirs[mask.bool()]
    rows = qa_rows(4, 12)
    batch = model.task.collate(model.features({k: [r[k] for r in rows] for k in ("question", "context")}))
    inputs = _inputs(hf_model, batch, window=True)
    with torch.no_grad():
        ours, theirs = model.task.forward(model.model, batch), hf_model(**inputs)
    real = inputs["attention_mask"].bool()
    return (torch.stack([ours["start_logits"][:, 0][real], ours["end_logits"][:, 0][real]]),
            torch.stack([theirs.start_logits[real], theirs.end_logits[real]]))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(HEADS))
@pytest.mark.parametrize("family", ENCODERS)
def test_two_step_fine_tuning_exports_to_the_family_head_class(family: str, task: str, tmp_path: Path) -> None:
    data, texts, options = _task_data(task, tmp_path / "data")
    tokenizer = tiny_tokenizer(texts, kind="wordpiece", vocab_size=200, max_length=64)
    folder = tmp_path / "pretrained"
    _pretrained(family, tokenizer, folder)
    recipe = tiny_recipe(task, data, tmp_path / "runs", options=options)
    recipe["backbone"] = {"pretrained": str(folder)}
    recipe["tokenizer"] = {"max_length": 64}  # the folder's own tokenizer, within its 64 positions
    model = nlpkit.load(nlpkit.run(recipe).run_dir)

    out = model.export(tmp_path / "exported")
    hf_model = getattr(transformers, HEADS[task]).from_pretrained(out).eval()
    stem = transformers.AutoConfig.from_pretrained(folder).architectures[0].split("For")[0]
    assert type(hf_model).__name__.startswith(stem.removesuffix("Model"))
    ours, theirs = _logits(task, model, hf_model, tmp_path)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4


# Before the heads took their family's layout, NER's was `Sequential(Dropout, Linear)` and QA's a bare Linear.
OLD_NAMES = {"ner": {"head.out.": "head.1."}, "qa": {"head.out.": "head."}}


@pytest.mark.parametrize("task", list(OLD_NAMES))
def test_run_folders_from_before_the_family_layouts_still_load(task: str, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    data, texts, options = _task_data(task, tmp_path / "data")
    recipe = tiny_recipe(task, data, tmp_path / "runs", options=options)
    recipe["tokenizer"] = {"max_length": 64}
    run_dir = nlpkit.run(recipe).run_dir
    rows = ([" ".join(row["tokens"]) for row in ner_rows(3, 9)] if task == "ner"
            else [{"question": r["question"], "context": r["context"]} for r in qa_rows(3, 12)])
    expected = nlpkit.load(run_dir).predict(rows)
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    weights = load_file(old / "model.safetensors")
    [(new, before)] = OLD_NAMES[task].items()
    assert {f"{new}weight", f"{new}bias"} <= set(weights)  # the names this nlpkit writes
    save_file({before + name[len(new):] if name.startswith(new) else name: tensor for name, tensor in weights.items()},
              old / "model.safetensors")
    assert nlpkit.load(old).predict(rows) == expected
