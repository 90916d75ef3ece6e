"""Tests for nlpkit.chat_templates and the Tokenizer's chat calls, against transformers' apply_chat_template.

Each of seven real templates (tests/assets/chat_templates, sources in
SOURCES.md) gets a tiny tokenizer folder built here: a byte-level BPE model
trained on ``TRAINING_TEXT``, the family's turn markers added as special
tokens, and a tokenizer_config.json with the template and the family's
``bos_token`` / ``eos_token``. nlpkit's ``from_pretrained`` and
``transformers.AutoTokenizer`` read the same folder; the token ids of a set
of conversations (with and without a system message, one and three turns,
with and without the generation prompt) must be equal. The assistant masks
are read back to text, which must be exactly the assistant turns and their
end tokens.
"""

from __future__ import annotations

import itertools
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from nlpkit import chat_templates
from nlpkit.errors import NlpkitError
from nlpkit.tokenization import CHAT_TEMPLATE_FILE, Tokenizer, from_pretrained
from tests.unit.test_tokenizer_folders import TRAINING_TEXT, hf_tokenizer, write_json

ASSETS = Path(__file__).parents[1] / "assets" / "chat_templates"

# Per template: the special tokens its folder holds, and which of them are BOS and EOS (None: not set).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama3.2": {"specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eot_id|>"], "bos": "<|begin_of_text|>", "eos": "<|eot_id|>"},
    "qwen2.5": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "bos": None, "eos": "<|im_end|>"},
    "qwen3": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], "bos": None,
              "eos": "<|im_end|>"},
    "gemma2": {"specials": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "bos": "<bos>",
               "eos": "<eos>"},
    "phi3.5": {"specials": ["<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
               "bos": "<s>", "eos": "<|endoftext|>"},
    "smollm2": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "bos": "<|im_start|>",
                "eos": "<|im_end|>"},
    "mistral-nemo": {"specials": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "bos": "<s>", "eos": "</s>"},
}
# The token that ends an assistant turn, per template.
END_OF_TURN = {"llama3.2": "<|eot_id|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "gemma2": "<end_of_turn>",
               "phi3.5": "<|end|>", "smollm2": "<|im_end|>", "mistral-nemo": "</s>"}
# Templates that refuse a system message.
NO_SYSTEM = {"gemma2"}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
THREE_TURNS = [
    {"role": "user", "content": "The cat sees the house."},
    {"role": "assistant", "content": "Yes, the cat sees it."},
    {"role": "user", "content": "And yesterday?"},
    {"role": "assistant", "content": "Yesterday the dog walked home."},
    {"role": "user", "content": "Crème brûlée à Zürich?"},
    {"role": "assistant", "content": "A house of 2 cats, 3 dogs."},
]
ONE_TURN = THREE_TURNS[:2]
# Conversations ending with the assistant (trained on) and with the user (prompts for the next turn).
CONVERSATIONS = {"one turn": ONE_TURN, "three turns": THREE_TURNS, "one prompt": ONE_TURN[:1],
                 "three prompts": THREE_TURNS[:5]}


