"""Parity of mT5 and of asymmetric BART / Marian encoder-decoders with `transformers`.

mT5 is T5 v1.1 under its own model type (gated-GELU, an untied head that
never rescales the decoder output); the tiny one here has its own vocabulary
size and one decoder layer more than encoder layers. The BART and Marian
models give their stacks different head counts (4 and 2 over a width of
32), feed-forward widths and layer counts, so that a decoder built, cached
or exported with the encoder's sizes fails. Each is compared with
`transformers` on a right-padded batch (hidden states and logits), decoded
step by step through the KV cache against the full pass, generated greedily
and with 3 beams (token for token, through `nlpkit.generation` and through
`nlpkit.load(...).translate`), and exported back to its
`*ForConditionalGeneration` class.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import tokenizers
import torch

import nlpkit
from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import checkpoint_config, save_pretrained
from nlpkit.errors import NlpkitError
from nlpkit.generation import generate_ids, resolve_options
from tests.parity._tiny import FAMILIES, HIDDEN, TOLERANCE, Family, build, max_diff, right_padded_batch, transformers

MT5_VOCAB = 120
_ASYMMETRIC = dict(encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=2,
                   encoder_ffn_dim=48, decoder_ffn_dim=40)
SEQ2SEQ = {
    "mt5": Family("mt5", "encoder-decoder", "MT5ForConditionalGeneration", "MT5Config",
                  dict(FAMILIES["t5-v1.1"].config, vocab_size=MT5_VOCAB, tie_word_embeddings=False)),
    "bart": dataclasses.replace(FAMILIES["bart"], config={**FAMILIES["bart"].config, **_ASYMMETRIC}),
    "marian": dataclasses.replace(FAMILIES["marian"], config={**FAMILIES["marian"].config, **_ASYMMETRIC}),
}
HEAD_CLASSES = {"mt5": "MT5ForConditionalGeneration", "bart": "BartForConditionalGeneration",
                "marian": "MarianMTModel"}
PAD = 3  # a fill value no source uses, so a hypothesis that ends early is told apart
SOURCES = [[5, 6, 7, 8, 9, 10, 2], [12, 13, 2], [20, 21, 22, 23, 2]]


def _generating(name: str) -> Family:
    """The family as generated with: mT5 with as many decoder as encoder layers, the others as they are.

    `transformers`' T5-style cache sizes itself by the encoder's layer count
    and fails on mT5's extra decoder layer (BART and Marian generate with
    theirs); heads and widths stay asymmetric.
    """
    family = SEQ2SEQ[name]
    if name != "mt5":
        return family
    return dataclasses.replace(family, config={**family.config, "num_decoder_layers": 2})


def _reference(family: Family) -> Any:
    model = build(family)
    if family.name == "mt5":
        # transformers 5 ties mT5's head in memory whatever the config says; give it its own, as released files have.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(MT5_VOCAB, HIDDEN) * 0.2)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """Per family the reference head-class model and its saved folder, built once for the module."""
    found = {}
    for name, family in SEQ2SEQ.items():
        folder = tmp_path_factory.mktemp(name)
        reference = _reference(family)
        reference.save_pretrained(folder)
        found[name] = reference, folder
    return found


def _batch(reference: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = right_padded_batch(16, reference.config.pad_token_id)
    target = torch.randint(3, 90, (ids.shape[0], 6), generator=torch.Generator().manual_seed(2))
    return ids, mask, target


def test_configs_read_the_decoder_sizes(saved: dict[str, tuple[Any, Path]]) -> None:
    for name in ("bart", "marian"):
        config = checkpoint_config(saved[name][1]).config
        assert (config.num_heads, config.resolved_num_decoder_heads) == (4, 2)
        assert (config.intermediate_size, config.resolved_decoder_intermediate_size) == (48, 40)
        assert (config.num_layers, config.resolved_num_decoder_layers) == (2, 3)
        ours = from_pretrained(saved[name][1])
        assert ours.encoder.layers[0].attention.num_heads == 4
        assert ours.decoder.layers[0].attention.num_heads == 2
        assert ours.decoder.layers[0].cross_attention.num_heads == 2
    mt5 = from_pretrained(saved["mt5"][1]).config  # tying is settled by the weights: the file's head is its own
    assert (mt5.vocab_size, mt5.gated_mlp, mt5.activation) == (MT5_VOCAB, True, "gelu_tanh")
    assert not mt5.tie_word_embeddings and not mt5.scale_lm_head_input
    assert (mt5.num_layers, mt5.resolved_num_decoder_layers) == (2, 3)


@pytest.mark.parametrize("name", list(SEQ2SEQ))
def test_outputs_match_transformers(name: str, saved: dict[str, tuple[Any, Path]]) -> None:
    reference, folder = saved[name]
    ours = from_pretrained(folder)
    base = transformers.AutoModel.from_pretrained(folder).eval()
    ids, mask, target = _batch(reference)
    with torch.no_grad():
        out = ours(ids, attention_mask=mask, decoder_input_ids=target)
        expected = base(ids, attention_mask=mask, decoder_input_ids=target)
        logits = reference(ids, attention_mask=mask, decoder_input_ids=target).logits
        diffs = {"encoder_hidden": max_diff(out.encoder_last_hidden_state, expected.encoder_last_hidden_state, mask),
                 "hidden": max_diff(out.last_hidden_state, expected.last_hidden_state),
                 "logits": max_diff(ours.logits(out.last_hidden_state), logits)}
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("name", list(SEQ2SEQ))
def test_cached_decoding_matches_full_pass(name: str, saved: dict[str, tuple[Any, Path]]) -> None:
    reference, folder = saved[name]
    ours = from_pretrained(folder)
    ids, mask, target = _batch(reference)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask, decoder_input_ids=target).last_hidden_state
        expected = reference(ids, attention_mask=mask, decoder_input_ids=target).logits
        out = ours(attention_mask=mask, decoder_input_ids=target[:, :1], encoder_outputs=ours.encode(ids, mask),
                   use_cache=True)
        cache = out.past_key_values
        # The cache holds the decoder's layers and heads (3 and 2 in BART and Marian), not the encoder's.
        config = ours.config
        head_dim = config.resolved_head_dim if name == "mt5" else HIDDEN // config.resolved_num_decoder_heads
        assert len(cache.keys) == config.resolved_num_decoder_layers
        assert cache.keys[0].shape[1] == config.resolved_num_decoder_heads and cache.keys[0].shape[3] == head_dim
        steps = [out.last_hidden_state]
        for t in range(1, target.shape[1]):
            out = ours(attention_mask=mask, decoder_input_ids=target[:, t : t + 1], past_key_values=cache,
                       use_cache=True)
            steps.append(out.last_hidden_state)
        stepwise = torch.cat(steps, dim=1)
    assert max_diff(stepwise, full) <= 1e-5
    assert max_diff(ours.logits(stepwise), expected) <= TOLERANCE


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources, as an encoder-decoder takes them."""
    longest = max(map(len, rows))
    ids, mask = torch.full((len(rows), longest), pad), torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


