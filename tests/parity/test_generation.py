"""Generation parity: nlpkit's decoding picks the same tokens as `transformers`' `generate`.

Tiny random checkpoints made with `transformers` (see `_tiny.py`) are loaded by
both libraries; a batch of prompts of different lengths (left-padded) goes
through greedy decoding, beam search (with n-best lists, length penalties and
each early-stopping mode), the repetition penalty and n-gram blocking, and
every generated token must be the same. Encoder-decoders (BART, Marian, T5) start
from their decoder start token and read the encoded source.

The same holds on the path users take, `nlpkit.load(folder)` (float32 weights
packed for oneDNN, the folder's own generation defaults, text in and text
out), in greedy search (with and without repeated tokens) and beam search, for
every decoder and encoder-decoder family; and in bfloat16 within the rounding
of bfloat16 itself (see
`test_a_folder_loaded_in_bfloat16_decodes_like_transformers_in_bfloat16`).
Seeded beam sampling draws the same hypotheses as `transformers` under the
same seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tokenizers
import torch

import nlpkit
from nlpkit.backbones import from_pretrained, layers
from nlpkit.generation import generate_ids, resolve_options
from tests.parity._tiny import FAMILIES, LAYERS, VOCAB, build, transformers

PAD = 3  # a fill value no prompt uses, so a hypothesis that ends early is told apart
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
SOURCES = [[5, 6, 7, 8, 9, 10, 2], [12, 13, 2], [20, 21, 22, 23, 2]]


def _family(name: str):
    family = FAMILIES[name]
    if name == "t5":
        # transformers' encoder-decoder cache sizes itself by the encoder's layer count, so its
        # generate fails on the parity model's extra decoder layer; generation uses a symmetric T5.
        family = dataclasses.replace(family, config={**family.config, "num_decoder_layers": LAYERS})
    return family


def _models(name: str, tmp_path: Path):
    reference = build(_family(name))
    reference.save_pretrained(tmp_path / name)
    return reference, from_pretrained(tmp_path / name)


def _padded(rows: list[list[int]], left: bool, pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), pad)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(longest - len(row), longest) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


def _reference(model, rows: list[list[int]], encoder_decoder: bool, pad: int = PAD, **options) -> list[list[int]]:
    ids, mask = _padded(rows, left=not encoder_decoder, pad=pad)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, pad_token_id=pad, **options)
    start = 1 if encoder_decoder else ids.shape[1]
    return out[:, start:].tolist()


def _same(ours: list[list[list[int]]], theirs: list[list[int]]) -> None:
    """Each hypothesis equals the reference row, whose remainder is only fill."""
    flat = [row for rows in ours for row in rows]
    assert len(flat) == len(theirs)
    for i, (mine, reference) in enumerate(zip(flat, theirs)):
        assert mine == reference[: len(mine)], f"hypothesis {i}: {mine} != {reference}"
        assert all(t == PAD for t in reference[len(mine):]), f"hypothesis {i} ends early: {mine} vs {reference}"


def _defaults(reference) -> dict[str, int | None]:
    """The generation defaults of a reference model that nlpkit is told about explicitly."""
    config = reference.generation_config
    return {"eos_token_id": config.eos_token_id, "decoder_start_token_id": config.decoder_start_token_id,
            "forced_eos_token_id": config.forced_eos_token_id}


def _check(name: str, tmp_path: Path, seed: int | None = None, **options) -> list[list[list[int]]]:
    """nlpkit and transformers generate the same tokens; with a `seed`, sampling from the same random stream."""
    reference, ours = _models(name, tmp_path)
    encoder_decoder = FAMILIES[name].kind == "encoder-decoder"
    rows = SOURCES if encoder_decoder else PROMPTS
    found = generate_ids(ours, rows, resolve_options({**options, "pad_token_id": PAD, "seed": seed}, _defaults(reference)))
    if seed is not None:
        torch.manual_seed(seed)
    _same(found, _reference(reference, rows, encoder_decoder, **options))
    return found


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_matches_transformers(name, tmp_path):
    _check(name, tmp_path, max_new_tokens=12, do_sample=False)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("beam_options", [
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=3, length_penalty=0.5, early_stopping=True),
    dict(num_beams=2, num_return_sequences=2, length_penalty=2.0, early_stopping="never"),
], ids=["3-beams", "n-best-early", "never"])
def test_beam_search_matches_transformers(name, beam_options, tmp_path):
    _check(name, tmp_path, max_new_tokens=10, do_sample=False, **beam_options)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("penalties", [
    dict(repetition_penalty=1.5),
    dict(no_repeat_ngram_size=2),
    dict(repetition_penalty=0.7, no_repeat_ngram_size=3, num_beams=3),
], ids=["repetition", "no-repeat-2", "both-beams"])
def test_penalties_match_transformers(name, penalties, tmp_path):
    _check(name, tmp_path, max_new_tokens=12, do_sample=False, **penalties)


@pytest.mark.parametrize("options", [dict(), dict(num_beams=4, num_return_sequences=3),
                                     dict(num_beams=3, early_stopping=True, length_penalty=0.0)],
                         ids=["greedy", "beams", "beams-early"])
def test_hypotheses_end_at_eos_like_transformers(options, tmp_path):
    # With EOS made likely, rows and beams end at different lengths (then hold padding).
    reference, ours = _models("gpt2", tmp_path)
    with torch.no_grad():  # the head is tied: EOS outscores token 53 wherever that one scores high
        ours.embeddings.token.weight[2] = ours.embeddings.token.weight[53] * 1.05
        reference.transformer.wte.weight[2] = reference.transformer.wte.weight[53] * 1.05
    options = dict(max_new_tokens=15, do_sample=False, **options)
    found = generate_ids(ours, PROMPTS, resolve_options({**options, "pad_token_id": PAD, "eos_token_id": 2}))
    _same(found, _reference(reference, PROMPTS, False, eos_token_id=2, **options))


@pytest.mark.parametrize("name", ["bart", "marian", "t5"])
@pytest.mark.parametrize("options", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beams"])
def test_encoder_decoder_matches_transformers(name, options, tmp_path):
    _check(name, tmp_path, max_new_tokens=8, do_sample=False, **options)


def test_sampling_with_a_seed_is_reproducible(tmp_path):
    _, ours = _models("llama", tmp_path)
    sampling = {"do_sample": True, "temperature": 1.3, "top_k": 20, "top_p": 0.9, "min_p": 0.01,
                "max_new_tokens": 12, "num_return_sequences": 2, "eos_token_id": 2}

    def sample(seed: int, global_seed: int) -> list[list[list[int]]]:
        torch.manual_seed(global_seed)  # the seed option alone decides: torch's global state must not matter
        return generate_ids(ours, PROMPTS, resolve_options({**sampling, "seed": seed}))

    first = sample(7, global_seed=0)
    assert first == sample(7, global_seed=1)
    # The same options but the seed: other samples, row by row (all six differ on this model).
    other = sample(8, global_seed=0)
    assert all(a != b for a, b in zip(sum(first, []), sum(other, [])))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("warpers", [
    dict(temperature=1.3, top_k=0, top_p=1.0),
    dict(temperature=0.8, top_k=20, top_p=0.9),
    dict(top_k=0, min_p=0.05),
    dict(top_k=0, top_p=0.8, num_return_sequences=2),
], ids=["temperature", "top-k-top-p", "min-p", "top-p-n"])
def test_seeded_sampling_matches_transformers(name, warpers, tmp_path):
    # Both draw from torch's CPU Mersenne twister with one multinomial per step on the same
    # probabilities: the call's own generator seeded with `seed` gives transformers' global-seed tokens.
    _check(name, tmp_path, seed=11, max_new_tokens=12, do_sample=True, **warpers)


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3)], ids=["greedy", "beams"])
def test_bad_words_match_transformers(options, tmp_path):
    reference, ours = _models("gpt2", tmp_path)
    plain = generate_ids(ours, PROMPTS, resolve_options({"max_new_tokens": 12, "pad_token_id": PAD}))
    # Ban the first token greedy picks for row 0 alone, and row 1's second token after its first:
    # both bans change what is generated.
    first, (a, b) = plain[0][0][0], plain[1][0][:2]
    bad = [[first], [a, b]]
    options = dict(max_new_tokens=12, do_sample=False, bad_words_ids=bad, **options)
    found = generate_ids(ours, PROMPTS, resolve_options({**options, "pad_token_id": PAD}))
    assert found[0][0][0] != first
    _same(found, _reference(reference, PROMPTS, False, **options))


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3)], ids=["greedy", "beams"])
def test_forced_bos_matches_transformers(options, tmp_path):
    # mBART-style: the first generated token is forced (a target-language code), the rest follows it.
    found = _check("bart", tmp_path, max_new_tokens=8, do_sample=False, forced_bos_token_id=17, **options)
    assert {hypothesis[0] for hypotheses in found for hypothesis in hypotheses} == {17}


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart"])
@pytest.mark.parametrize("options", [
    dict(num_beams=3),
    dict(num_beams=3, num_return_sequences=2, temperature=1.3, top_k=0),
    dict(num_beams=2, top_p=0.9),
], ids=["3-beams", "n-best-temperature", "top-p"])
def test_seeded_beam_sampling_matches_transformers(name, options, tmp_path):
    # transformers samples `keep` continuations of all beams at once without replacement (one
    # multinomial per step on the softmax of the accumulated scores), then sorts them; so does nlpkit.
    found = _check(name, tmp_path, seed=11, max_new_tokens=10, do_sample=True, **options)
    reference, ours = _models(name, tmp_path)
    rows = SOURCES if FAMILIES[name].kind == "encoder-decoder" else PROMPTS
    common = {"max_new_tokens": 10, "pad_token_id": PAD, **options}
    # It did sample: plain beam search, and another seed, choose other hypotheses.
    for other in ({"do_sample": False}, {"do_sample": True, "seed": 12}):
        assert found != generate_ids(ours, rows, resolve_options({**common, **other}, _defaults(reference)))


# -- through nlpkit.load: the folder a user has, text in and text out ---------------------------------------------

DECODERS, ENCODER_DECODERS = ["gpt2", "llama", "mistral", "qwen2", "qwen3"], ["bart", "marian", "t5"]


def _folder(name: str, tmp_path: Path) -> Path:
    """A tiny random checkpoint folder with a tokenizer whose token i is the word `w{i}`.

    Text then maps to ids and back one to one, so comparing texts compares tokens.
    """
    folder = tmp_path / name
    build(_family(name)).save_pretrained(folder)
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    words.save(str(folder / "tokenizer.json"))
    return folder


def _texts(rows: list[list[int]]) -> list[str]:
    return [" ".join(f"w{t}" for t in row) for row in rows]


def _tokens(answers: list) -> list[list[int]]:
    """Each answer's token ids (n-best lists flattened, best first)."""
    flat = [text for answer in answers for text in (answer if isinstance(answer, list) else [answer])]
    return [[int(word[1:]) for word in text.split()] for text in flat]