@pytest.fixture(scope="module")
def base_bpe() -> str:
    """A small byte-level BPE tokenizer (as JSON), trained once for every family's folder."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    return backend.to_str()


def build_folder(folder: Path, base: str, family: str, *, bos_template: bool = False,
                 chat_template: Any = None) -> Path:
    """A tokenizer folder of ``family``: the base BPE, its special tokens, its template in tokenizer_config.json.

    ``bos_template`` puts the BOS token in front of every encoding, as the
    post-processor of Llama 3's tokenizer.json does.
    """
    spec = FAMILIES[family]
    backend = tokenizers.Tokenizer.from_str(base)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in spec["specials"]])
    if bos_template:
        bos = spec["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    template = (ASSETS / f"{family}.jinja").read_text(encoding="utf-8") if chat_template is None else chat_template
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "chat_template": template,
              "bos_token": spec["bos"], "eos_token": spec["eos"]}
    write_json(folder / "tokenizer_config.json", config)
    return folder


@pytest.fixture(scope="module")
def folders(base_bpe: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_folders")
    return {family: build_folder(root / family, base_bpe, family) for family in FAMILIES}


def hf_ids(hf: Any, messages: list[dict[str, str]], add_generation_prompt: bool, **variables: Any) -> list[int]:
    """transformers' token ids of a conversation (version 5 returns a BatchEncoding by default)."""
    out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt, **variables)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def masked_runs(tokenizer: Tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The text of each run of consecutive masked tokens, special tokens included."""
    runs = []
    for masked, group in itertools.groupby(zip(ids, mask), key=lambda pair: pair[1]):
        if masked:
            runs.append(tokenizer.decode([token for token, _ in group], skip_special_tokens=False))
    return runs


def test_fixtures_are_the_seven_templates() -> None:
    names = {path.stem for path in ASSETS.glob("*.jinja")}
    assert names == set(FAMILIES)
    sources = (ASSETS / "SOURCES.md").read_text(encoding="utf-8")
    assert all(f"{name}.jinja" in sources for name in names)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ids_match_transformers(family: str, folders: dict[str, Path]) -> None:
    ours, hf = from_pretrained(folders[family]), hf_tokenizer(folders[family])
    assert ours.chat_template == hf.chat_template
    checked = 0
    for (name, conversation), system, prompt in itertools.product(CONVERSATIONS.items(), (False, True), (False, True)):
        messages = [SYSTEM, *conversation] if system else conversation
        if system and family in NO_SYSTEM:
            with pytest.raises(Exception):
                hf_ids(hf, messages, prompt)
            with pytest.raises(NlpkitError, match="System role not supported"):
                ours.apply_chat_template(messages, prompt)
            continue
        expected = hf_ids(hf, messages, prompt)
        what = f"{family}, {name}, system={system}, add_generation_prompt={prompt}"
        assert ours.render_chat(messages, prompt) == hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt), what
        assert ours.apply_chat_template(messages, prompt) == expected, what
        checked += 1
    assert checked == (8 if family in NO_SYSTEM else 16)


@pytest.mark.parametrize("family", ["llama3.2", "qwen2.5", "smollm2", "gemma2", "mistral-nemo", "phi3.5"])
def test_assistant_mask_reads_back_as_the_assistant_turns(family: str, folders: dict[str, Path]) -> None:
    # These templates have no {% generation %} markers: the turns are found by rendering prefix by prefix.
    ours = from_pretrained(folders[family])
    assert ours.chat_template is not None and not chat_templates.has_generation_markers(ours.chat_template)
    messages = THREE_TURNS if family in NO_SYSTEM else [SYSTEM, *THREE_TURNS]
    ids, mask = ours.encode_chat(messages)
    assert ids == ours.apply_chat_template(messages)
    expected = [m["content"] + END_OF_TURN[family] for m in THREE_TURNS if m["role"] == "assistant"]
    if family == "phi3.5":
        # Phi-3.5 ends a conversation (not a prompt) with eos_token: the last turn's way of stopping.
        expected[-1] += "\n" + FAMILIES[family]["eos"]
    assert masked_runs(ours, ids, mask) == expected


def test_default_template_marks_the_assistant_turns_as_transformers_does(folders: dict[str, Path]) -> None:
    # The smollm2 folder holds the default template's <|im_start|> and <|im_end|> as special tokens.
    ours, hf = from_pretrained(folders["smollm2"]), hf_tokenizer(folders["smollm2"])
    assert set(chat_templates.DEFAULT_CHAT_TOKENS) <= set(FAMILIES["smollm2"]["specials"])
    template = chat_templates.DEFAULT_CHAT_TEMPLATE
    assert chat_templates.has_generation_markers(template)
    messages = [SYSTEM, *THREE_TURNS]
    ids, mask = ours.encode_chat(messages, template=template)
    expected = hf.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
    assert ids == list(expected["input_ids"])
    assert mask == list(expected["assistant_masks"])
    assert masked_runs(ours, ids, mask) == [m["content"] + "<|im_end|>" for m in THREE_TURNS if m["role"] == "assistant"]
    assert ours.render_chat(messages[:2], True, template=template) == (
        "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nThe cat sees the house.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen3_multi_turn_with_think_blocks(folders: dict[str, Path]) -> None:
    ours, hf = from_pretrained(folders["qwen3"]), hf_tokenizer(folders["qwen3"])
    messages = [
        {"role": "user", "content": "The cat sees the house?"},
        {"role": "assistant", "content": "<think>\nThe cat is home.\n</think>\n\nYes, it does."},
        {"role": "user", "content": "And the dog?"},
        {"role": "assistant", "content": "<think>\nThe dog walked.\n</think>\n\nThe dog walked home."},
    ]
    full = ours.render_chat(messages)
    # Qwen3 drops the earlier turn's <think> block once a later user turn follows: the rendering of the
    # conversation cut after that turn is not a prefix of the whole one.
    assert not full.startswith(ours.render_chat(messages[:2]))
    assert "The cat is home." not in full
    ids, mask = ours.encode_chat(messages)
    assert ids == hf_ids(hf, messages, False)
    assert masked_runs(ours, ids, mask) == [
        "Yes, it does.<|im_end|>", "<think>\nThe dog walked.\n</think>\n\nThe dog walked home.<|im_end|>",
    ]
    # Extra keyword arguments reach the template: Qwen3's switch for an empty think block.
    prompt = messages[:3]
    assert ours.apply_chat_template(prompt, True, enable_thinking=False) == hf_ids(hf, prompt, True,
                                                                                   enable_thinking=False)
    assert ours.render_chat(prompt, True, enable_thinking=False).endswith("<think>\n\n</think>\n\n")


def test_llama3_ids_start_with_exactly_one_bos(base_bpe: str, tmp_path: Path) -> None:
    # Llama 3's tokenizer.json puts <|begin_of_text|> in front of every encoding, and its template writes
    # {{ bos_token }} itself: the rendered text must be encoded without the post-processor's BOS.
    folder = build_folder(tmp_path / "llama", base_bpe, "llama3.2", bos_template=True)
    ours, hf = from_pretrained(folder), hf_tokenizer(folder)
    bos = ours.token_id("bos")
    ids = ours.apply_chat_template(THREE_TURNS, True)
    assert ids == hf_ids(hf, THREE_TURNS, True)
    assert ids[0] == bos and ids.count(bos) == 1
    doubled = ours.encode(ours.render_chat(THREE_TURNS, True), truncation=False).ids
    assert doubled[:2] == [bos, bos] and doubled[1:] == ids


def test_strftime_now_gives_llama_today(folders: dict[str, Path]) -> None:
    ours = from_pretrained(folders["llama3.2"])
    assert "strftime_now" in (ours.chat_template or "")
    before = datetime.now().strftime("%d %b %Y")
    text = ours.render_chat(ONE_TURN)
    assert f"Today Date: {before}\n" in text or f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in text
    # A variable the caller passes wins over the template's own default.
    assert "Today Date: 26 Jul 2024\n" in ours.render_chat(ONE_TURN, date_string="26 Jul 2024")


def test_raise_exception_surfaces_as_nlpkit_error(folders: dict[str, Path]) -> None:
    ours = from_pretrained(folders["mistral-nemo"])
    wrong_order = [THREE_TURNS[1], THREE_TURNS[0]]
    with pytest.raises(NlpkitError, match="conversation roles must alternate"):
        ours.apply_chat_template(wrong_order)
    with pytest.raises(NlpkitError, match="line 1"):
        chat_templates.render("{% for m in messages %}", ONE_TURN)


def test_chat_template_saved_and_read_back(folders: dict[str, Path], tmp_path: Path) -> None:
    ours = from_pretrained(folders["qwen3"])
    ours.save(tmp_path / "saved")
    saved = tmp_path / "saved" / CHAT_TEMPLATE_FILE
    assert saved.read_bytes() == (ASSETS / "qwen3.jinja").read_bytes()
    again, hf = from_pretrained(tmp_path / "saved"), hf_tokenizer(tmp_path / "saved")
    assert again.chat_template == ours.chat_template == hf.chat_template
    assert again.apply_chat_template(THREE_TURNS) == ours.apply_chat_template(THREE_TURNS) == hf_ids(
        hf, THREE_TURNS, False)
    assert Tokenizer.load(tmp_path / "saved").chat_template == ours.chat_template


def test_chat_template_jinja_wins_and_named_templates_use_default(base_bpe: str, tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ 'plain' }}"}]
    folder = build_folder(tmp_path / "named", base_bpe, "smollm2", chat_template=named)
    assert from_pretrained(folder).chat_template == "{{ 'plain' }}"
    shutil.copy(ASSETS / "smollm2.jinja", folder / CHAT_TEMPLATE_FILE)
    ours, hf = from_pretrained(folder), hf_tokenizer(folder)
    assert ours.chat_template == (ASSETS / "smollm2.jinja").read_text(encoding="utf-8") == hf.chat_template


def test_no_template_says_how_to_give_one(base_bpe: str, tmp_path: Path) -> None:
    folder = build_folder(tmp_path / "bare", base_bpe, "smollm2")
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"})
    ours = from_pretrained(folder)
    assert ours.chat_template is None
    with pytest.raises(NlpkitError, match=r"bare has no chat template.*generation\.chat_template.*chat_template\.jinja"):
        ours.apply_chat_template(ONE_TURN)
    # A template given in the call needs none in the folder.
    assert ours.render_chat(ONE_TURN, template=chat_templates.DEFAULT_CHAT_TEMPLATE).startswith("<|im_start|>user\n")


def test_assistant_turn_the_template_rewrites_is_an_error() -> None:
    # Earlier answers are replaced by a placeholder: nothing of the turn is left to mask.
    template = ("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[earlier answer]"
                "{% else %}{{ m.content }}{% endif %}|{% endfor %}")
    messages = THREE_TURNS[:4]
    with pytest.raises(NlpkitError, match="assistant message 2 cannot be found.*generation"):
        chat_templates.assistant_spans(template, messages)


def test_namespace_refuses_underscore_names_and_dict_works() -> None:
    assert chat_templates.render("{% set ns = namespace(n=1) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}"
                                 "{{ dict(a=1)['a'] }}", ONE_TURN) == "21"
    with pytest.raises(NlpkitError, match="underscore"):
        chat_templates.render("{% set ns = namespace(_x=1) %}", ONE_TURN)


def test_tojson_does_not_escape_html_and_tools_pass_through() -> None:
    template = "{{ tools | tojson }}|{{ messages[0].content | tojson(indent=2) }}"
    text = chat_templates.render(template, [{"role": "user", "content": "<a & b>"}], tools=[{"name": "é<x>"}])
    assert text == '[{"name": "é<x>"}]|"<a & b>"'
