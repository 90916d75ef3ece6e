"""Packed rows and per-document masks: each example computed as if it were alone in its row."""

from __future__ import annotations

import dataclasses
import logging
import random
from types import SimpleNamespace

import datasets
import pytest
import torch

from nlpkit.backbones.decoder import Decoder
from nlpkit.backbones.presets import decoder_tiny
from nlpkit.errors import NlpkitError
from nlpkit.testing import tiny_tokenizer
from nlpkit_generation import IGNORE, LanguageModeling, LanguageModelingOptions

WORDS = "the cat sat on a mat and the dog ran to the big red house by the sea".split()


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"text": _sentence(rng, 1, 6), "completion": " " + _sentence(rng, 1, 12)} for _ in range(n)]


def _task(**options) -> LanguageModeling:
    tokenizer = tiny_tokenizer(WORDS * 4, max_length=256)
    task = LanguageModeling(LanguageModelingOptions(**options), tokenizer)
    return task


def _model(task: LanguageModeling, **config) -> SimpleNamespace:
    torch.manual_seed(0)
    backbone_config = dataclasses.replace(decoder_tiny(), vocab_size=task.tokenizer.vocab_size, **config)
    return SimpleNamespace(backbone=Decoder(backbone_config).eval())


def _alone(task: LanguageModeling, model, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and summed token loss of one unpacked example."""
    batch = task.collate([features])
    with torch.no_grad():
        logits = task.forward(model, batch)
    counted = batch["labels"] != IGNORE
    return logits[0], task._token_losses(logits, batch["labels"])[counted].sum()


# Rotary attention depends on position differences only, so it would hide positions that do not restart per
# example: GPT-2's learned positions show them.
@pytest.mark.parametrize("config", [{}, {"sliding_window": 4}, {"position_embedding": "learned"}],
                         ids=["full", "sliding-window", "learned-positions"])
def test_a_packed_batch_has_the_logits_and_loss_of_its_examples_run_one_by_one(config):
    task = _task(block_size=48, packing=True)
    model = _model(task, **config)
    dataset = datasets.Dataset.from_list(_pairs(12))
    task.setup({"train": dataset})
    unpacked = LanguageModeling(dataclasses.replace(task.config, packing=False), task.tokenizer).prepare(dataset)
    rows = task.prepare(dataset)
    assert len(rows) < len(unpacked)  # several examples share a row
    batch = task.collate([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        packed_logits = task.forward(model, batch)
        packed_loss = task.loss(packed_logits, batch)

    # Which unpacked example each packed segment is: match by its tokens (every example is in exactly one row).
    by_tokens = {tuple(f["input_ids"][:-1]): f for f in unpacked}
    seen, losses, tokens = 0, [], 0
    for row in range(len(rows)):
        documents = batch["document_ids"][row]
        for number in documents.unique().tolist():
            if number == 0:  # padding
                continue
            where = documents == number
            features = by_tokens[tuple(batch["input_ids"][row][where].tolist())]
            logits, loss = _alone(task, model, features)
            torch.testing.assert_close(packed_logits[row][where], logits, atol=1e-5, rtol=0)
            losses.append(loss)
            tokens += int((batch["labels"][row][where] != IGNORE).sum())
            seen += 1
    assert seen == len(unpacked)
    # The packed loss is the mean over the targets of all its examples: their losses summed, over their targets.
    torch.testing.assert_close(packed_loss, torch.stack(losses).sum() / tokens, atol=1e-5, rtol=0)


def test_packing_never_splits_an_example_and_truncates_only_what_is_longer_than_a_row(caplog):
    task = _task(block_size=64, packing=True)
    rng = random.Random(1)
    rows = _pairs(20) + [{"text": _sentence(rng, 30, 30), "completion": " " + _sentence(rng, 30, 30)}]
    dataset = datasets.Dataset.from_list(rows)
    task.setup({"train": dataset})
    unpacked = LanguageModeling(dataclasses.replace(task.config, packing=False), task.tokenizer).prepare(dataset)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nlpkit"):
        packed = task.prepare(dataset)
        task.prepare(dataset)  # prepare runs twice per split (prepare_data, then setup): reported once
    assert caplog.messages == ["generation: 1 of 21 examples are longer than block_size + 1 (65 tokens): truncated"]
    segments = []
    for row in packed:
        assert len(row["input_ids"]) <= 64
        for number in sorted(set(row["document_ids"])):
            positions = [p for p, d in zip(row["position_ids"], row["document_ids"]) if d == number]
            assert positions == list(range(len(positions)))  # positions restart with each example
            segments.append(tuple(t for t, d in zip(row["input_ids"], row["document_ids"]) if d == number))
    expected = sorted(tuple(f["input_ids"][:-1][:64]) for f in unpacked)
    assert sorted(segments) == expected  # every example once, whole (the long one cut to a row)


def test_document_mask_computes_each_document_of_a_block_as_if_alone():
    task = _task(block_size=40, document_mask=True)
    model = _model(task)
    rng = random.Random(2)
    documents = [{"text": _sentence(rng, 3, 8)} for _ in range(5)]
    task.setup({"train": datasets.Dataset.from_list(documents)})
    block = task.prepare(datasets.Dataset.from_list(documents))[0]
    batch = task.collate([block])
    with torch.no_grad():
        logits = task.forward(model, batch)[0]
    eos = task.end_of_text
    ids = batch["input_ids"][0]
    numbers = batch["document_ids"][0]
    assert len(numbers.unique()) > 2
    for number in numbers.unique().tolist()[1:]:  # the first may start mid-document: it has no end-of-text first
        where = numbers == number
        alone = ids[where]
        assert alone[0] == eos  # each document opens with the end-of-text token, at position 0
        with torch.no_grad():
            expected = task.forward(model, {"input_ids": alone[None], "attention_mask": torch.ones_like(alone)[None]})
        torch.testing.assert_close(logits[where], expected[0], atol=1e-5, rtol=0)
    # Without the mask, a later document sees the earlier ones: its logits differ.
    plain = _task(block_size=40)
    plain_block = plain.prepare(datasets.Dataset.from_list(documents))[0]
    with torch.no_grad():
        mixed = task.forward(model, plain.collate([plain_block]))[0]
    assert not torch.allclose(mixed[numbers == numbers.max()], logits[numbers == numbers.max()], atol=1e-3)


def test_packing_plain_text_or_masking_documents_of_examples_is_refused_in_one_line():
    text = datasets.Dataset.from_list([{"text": "the cat"}])
    with pytest.raises(NlpkitError, match="generation.packing: packs prompt/completion and chat examples"):
        _task(packing=True).setup({"train": text})
    pairs = datasets.Dataset.from_list(_pairs(2))
    with pytest.raises(NlpkitError, match="generation.document_mask: applies to plain text"):
        _task(document_mask=True).setup({"train": pairs})
