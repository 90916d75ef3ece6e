"""The generation task: blocks and labels, plain-text data, training, generate, export, CLI and its errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit.cli import main
from nlpkit.testing import check_task, tiny_classification_data, tiny_recipe, tiny_tokenizer, write_rows
from nlpkit.tokenization import Tokenizer
from nlpkit_generation import IGNORE, LanguageModeling, LanguageModelingOptions

WORDS = "the cat sat on a mat and the dog ran to the big red house by the sea".split()


def _documents(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))} for _ in range(n)]


def _task(block_size: int = 8) -> LanguageModeling:
    tokenizer = tiny_tokenizer([row["text"] for row in _documents(50)])
    return LanguageModeling(LanguageModelingOptions(block_size=block_size), tokenizer)


# -- data ---------------------------------------------------------------------------------------------------------


def test_documents_are_packed_into_blocks_with_end_of_text_between_them():
    import datasets

    task = _task(block_size=8)
    rows = _documents(6)
    blocks = task.prepare(datasets.Dataset.from_list(rows))
    eos = task.tokenizer.token_id("eos")
    expected = [t for row in rows for t in task._ids([row["text"]])[0] + [eos]]
    # Blocks of 9 tokens overlapping by one: every token is predicted exactly once, in order.
    rebuilt = [t for block in blocks["input_ids"] for t in block[:-1]] + [blocks["input_ids"][-1][-1]]
    assert rebuilt == expected
    assert all(len(b) == 9 for b in blocks["input_ids"][:-1])
    batch = task.collate([blocks[i] for i in range(2)])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 8)
    assert torch.equal(batch["labels"][0, :-1], batch["input_ids"][0, 1:])


def test_prompt_completion_rows_count_only_the_completion():
    task = _task(block_size=64)
    features = task.encode({"text": ["the cat"], "completion": [" sat on the mat"]})
    prompt = task._ids(["the cat"])[0]
    completion = task._ids([" sat on the mat"])[0] + [task.tokenizer.token_id("eos")]
    assert features["input_ids"][0] == prompt + completion
    assert features["labels"][0] == [IGNORE] * len(prompt) + completion
    batch = task.collate([{k: v[0] for k, v in features.items()}])
    counted = batch["labels"][0] != IGNORE
    assert counted.sum() == len(completion)  # the last prompt token predicts the first completion token


def test_char_tokenizer_has_one_token_per_character():
    tokenizer = Tokenizer.train(["To be,\nor not"], "char", min_frequency=1, lowercase=False)
    encoding = tokenizer.encode_batch(["be or\nnot"])[0]
    assert encoding.tokens == list("be or\nnot")
    assert tokenizer.decode(encoding.ids + [tokenizer.token_id("eos")]) == "be or\nnot"


# -- the contract -------------------------------------------------------------------------------------------------


def test_documents_follow_the_task_contract(tmp_path):
    rows = _documents(20)
    check_task(LanguageModeling, rows[:16], rows[16:], tmp_path=tmp_path, options={"sample_max_new_tokens": 8})


def test_prompt_completion_pairs_follow_the_task_contract(tmp_path):
    rows = [{"text": "q: " + r["text"][:12], "completion": r["text"]} for r in _documents(20)]
    check_task(LanguageModeling, rows[:16], rows[16:], tmp_path=tmp_path, options={"sample_prompts": ["q: the"]})


# -- a trained run: generate, export, CLI -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("generation")
    train = write_rows(tmp / "train.jsonl", _documents(40))
    recipe = tiny_recipe("generation", {"train": str(train), "validation": str(train)}, tmp / "runs", "decoder",
                         {"sample_prompts": ["the cat", ""], "sample_max_new_tokens": 5})
    recipe["backbone"]["config"]["max_positions"] = 48
    return nlpkit.run(recipe).run_dir


def test_generate_returns_continuations_shaped_like_the_prompts(run_dir):
    model = nlpkit.load(run_dir)
    assert "the cat" in (run_dir / "samples.txt").read_text(encoding="utf-8")
    single = model.generate("the cat", max_new_tokens=6)
    assert isinstance(single, str)
    batch = model.generate(["the cat", "a dog ran to the"], max_new_tokens=6)
    assert isinstance(batch, list) and len(batch) == 2 and batch[0] == single  # left padding changes nothing
    n_best = model.generate(["the cat", "a"], max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert [len(answers) for answers in n_best] == [2, 2] and all(isinstance(t, str) for t in n_best[0])
    streamed = []
    assert model.generate("the dog", max_new_tokens=6, stream=streamed.append) == "".join(streamed)


def test_sampling_with_a_seed_gives_the_same_text_twice_and_another_seed_other_text(run_dir):
    model = nlpkit.load(run_dir)
    options = dict(do_sample=True, temperature=1.5, top_p=0.95, max_new_tokens=12)
    torch.manual_seed(0)
    first = model.generate(["the cat", "a"], seed=3, **options)
    torch.manual_seed(1)  # torch's global generator plays no part: the seed alone decides
    assert first == model.generate(["the cat", "a"], seed=3, **options)
    other = model.generate(["the cat", "a"], seed=4, **options)  # only the seed changed
    assert other[0] != first[0] and other[1] != first[1]


def _middle_stop(text: str, after: int = 0) -> tuple[str, int]:
    """Two printable characters first found in the middle of ``text`` (not before ``after``), and where."""
    for start in range(max(len(text) // 3, after), len(text) - 3):
        stop = text[start : start + 2]
        if stop.isprintable() and stop.isascii() and text.find(stop) == start:
            return stop, start
    raise AssertionError(f"no stop string to pick in the middle of {text!r}")


def test_stop_strings_end_the_continuation_before_them(run_dir):
    model = nlpkit.load(run_dir)
    calls = []
    model.model.backbone.register_forward_hook(lambda *_: calls.append(1))
    options = dict(max_new_tokens=24, do_sample=True, seed=0)
    text = model.generate("the", **options)
    unstopped_steps = len(calls)
    assert unstopped_steps == 24  # no EOS on the way: all 24 tokens were generated
    stop, start = _middle_stop(text)
    calls.clear()
    # The same draws up to the stop string: the answer is the unstopped one cut right before it ...
    assert model.generate("the", stop=stop, **options) == text[:start]
    # ... and generation ended there, not after 24 tokens.
    assert len(calls) < unstopped_steps
    # Every string of a list counts: the one listed second, but found first, cuts.
    later, _ = _middle_stop(text, after=start + 2)
    assert model.generate("the", stop=[later, stop], **options) == text[:start]


def test_every_rows_streamed_pieces_add_up_to_its_answer_and_details_count_its_tokens(run_dir):
    model = nlpkit.load(run_dir)
    options = dict(max_new_tokens=24, do_sample=True, seed=0, num_return_sequences=2)
    unstopped = model.generate(["the", "a dog"], **options)
    stop, start = _middle_stop(unstopped[1][0])  # cuts prompt 2's first continuation (row 2)
    pieces: dict[int, list[str]] = {}
    found = model.generate(["the", "a dog"], stop=stop, details=True,
                           on_text=lambda row, text: pieces.setdefault(row, []).append(text), **options)
    texts = [c.text for generated in found for c in generated.continuations]
    assert texts[2] == unstopped[1][0][:start]
    # A stop string's first character is held back until the next token shows it is not the stop string.
    assert ["".join(pieces.get(row, [])) for row in range(4)] == texts
    encode = model.task.encode_prompts
    assert [g.prompt_tokens for g in found] == [len(ids) for ids in encode(["the", "a dog"])]
    cut = found[1].continuations[0]
    assert cut.finish_reason == "stop" and cut.tokens < 24
    for c, text in zip((c for g in found for c in g.continuations), (t for ts in unstopped for t in ts)):
        if stop in text:  # the same draws: the stop string cuts it where it first occurs
            assert (c.text, c.finish_reason) == (text[: text.index(stop)], "stop")
        else:  # 24 tokens, or fewer when an end-of-sequence token came
            assert (c.text, c.finish_reason) == (text, "length" if c.tokens == 24 else "stop")


def test_bfloat16_weights_generate(run_dir):
    model = nlpkit.load(run_dir, dtype="bfloat16")
    assert next(model.model.parameters()).dtype == torch.bfloat16
    assert isinstance(model.generate("the cat", max_new_tokens=4), str)


def test_export_writes_a_causal_lm_that_transformers_loads(run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = nlpkit.load(run_dir)
    folder = model.export(tmp_path / "hf")
    reference, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert type(reference).__name__ == "LlamaForCausalLM" and not info["missing_keys"], info
    ids = torch.tensor([model.task.encode_prompts(["the cat sat on a mat and the dog"])[0]])
    with torch.no_grad():
        ours = model.model.backbone.logits(model.model.backbone(ids).last_hidden_state)
        theirs = reference.eval()(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # The folder is a pretrained decoder too: nlpkit generates from it like from the run.
    assert nlpkit.load(folder).generate("the cat", max_new_tokens=6) == model.generate("the cat", max_new_tokens=6)


def test_pretrained_gpt2_folder_generates_like_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = tiny_tokenizer([row["text"] for row in _documents(50)], vocab_size=300)
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     eos_token_id=tokenizer.token_id("eos"), bos_token_id=tokenizer.token_id("bos"))
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path / "gpt2")
    tokenizer.set_template(False)  # GPT-2 adds no special tokens to a prompt
    tokenizer.save(tmp_path / "gpt2")
    ids = torch.tensor([tokenizer.encode_batch(["the cat sat"])[0].ids])
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    eos = tokenizer.token_id("eos")
    expected = expected[: expected.index(eos)] if eos in expected else expected
    assert nlpkit.load(tmp_path / "gpt2").generate("the cat sat", max_new_tokens=8) == tokenizer.decode(expected)


# -- errors: one line, exit code 2 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("classification")
    return nlpkit.run(tiny_recipe("classification", tiny_classification_data(tmp / "data"), tmp / "runs")).run_dir


def test_an_unknown_decoding_option_is_named_with_a_suggestion(run_dir):
    with pytest.raises(nlpkit.NlpkitError, match="unknown decoding option 'top_kk'; did you mean 'top_k'"):
        nlpkit.load(run_dir).generate("the cat", top_kk=5)


@pytest.mark.parametrize("case", ["bad-option-value", "prompt-too-long", "cannot-generate"])
def test_generation_errors_are_one_line_with_exit_code_2(case, run_dir, classification_run, capsys):
    args, expected = {
        "bad-option-value": ([str(run_dir), "the cat", "--top-p", "2"], "decoding option top_p"),
        "prompt-too-long": ([str(run_dir), "the cat " * 40], "context window of 48 tokens"),
        "cannot-generate": ([str(classification_run), "the cat"], "cannot generate text"),
    }[case]
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err


def test_cli_streams_one_prompt_and_writes_json_lines_for_several(run_dir, capsys):
    assert main(["generate", str(run_dir), "the cat", "--max-new-tokens", "5"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.rstrip("\n") == nlpkit.load(run_dir).generate("the cat", max_new_tokens=5)
    assert main(["generate", str(run_dir), "the cat", "a dog", "--max-new-tokens", "5", "--do-sample", "--seed", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["the cat", "a dog"]
