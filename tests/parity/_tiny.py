"""Tiny random `transformers` models of every supported family, and what the parity tests share.

Each model is built from its head class (the one that holds the pretrained
LM head or a task head), with random values everywhere (norms, biases and
BART's `final_logits_bias` too) so that no formula hides behind ones and
zeros. The folders are written the ways real checkpoints come: base or head
class, one file or sharded, safetensors or an older release's `.bin`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
VOCAB, HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 96, 32, 2, 4, 48, 40


@dataclass(frozen=True)
class Family:
    """A tiny model of one family: its `transformers` head class and config."""

    name: str
    kind: str  # encoder | decoder | encoder-decoder
    head_class: str
    config_class: str
    config: dict[str, Any]


_COMMON = dict(attn_implementation="eager")
_ENC_DEC = dict(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                decoder_ffn_dim=FFN, max_position_embeddings=POSITIONS)
_LLAMA = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
              num_key_value_heads=2, intermediate_size=FFN, max_position_embeddings=64, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 50000.0}, bos_token_id=1, eos_token_id=2)
_GEMMA = dict(_LLAMA, head_dim=12, tie_word_embeddings=True, pad_token_id=0)
_T5 = dict(vocab_size=VOCAB, d_model=HIDDEN, d_kv=12, d_ff=FFN, num_layers=LAYERS, num_decoder_layers=LAYERS + 1,
           num_heads=HEADS, relative_attention_num_buckets=8, relative_attention_max_distance=20, pad_token_id=0,
           eos_token_id=1, decoder_start_token_id=0)

FAMILIES = {
    family.name: family
    for family in [
        Family("bert", "encoder", "BertForSequenceClassification", "BertConfig",
               dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    intermediate_size=FFN, max_position_embeddings=POSITIONS, num_labels=3, pad_token_id=0)),
        Family("roberta", "encoder", "RobertaForMaskedLM", "RobertaConfig",
               dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    intermediate_size=FFN, max_position_embeddings=POSITIONS + 2, type_vocab_size=1,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2)),
        Family("xlm-roberta", "encoder", "XLMRobertaForMaskedLM", "XLMRobertaConfig",
               dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    intermediate_size=FFN, max_position_embeddings=POSITIONS + 2, type_vocab_size=1,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2)),
        # A discriminator narrower in its embeddings than in its layers (16 -> 32), as ELECTRA-small is (128 -> 256).
        Family("electra", "encoder", "ElectraForPreTraining", "ElectraConfig",
               dict(vocab_size=VOCAB, embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                    num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=POSITIONS,
                    pad_token_id=0)),
        Family("distilbert", "encoder", "DistilBertForSequenceClassification", "DistilBertConfig",
               dict(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                    max_position_embeddings=POSITIONS, pad_token_id=0)),
        # Biases everywhere (the split of the fused Wqkv and Wi biases shows), global layers 0 and 2 around a
        # local one whose window (|i - j| <= 2) is shorter than padded_batch's rows.
        Family("modernbert", "encoder", "ModernBertForSequenceClassification", "ModernBertConfig",
               dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=HEADS,
                    intermediate_size=FFN, max_position_embeddings=POSITIONS, global_attn_every_n_layers=2,
                    local_attention=4, norm_bias=True, attention_bias=True, mlp_bias=True, num_labels=3,
                    classifier_pooling="mean", pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                    sep_token_id=2)),
        Family("gpt2", "decoder", "GPT2LMHeadModel", "GPT2Config",
               dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, n_positions=POSITIONS,
                    bos_token_id=1, eos_token_id=2)),
        Family("llama", "decoder", "LlamaForCausalLM", "LlamaConfig", dict(_LLAMA, tie_word_embeddings=False)),
        Family("mistral", "decoder", "MistralForCausalLM", "MistralConfig",
               dict(_LLAMA, head_dim=12, sliding_window=None, tie_word_embeddings=False)),
        Family("qwen2", "decoder", "Qwen2ForCausalLM", "Qwen2Config", dict(_LLAMA, tie_word_embeddings=True)),
        # head_dim 12 != hidden / heads = 8, as Qwen3's 128 is not hidden / heads either.
        Family("qwen3", "decoder", "Qwen3ForCausalLM", "Qwen3Config",
               dict(_LLAMA, head_dim=12, tie_word_embeddings=False)),
        # Gemma's default head_dim is 256 and its query_pre_attn_scalar 256: both set so that neither is
        # hidden / heads, and the scale differs from head_dim ** -0.5.
        Family("gemma", "decoder", "GemmaForCausalLM", "GemmaConfig", dict(_GEMMA, hidden_act="gelu_pytorch_tanh")),
        Family("gemma2", "decoder", "Gemma2ForCausalLM", "Gemma2Config",
               dict(_GEMMA, query_pre_attn_scalar=20, sliding_window=8, attn_logit_softcapping=2.0,
                    final_logit_softcapping=3.0)),
        Family("gemma3_text", "decoder", "Gemma3ForCausalLM", "Gemma3TextConfig",
               dict(_GEMMA, query_pre_attn_scalar=20, sliding_window=8, num_hidden_layers=3, sliding_window_pattern=3,
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 80000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}})),
        Family("phi3", "decoder", "Phi3ForCausalLM", "Phi3Config",
               dict(_LLAMA, tie_word_embeddings=False, pad_token_id=0,
                    rope_parameters={"rope_type": "default", "rope_theta": 50000.0, "partial_rotary_factor": 0.75})),
        Family("bart", "encoder-decoder", "BartForConditionalGeneration", "BartConfig",
               dict(_ENC_DEC, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                    forced_eos_token_id=2)),
        Family("marian", "encoder-decoder", "MarianMTModel", "MarianConfig",
               dict(_ENC_DEC, pad_token_id=VOCAB - 1, decoder_start_token_id=VOCAB - 1, eos_token_id=0,
                    forced_eos_token_id=0, scale_embedding=True, activation_function="swish")),
        Family("t5", "encoder-decoder", "T5ForConditionalGeneration", "T5Config",
               dict(_T5, feed_forward_proj="relu")),
        Family("t5-v1.1", "encoder-decoder", "T5ForConditionalGeneration", "T5Config",
               dict(_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    ]
}


def build(family: Family) -> Any:
    """The family's head-class model with random weights, in eval mode."""
    config = getattr(transformers, family.config_class)(**family.config, **_COMMON)
    model = getattr(transformers, family.head_class)(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_positions" not in name:  # Marian's sinusoids are a fixed table, not weights
                param.normal_(0, 0.2)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_()
        if family.name == "t5-v1.1":
            # transformers 5 ties T5's head in memory whatever the config says; give v1.1 its own.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN) * 0.2)
    return model.eval()


def save_bin(model: Any, folder: Path, shards: int = 1) -> Path:
    """Writes a folder as releases before 5.0 did with `safe_serialization=False`.

    Tied tensors stay in the file under every name (torch.save keeps shared
    storage), and with `shards > 1` the state is split over
    `pytorch_model-0000K-of-0000N.bin` files named by an index.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = model.state_dict()
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    keys = list(state)
    weight_map = {}
    for k in range(shards):
        name = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {key: state[key] for key in keys[k::shards]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def padded_batch(pad_id: int, rows: int = 3, length: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of a batch with one full, one right-padded and one left-padded row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB - 1, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = pad_id, 0
    ids[2, :4], mask[2, :4] = pad_id, 0
    return ids, mask


def max_diff(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Largest absolute difference, at real positions only when a mask is given."""
    if mask is not None:
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    return (ours - theirs).abs().max().item()


# Left-padded prompts of different lengths; the longest crosses a window of 8 tokens.
LEFT_PADDED_PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [12, 13, 14], [20, 21, 22, 23, 24, 25, 26]]