def _answers(loaded, rows: list[list[int]], **options) -> list[list[int]]:
    """What a model from `nlpkit.load` answers, as token ids: `generate` for a decoder, `translate` otherwise."""
    verb = loaded.translate if loaded.backbone.config.kind == "encoder-decoder" else loaded.generate
    return _tokens(verb(_texts(rows), **options))


def _hf(name: str, folder: Path, **kwargs):
    """transformers' model of the folder, loaded as its users load it."""
    auto = (transformers.AutoModelForSeq2SeqLM if FAMILIES[name].kind == "encoder-decoder"
            else transformers.AutoModelForCausalLM)
    return auto.from_pretrained(folder, **kwargs).eval()


def _until_eos(rows: list[list[int]], eos: int, keep: bool = False) -> list[list[int]]:
    """Each row up to its first EOS (kept with `keep`); what follows is fill."""
    return [row[: row.index(eos) + keep] if eos in row else row for row in rows]


@pytest.mark.parametrize("name", DECODERS + ENCODER_DECODERS)
@pytest.mark.parametrize("options", [dict(), dict(num_beams=3, num_return_sequences=2), dict(no_repeat_ngram_size=1)],
                         ids=["greedy", "beams", "greedy-no-repeats"])
def test_a_loaded_folder_decodes_like_transformers(name, options, tmp_path):
    # Greedy decoding of a random model soon repeats one or two tokens (BART's and Marian's always
    # the same one), which a small error need not change; with no token repeated, every step
    # depends on the order of the next best tokens too.
    folder = _folder(name, tmp_path)
    loaded = nlpkit.load(folder)
    if layers._onednn_linear_available():
        # What is under test: decoding with the oneDNN-packed weight of every float32 Linear, in place of the
        # dense one; a tied LM head stays dense (the embedding looks rows up in it, and in float32 its
        # weight-first product is as fast as a packed copy).
        linears = [m for m in loaded.backbone.modules() if isinstance(m, layers.Linear)]
        tied = {id(m) for m in linears if any(m.weight is e.weight for e in loaded.backbone.modules()
                                              if isinstance(e, torch.nn.Embedding))}
        assert linears and all(m._released for m in linears if id(m) not in tied)
        assert all(not m._released and m._packed is None for m in linears if id(m) in tied)
    reference = _hf(name, folder)
    encoder_decoder = FAMILIES[name].kind == "encoder-decoder"
    rows = SOURCES if encoder_decoder else PROMPTS
    # No decoding option but the length and the search: the rest (EOS, forced EOS, decoder start)
    # comes from the folder's generation_config.json on both sides. Prompts are padded with the
    # folder's pad token, else EOS, as nlpkit does (and transformers when it is told no pad token).
    config = reference.generation_config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    expected = _reference(reference, rows, encoder_decoder, pad=pad, max_new_tokens=10, **options)
    found = _answers(loaded, rows, max_new_tokens=10, **options)
    # An answer is the text before EOS.
    assert found == _until_eos(expected, config.eos_token_id)


