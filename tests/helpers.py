"""Tiny labelled data files and tiny recipes that train in seconds."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

POSITIVE = "good great fine lovely superb bright happy warm kind pleasant".split()
NEGATIVE = "bad awful poor dreadful grim dull sad cold cruel nasty".split()
NEUTRAL = "the a movie film story plot actor scene day book".split()


def _sentence(rng: random.Random, words: list[str]) -> str:
    picked = [rng.choice(words) for _ in range(rng.randint(1, 3))] + [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 5))]
    rng.shuffle(picked)
    return " ".join(picked)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sentiment_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Single sentences labelled pos/neg by the words they contain."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        rows.append({"text": _sentence(rng, POSITIVE if label == "pos" else NEGATIVE), "label": label})
    return rows


def pair_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Sentence pairs labelled 'same' when both sentences have the same sentiment."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice([POSITIVE, NEGATIVE]), rng.choice([POSITIVE, NEGATIVE])
        rows.append({"premise": _sentence(rng, a), "hypothesis": _sentence(rng, b), "relation": "same" if a is b else "different"})
    return rows


def multilabel_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Sentences with zero to two of the tags pos / neg / long."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags, words = [], []
        if rng.random() < 0.5:
            tags.append("pos")
            words += rng.sample(POSITIVE, 2)
        if rng.random() < 0.5:
            tags.append("neg")
            words += rng.sample(NEGATIVE, 2)
        words += [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 4))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": tags})
    return rows


class RunsCodeWhenUnpickled:
    """What a malicious pickle holds: unpickling it runs `touch TARGET` (a test then checks TARGET is absent)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.system, (f"touch {self.target}",))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_recipe(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A recipe that trains the tiny encoder for a few steps on files in ``tmp_path``."""
    recipe: dict[str, Any] = {
        "task": "classification",
        "backbone": {"preset": "encoder-tiny", "config": {"num_layers": 1, "hidden_size": 64, "intermediate_size": 128}},
        "tokenizer": {"train": "wordpiece", "vocab_size": 200, "max_length": 32, "min_frequency": 1},
        "optimization": {"lr": 3e-3},
        "training": {"batch_size": 16, "epochs": 3, "seed": 0, "precision": "32-true"},  # the same figures on any CPU
        "trainer": {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0},
        "output_dir": str(tmp_path / "runs"),
        "report": False,  # drawing the report costs more than these runs train (tests/integration/test_report.py)
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


def save_tiny_bert(folder: Path, tokenizer: Any) -> Path:
    """A random 2-layer, 32-wide BERT saved by transformers (the oracle), with ``tokenizer`` saved beside it."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save(folder)
    return folder


def assert_one_line_error(code: int, captured: Any, parts: list[str]) -> None:
    """A user error as the CLI reports it: exit code 2, one stderr line ``nlpkit: error: ...`` holding every part."""
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("nlpkit: error: "), captured.err
    for part in parts:
        assert part in lines[0], lines[0]


def translation_batch(model: Any, sources: list[str], targets: list[str]) -> dict[str, Any]:
    """A loaded translation run's training batch of these pairs (teacher forcing: decoder inputs and labels)."""
    features = model.task.encode({"source": sources, "target": targets})
    return model.task.collate([dict(zip(features, values)) for values in zip(*features.values())])


def seq2seq_logit_gap(model: Any, hf_model: Any, batch: dict[str, Any]) -> float:
    """The largest logit difference between a loaded translation run and a `transformers` seq2seq model.

    Both read the same batch (`translation_batch`); padded decoder positions are left out.
    """
    import torch

    with torch.no_grad():
        ours = model.task.forward(model.model, batch)
        theirs = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          decoder_input_ids=batch["decoder_input_ids"],
                          decoder_attention_mask=batch["decoder_attention_mask"]).logits
    real = batch["decoder_attention_mask"].bool()
    return float((ours[real] - theirs[real]).abs().max())