def assert_generation_matches(ours: Any, reference: Any, pad: int, **options: Any) -> None:
    """nlpkit.generation on LEFT_PADDED_PROMPTS gives transformers' generate tokens (greedy or beams), row by row."""
    from nlpkit.generation import generate_ids, resolve_options

    prompts = LEFT_PADDED_PROMPTS
    options = dict(max_new_tokens=10, do_sample=False, **options)
    longest = max(map(len, prompts))
    ids, mask = torch.full((len(prompts), longest), pad), torch.zeros(len(prompts), longest, dtype=torch.long)
    for i, row in enumerate(prompts):
        ids[i, longest - len(row):], mask[i, longest - len(row):] = torch.tensor(row), 1
    with torch.no_grad():
        theirs = reference.generate(ids, attention_mask=mask, pad_token_id=pad, **options)[:, longest:].tolist()
    found = generate_ids(ours, prompts, resolve_options({**options, "pad_token_id": pad},
                                                        {"eos_token_id": reference.generation_config.eos_token_id}))
    flat = [row for rows in found for row in rows]
    assert len(flat) == len(theirs)
    for i, (mine, expected) in enumerate(zip(flat, theirs)):
        assert mine == expected[: len(mine)], f"row {i}: {mine} != {expected}"
        assert all(t == pad for t in expected[len(mine):]), f"row {i} ends early: {mine} vs {expected}"