@pytest.mark.parametrize("name", list(SEQ2SEQ))
@pytest.mark.parametrize("options", [dict(), dict(num_beams=3)], ids=["greedy", "3-beams"])
def test_generation_matches_transformers(name: str, options: dict[str, Any], tmp_path: Path) -> None:
    reference = _reference(_generating(name))
    reference.save_pretrained(tmp_path / name)
    ours = from_pretrained(tmp_path / name)
    options = dict(max_new_tokens=8, do_sample=False, **options)
    ids, mask = _padded(SOURCES, PAD)
    with torch.no_grad():
        theirs = reference.generate(ids, attention_mask=mask, pad_token_id=PAD, **options)[:, 1:].tolist()
    config = reference.generation_config
    defaults = {"eos_token_id": config.eos_token_id, "decoder_start_token_id": config.decoder_start_token_id,
                "forced_eos_token_id": config.forced_eos_token_id}
    found = [row for rows in generate_ids(ours, SOURCES, resolve_options({**options, "pad_token_id": PAD}, defaults))
             for row in rows]
    assert len(found) == len(theirs)
    for i, (mine, expected) in enumerate(zip(found, theirs)):
        assert mine == expected[: len(mine)], f"row {i}: {mine} != {expected}"
        assert all(t == PAD for t in expected[len(mine):]), f"row {i} ends early: {mine} vs {expected}"


@pytest.mark.parametrize("name", list(SEQ2SEQ))
@pytest.mark.parametrize("options", [dict(), dict(num_beams=3)], ids=["greedy", "3-beams"])
def test_a_loaded_folder_translates_like_transformers(name: str, options: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / name
    reference = _reference(_generating(name))
    reference.save_pretrained(folder)
    vocab = reference.config.vocab_size
    # A word-level tokenizer whose token i is the word `w{i}`: comparing texts compares tokens.
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    words.save(str(folder / "tokenizer.json"))
    config = reference.generation_config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    ids, mask = _padded(SOURCES, pad)
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=mask, pad_token_id=pad, max_new_tokens=8, do_sample=False,
                                      **options)[:, 1:].tolist()
    expected = [row[: row.index(config.eos_token_id)] if config.eos_token_id in row else row for row in expected]
    answers = nlpkit.load(folder).translate([" ".join(f"w{t}" for t in row) for row in SOURCES], max_new_tokens=8,
                                            **options)
    assert [[int(word[1:]) for word in text.split()] for text in answers] == expected


@pytest.mark.parametrize("name", list(SEQ2SEQ))
def test_export_round_trip(name: str, saved: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    reference, folder = saved[name]
    ours = from_pretrained(folder)
    out = save_pretrained(ours, tmp_path / "exported", family=name)
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == [HEAD_CLASSES[name]]
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == HEAD_CLASSES[name]
    if name != "mt5":
        assert (hf["encoder_attention_heads"], hf["decoder_attention_heads"]) == (4, 2)
        assert (hf["encoder_ffn_dim"], hf["decoder_ffn_dim"]) == (48, 40)
    ids, mask, target = _batch(reference)
    with torch.no_grad():
        diff = max_diff(ours.logits(ours(ids, attention_mask=mask, decoder_input_ids=target).last_hidden_state),
                        reloaded(ids, attention_mask=mask, decoder_input_ids=target).logits)
    assert diff <= TOLERANCE
    assert from_pretrained(out).config == ours.config


def test_umt5_is_refused_in_one_line(tmp_path: Path) -> None:
    config = transformers.UMT5Config(vocab_size=MT5_VOCAB, d_model=HIDDEN, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
    transformers.UMT5ForConditionalGeneration(config).save_pretrained(tmp_path / "umt5")
    with pytest.raises(NlpkitError) as error:
        from_pretrained(tmp_path / "umt5")
    message = str(error.value)
    assert "model_type='umt5' cannot be expressed" in message and "relative position bias" in message
    assert "\n" not in message