@pytest.mark.parametrize("name", DECODERS + ENCODER_DECODERS)
def test_a_folder_loaded_in_bfloat16_decodes_like_transformers_in_bfloat16(name, tmp_path):
    folder = _folder(name, tmp_path)
    loaded = nlpkit.load(folder, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in loaded.backbone.parameters())
    exact, reference = _hf(name, folder), _hf(name, folder, dtype=torch.bfloat16)
    encoder_decoder = FAMILIES[name].kind == "encoder-decoder"
    rows = SOURCES if encoder_decoder else PROMPTS
    steps, config = 12, reference.generation_config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    ids, mask = _padded(rows, left=not encoder_decoder, pad=pad)
    with torch.no_grad():
        out = reference.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False, pad_token_id=pad,
                                 output_scores=True, return_dict_in_generate=True)

    # Logits at every position transformers' bfloat16 greedy search went through (the prompt, then
    # each token it chose), positions counted from each row's first real token on both sides.
    sequences = out.sequences
    if encoder_decoder:
        inputs = dict(attention_mask=mask, decoder_input_ids=sequences)
        real = torch.ones_like(sequences, dtype=torch.bool)
        ids_in = ids
    else:
        real = torch.cat([mask, torch.ones_like(sequences[:, ids.shape[1]:])], dim=1)
        inputs = dict(attention_mask=real, position_ids=(real.cumsum(-1) - 1).clamp(min=0))
        real, ids_in = real.bool(), sequences
    with torch.no_grad():
        truth = exact(ids_in, **inputs).logits[real]
        theirs = reference(ids_in, **inputs).logits.float()[real]
        ours = loaded.backbone.logits(loaded.backbone(ids_in, **inputs).last_hidden_state).float()[real]
    # bfloat16 keeps 8 significant bits: a value rounds by up to 2**-9 of itself, and two implementations
    # that round in different places (fused or unfused kernels, the attention's order of sums) drift apart
    # by a few such steps at the scale of the logits. Measured here: nlpkit and transformers differ by at
    # most 0.8% of the largest logit (GPT-2; the other families agree bit for bit), and transformers' own
    # bfloat16 logits are up to 1.0% from its float32 ones. The tolerance is four steps of 2**-8 (1.6%).
    scale = truth.abs().max().item()
    tolerance = 4 * 2**-8 * scale
    assert (ours - theirs).abs().max().item() <= tolerance
    # And nlpkit in bfloat16 is as close to the float32 truth as transformers in bfloat16 (measured: the
    # same largest error in every family), give or take a quarter: where each rounds differs. Norm
    # statistics taken in bfloat16 instead of float32 come out 1.6 times further in Qwen2 and T5.
    assert (ours - truth).abs().max().item() <= 1.25 * (theirs - truth).abs().max().item()

    # Greedy tokens through the user's path: the same, or the same until a step where transformers' two
    # best scores are closer than the tolerance (a near-tie that bfloat16 rounding may break either way;
    # these random models have many, their best two logits are often within 0.01 of each other).
    generated = sequences[:, 1 if encoder_decoder else ids.shape[1]:].tolist()
    best_two = torch.stack(out.scores, 1).float().topk(2, dim=-1).values  # (rows, steps, 2)
    margins = (best_two[..., 0] - best_two[..., 1]).tolist()
    found = _answers(loaded, rows, max_new_tokens=steps)
    agreed = total = 0
    for mine, expected, margin in zip(found, _until_eos(generated, config.eos_token_id, keep=True), margins):
        mine = mine + [config.eos_token_id] if len(mine) < steps else mine  # the answer ended at EOS
        total += len(expected)
        parted = next((k for k, (a, b) in enumerate(zip(mine, expected)) if a != b), None)
        if parted is None:
            assert mine == expected
            agreed += len(expected)
        else:
            assert margin[parted] < tolerance, f"step {parted} is no near-tie: {mine} != {expected}"
            agreed += parted
    assert agreed >= total / 2  # most steps are compared before any near-tie parts the two