def right_padded_batch(length: int, pad: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of random ids: one of ``length`` tokens, and two right-padded to it (13 and 6 real tokens)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (3, length), generator=generator)
    mask = torch.ones_like(ids)
    for row, real in ((1, 13), (2, 6)):
        ids[row, real:], mask[row, real:] = pad, 0
    return ids, mask


def incremental_logits(model: Any, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """Logits of a prefill of ``prefix`` tokens, then one token per call, of an nlpkit decoder or a transformers model."""
    ours = not hasattr(model, "generation_config")
    cache, outputs = None, []
    for start, end in [(0, prefix), *((t, t + 1) for t in range(prefix, ids.shape[1]))]:
        if ours:
            out = model(ids[:, start:end], past_key_values=cache, use_cache=True)
            logits, cache = model.logits(out.last_hidden_state), out.past_key_values
        else:
            out = model(ids[:, start:end], cache=cache, use_cache=True)
            logits, cache = out.logits, out.past_key_values
        outputs.append(logits)
    return torch.cat(outputs, dim=1)


def save_word_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json whose words `w0` .. `w95` are the ids themselves, so texts spell token ids."""
    import tokenizers

    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    words.save(str(folder / "tokenizer.json"))


def assert_load_generates_like_transformers(folder: Path, reference: Any) -> Any:
    """`nlpkit.load` of a pretrained folder (given a word tokenizer) generates transformers' greedy tokens."""
    import nlpkit

    save_word_tokenizer(folder)
    loaded = nlpkit.load(folder)
    prompt = LEFT_PADDED_PROMPTS[0]
    answer = loaded.generate([" ".join(f"w{t}" for t in prompt)], max_new_tokens=8)[0]
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):]
    eos = reference.generation_config.eos_token_id
    expected = expected.tolist()
    expected = expected[: expected.index(eos)] if eos in expected else expected
    assert [int(word[1:]) for word in answer.split()] == expected
    return loaded


def export_and_reload(ours: Any, folder: Path, out: Path, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[Any, float]:
    """Saves `ours` as the family of `folder`, reloads it with AutoModelForCausalLM; the model and the logits' max diff."""
    from nlpkit.backbones.checkpoints import load_checkpoint, save_pretrained

    saved = save_pretrained(ours, out, family=load_checkpoint(folder).family)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved, attn_implementation="eager").eval()
    ids, mask = batch
    with torch.no_grad():
        diff = max_diff(ours.logits(ours(ids, attention_mask=mask).last_hidden_state),
                        reloaded(ids, attention_mask=mask).logits, mask)
    return reloaded, diff
