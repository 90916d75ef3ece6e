"""Fine-tuning a pretrained mT5 folder for translation: a two-step run, `nlpkit translate` on it, and its export.

A tiny random `MT5ForConditionalGeneration` (untied head, one decoder layer
more than encoder layers) gets a byte-level BPE tokenizer in its folder and
is fine-tuned for two steps through a translation recipe with
`backbone.pretrained`. The run keeps the mT5 architecture, its weights move,
`nlpkit translate RUN` prints what `nlpkit.load(RUN).translate` returns, and
the exported folder loads as `MT5ForConditionalGeneration` with the run's
logits.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

import nlpkit
from nlpkit.backbones import from_pretrained
from nlpkit.cli import main
from nlpkit.testing import tiny_recipe, tiny_tokenizer
from tests.helpers import seq2seq_logit_gap, translation_batch
from tests.parity._tiny import FAMILIES, HIDDEN, Family, build

transformers = pytest.importorskip("transformers")

ENGLISH = "the a cat dog house tree red big small runs sees".split()
GERMAN = "der ein katze hund haus baum rot gross klein rennt sieht".split()
LEXICON = dict(zip(ENGLISH, GERMAN))


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = [[rng.choice(ENGLISH) for _ in range(rng.randint(3, 5))] for _ in range(n)]
    return [(" ".join(words), " ".join(LEXICON[w] for w in words)) for words in rows]


def _parallel(folder: Path, name: str, rows: list[tuple[str, str]]) -> str:
    (folder / f"{name}.en").write_text("".join(f"{s}\n" for s, _ in rows), encoding="utf-8")
    (folder / f"{name}.de").write_text("".join(f"{t}\n" for _, t in rows), encoding="utf-8")
    return str(folder / f"{name}.en")


def _pretrained_mt5(tokenizer: Any, folder: Path) -> Any:
    pad, eos = tokenizer.token_id("pad"), tokenizer.token_id("eos")
    config = dict(FAMILIES["t5-v1.1"].config, vocab_size=tokenizer.vocab_size, tie_word_embeddings=False,
                  pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    reference = build(Family("mt5", "encoder-decoder", "MT5ForConditionalGeneration", "MT5Config", config))
    # transformers 5 ties mT5's head in memory whatever the config says; give it its own, as released files have.
    reference.lm_head.weight = torch.nn.Parameter(torch.randn(tokenizer.vocab_size, HIDDEN) * 0.2)
    reference.save_pretrained(folder)
    tokenizer.save(folder)
    return reference


@pytest.mark.slow
def test_two_step_mt5_translation_then_translate_and_export(tmp_path: Path, capsys) -> None:
    rows = _pairs(40, 1)
    tokenizer = tiny_tokenizer([s for pair in rows for s in pair], vocab_size=300, max_length=32)
    folder = tmp_path / "pretrained"
    reference = _pretrained_mt5(tokenizer, folder)
    data = {"format": "parallel", "train": _parallel(tmp_path, "train", rows),
            "validation": _parallel(tmp_path, "val", _pairs(8, 2)), "options": {"target": "de"}}
    recipe = tiny_recipe("translation", data, tmp_path / "runs", "encoder-decoder",
                         options={"num_beams": 2, "max_new_tokens": 8})
    recipe["backbone"] = {"pretrained": str(folder)}
    recipe["tokenizer"] = {"max_length": 32}  # the folder's tokenizer, cut to 32 tokens
    result = nlpkit.run(recipe)

    model = nlpkit.load(result.run_dir)
    backbone = model.model.backbone
    assert backbone.config == from_pretrained(folder).config  # mT5's architecture (untied, unscaled) survives
    assert not torch.equal(backbone.get_input_embeddings().weight, reference.shared.weight)  # two steps moved it

    capsys.readouterr()
    assert main(["translate", str(result.run_dir), "the big dog"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == model.translate("the big dog", max_new_tokens=8, num_beams=2)

    exported = transformers.AutoModelForSeq2SeqLM.from_pretrained(model.export(tmp_path / "hf")).eval()
    assert type(exported).__name__ == "MT5ForConditionalGeneration"
    sources, targets = ["the big dog", "a cat sees the red tree"], ["der gross hund", "ein katze sieht der rot baum"]
    batch = translation_batch(model, sources, targets)
    assert seq2seq_logit_gap(model, exported, batch) <= 1e-4
