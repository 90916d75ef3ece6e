"""Behavioural tests of the backbones on tiny fp32 configs.

What must hold for every family: cached incremental decoding equals the full
pass, padding never changes real positions, future tokens never change the
past, beam reordering of the cache is exact, configs validate and round-trip,
presets build, and a tied LM head stays tied.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from nlpkit.backbones import (
    KINDS,
    PRESETS,
    BackboneConfig,
    Decoder,
    Encoder,
    EncoderDecoder,
    KVCache,
    build_backbone,
)

TOLERANCE = 1e-5
VOCAB = 50
PAD = 1

TINY = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_positions=64,
            pad_token_id=PAD)

DECODERS = {
    "llama": dict(norm="rmsnorm", position_embedding="rotary", activation="silu", gated_mlp=True, num_kv_heads=2,
                  attention_bias=False, attention_output_bias=False, mlp_bias=False, norm_eps=1e-6),
    "qwen2": dict(norm="rmsnorm", position_embedding="rotary", activation="silu", gated_mlp=True, num_kv_heads=2,
                  head_dim=12, attention_bias=True, attention_output_bias=False, mlp_bias=False,
                  tie_word_embeddings=False, rope_theta=1e6),
    "gpt2": dict(norm="layernorm", norm_position="pre", position_embedding="learned", activation="gelu_tanh"),
    "post-norm-sinusoidal": dict(norm_position="post", final_norm=False, embedding_norm=True,
                                 position_embedding="sinusoidal", position_offset=2, lm_head_bias=True),
}

ENCODER_DECODERS = {
    "t5": dict(norm="rmsnorm", position_embedding="relative", attention_scale=1.0, activation="relu",
               attention_bias=False, attention_output_bias=False, mlp_bias=False, scale_lm_head_input=True,
               relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "t5-v1.1": dict(norm="rmsnorm", position_embedding="relative", attention_scale=1.0, activation="gelu_tanh",
                    gated_mlp=True, attention_bias=False, attention_output_bias=False, mlp_bias=False, head_dim=12,
                    tie_word_embeddings=False, num_decoder_layers=3, relative_attention_num_buckets=8,
                    relative_attention_max_distance=16),
    "bart": dict(norm_position="post", position_embedding="learned", position_offset=2, embedding_norm=True,
                 final_norm=False, lm_head_bias=True),
    "marian": dict(norm_position="post", position_embedding="sinusoidal", scale_embedding=True, activation="silu",
                   final_norm=False, lm_head_bias=True),
}

ENCODERS = {
    "bert": dict(norm_position="post", position_embedding="learned", type_vocab_size=2, embedding_norm=True,
                 final_norm=False, norm_eps=1e-12),
    "roberta": dict(norm_position="post", position_embedding="learned", position_offset=2, type_vocab_size=1,
                    embedding_norm=True, final_norm=False),
    "t5-encoder": dict(norm="rmsnorm", position_embedding="relative", attention_scale=1.0,
                       attention_bias=False, attention_output_bias=False, mlp_bias=False,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "rotary-encoder": dict(norm="rmsnorm", position_embedding="rotary", gated_mlp=True, activation="silu"),
}


def build(kind: str, family: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_backbone(BackboneConfig(kind=kind, **TINY, **family))
    # Random norms and biases too, so a wrong formula cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
        for name, buffer in model.named_buffers():
            if name == "final_logits_bias":
                buffer.normal_()
    return model.eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, length), generator=generator)  # never PAD


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------
# Cached decoding equals the full pass
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("chunk", [1, 2])
def test_decoder_cached_decoding_matches_full_pass(family: str, chunk: int) -> None:
    model = build("decoder", DECODERS[family])
    ids = tokens(2, 9)
    with torch.no_grad():
        full = model(ids).last_hidden_state
        # Auto-allocated cache sized to the prompt: later steps exercise growth.
        out = model(ids[:, :4], use_cache=True)
        cache, pieces = out.past_key_values, [out.last_hidden_state]
        for start in range(4, 9, chunk):
            out = model(ids[:, start : start + chunk], past_key_values=cache, use_cache=True)
            pieces.append(out.last_hidden_state)
    assert cache.length == 9
    assert max_diff(torch.cat(pieces, dim=1), full) < TOLERANCE
    assert max_diff(model.logits(pieces[-1]), model.logits(full[:, -1:])) < TOLERANCE


def test_preallocated_cache_is_written_in_place() -> None:
    model = build("decoder", DECODERS["llama"])
    ids = tokens(2, 6)
    cache = KVCache.allocate(model.config, batch_size=2, max_length=16)
    buffers = [key.data_ptr() for key in cache.keys]
    with torch.no_grad():
        full = model(ids).last_hidden_state
        model(ids[:, :3], past_key_values=cache)
        steps = [model(ids[:, i : i + 1], past_key_values=cache).last_hidden_state for i in range(3, 6)]
    assert [key.data_ptr() for key in cache.keys] == buffers
    assert cache.length == 6 and cache.capacity == 16
    assert max_diff(torch.cat(steps, dim=1), full[:, 3:]) < TOLERANCE


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_bfloat16_decoder_keeps_a_float32_cache_on_the_cpu_and_decodes_as_closely(family: str) -> None:
    # A half-precision model's cache on the CPU is float32 and its attention over it runs in float32
    # (kv_cache_dtype: faster there); its cached steps are as close to the float32 truth as its own full pass.
    exact = build("decoder", DECODERS[family])
    model = copy.deepcopy(exact).to(torch.bfloat16)
    ids = tokens(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: the additive mask is cast with the queries
    with torch.no_grad():
        truth = exact(ids, mask).last_hidden_state
        full = model(ids, mask).last_hidden_state.float()
        out = model(ids[:, :4], mask[:, :4], use_cache=True)
        cache, pieces = out.past_key_values, [out.last_hidden_state]
        for i in range(4, 9):
            out = model(ids[:, i : i + 1], mask[:, : i + 1], past_key_values=cache, use_cache=True)
            pieces.append(out.last_hidden_state)
    assert cache.dtype == torch.float32 and all(p.dtype == torch.bfloat16 for p in pieces)
    stepped = torch.cat(pieces, dim=1).float()
    real = mask.bool()
    assert max_diff(stepped[real], truth[real]) <= 1.25 * max_diff(full[real], truth[real])


def test_a_bfloat16_encoder_decoder_keeps_float32_cross_attention_keys_on_the_cpu() -> None:
    exact = build("encoder-decoder", ENCODER_DECODERS["bart"])
    model = copy.deepcopy(exact).to(torch.bfloat16)
    source, target = tokens(2, 7, seed=2), tokens(2, 5, seed=3)
    with torch.no_grad():
        truth = exact(source, decoder_input_ids=target).last_hidden_state
        full = model(source, decoder_input_ids=target).last_hidden_state.float()
        out = model(source, decoder_input_ids=target[:, :1], use_cache=True)
        cache, pieces = out.past_key_values, [out.last_hidden_state]
        for i in range(1, 5):
            out = model(decoder_input_ids=target[:, i : i + 1], past_key_values=cache, use_cache=True)
            pieces.append(out.last_hidden_state)
    assert cache.dtype == torch.float32 and cache.cross_keys[0].dtype == torch.float32
    assert max_diff(torch.cat(pieces, dim=1).float(), truth) <= 1.25 * max_diff(full, truth)


@pytest.mark.parametrize("family", ENCODER_DECODERS)
def test_encoder_decoder_cached_decoding_matches_full_pass(family: str) -> None:
    model = build("encoder-decoder", ENCODER_DECODERS[family])
    source, target = tokens(2, 7, seed=2), tokens(2, 6, seed=3)
    source_mask = torch.ones_like(source)
    source_mask[1, 5:] = 0
    with torch.no_grad():
        full = model(source, source_mask, decoder_input_ids=target)
        encoded = model.encode(source, source_mask)
        out = model(attention_mask=source_mask, decoder_input_ids=target[:, :2], encoder_outputs=encoded,
                    use_cache=True)
        cache, pieces = out.past_key_values, [out.last_hidden_state]
        for i in range(2, 6):
            # Later steps need neither the source nor its encoding: cross K/V live in the cache.
            out = model(attention_mask=source_mask, decoder_input_ids=target[:, i : i + 1],
                        past_key_values=cache, use_cache=True)
            pieces.append(out.last_hidden_state)
    assert max_diff(encoded.last_hidden_state, full.encoder_last_hidden_state) < TOLERANCE
    assert max_diff(torch.cat(pieces, dim=1), full.last_hidden_state) < TOLERANCE


# ---------------------------------------------------------------------------
# Padding never changes real positions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_right_padding(family: str) -> None:
    model = build("encoder", ENCODERS[family])
    ids = tokens(1, 6)
    padded = torch.cat([ids, torch.full((1, 3), PAD)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    types = torch.zeros_like(padded)
    types[:, 3:] = model.config.type_vocab_size - 1 if model.config.type_vocab_size else 0
    with torch.no_grad():
        plain = model(ids, token_type_ids=types[:, :6]).last_hidden_state
        masked = model(padded, mask, token_type_ids=types).last_hidden_state
    assert max_diff(masked[:, :6], plain) < TOLERANCE


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_left_padding_then_cached_steps(family: str) -> None:
    model = build("decoder", DECODERS[family])
    ids = tokens(1, 7)
    prompt = torch.cat([torch.full((1, 3), PAD), ids[:, :5]], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 5)], dim=1).long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = model(ids).last_hidden_state
        out = model(prompt, mask, position_ids=position_ids, use_cache=True)
        pieces = [out.last_hidden_state[:, 3:]]
        for i in range(5, 7):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            step = model(ids[:, i : i + 1], mask, position_ids=torch.tensor([[i]]),
                         past_key_values=out.past_key_values, use_cache=True)
            pieces.append(step.last_hidden_state)
    assert max_diff(torch.cat(pieces, dim=1), plain) < TOLERANCE


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_right_padding(family: str) -> None:
    model = build("decoder", DECODERS[family])
    ids = tokens(1, 6)
    padded = torch.cat([ids, torch.full((1, 3), PAD)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    with torch.no_grad():
        plain = model(ids).last_hidden_state
        masked = model(padded, mask).last_hidden_state
    assert max_diff(masked[:, :6], plain) < TOLERANCE


@pytest.mark.parametrize("family", ENCODER_DECODERS)
def test_encoder_decoder_padded_source_and_target(family: str) -> None:
    model = build("encoder-decoder", ENCODER_DECODERS[family])
    source, target = tokens(1, 5, seed=2), tokens(1, 4, seed=3)
    padded_source = torch.cat([source, torch.full((1, 3), PAD)], dim=1)
    source_mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 3)], dim=1).long()
    padded_target = torch.cat([target, torch.full((1, 2), PAD)], dim=1)
    target_mask = torch.cat([torch.ones(1, 4), torch.zeros(1, 2)], dim=1).long()
    with torch.no_grad():
        plain = model(source, decoder_input_ids=target)
        masked = model(padded_source, source_mask, decoder_input_ids=padded_target,
                       decoder_attention_mask=target_mask)
    assert max_diff(masked.encoder_last_hidden_state[:, :5], plain.encoder_last_hidden_state) < TOLERANCE
    assert max_diff(masked.last_hidden_state[:, :4], plain.last_hidden_state) < TOLERANCE


def test_roberta_positions_skip_left_padding() -> None:
    # RoBERTa numbers real tokens from position_offset whatever the padding side.
    model = build("encoder", ENCODERS["roberta"])
    ids = tokens(1, 5)
    padded = torch.cat([torch.full((1, 2), PAD), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 2), torch.ones(1, 5)], dim=1).long()
    with torch.no_grad():
        plain = model(ids).last_hidden_state
        masked = model(padded, mask).last_hidden_state
    assert max_diff(masked[:, 2:], plain) < TOLERANCE


# ---------------------------------------------------------------------------
# Future tokens never change the past
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_is_causal(family: str) -> None:
    model = build("decoder", DECODERS[family])
    ids = tokens(2, 8)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
    assert max_diff(a[:, :5], b[:, :5]) < TOLERANCE
    assert max_diff(a[:, 5:], b[:, 5:]) > 1e-3


@pytest.mark.parametrize("family", ENCODER_DECODERS)
def test_encoder_decoder_decoder_side_is_causal(family: str) -> None:
    model = build("encoder-decoder", ENCODER_DECODERS[family])
    source, target = tokens(2, 6, seed=2), tokens(2, 7, seed=3)
    changed = target.clone()
    changed[:, 4] = (changed[:, 4] + 1) % VOCAB
    with torch.no_grad():
        a = model(source, decoder_input_ids=target).last_hidden_state
        b = model(source, decoder_input_ids=changed).last_hidden_state
    assert max_diff(a[:, :4], b[:, :4]) < TOLERANCE
    assert max_diff(a[:, 4:], b[:, 4:]) > 1e-3


# ---------------------------------------------------------------------------
# Beam reordering of the cache
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", [[2, 0, 0], [1, 1, 2, 0]], ids=["same-batch", "new-batch"])
def test_decoder_cache_reorder(index: list[int]) -> None:
    model = build("decoder", DECODERS["llama"])
    prompt, step = tokens(3, 4), tokens(len(index), 2, seed=5)
    index_tensor = torch.tensor(index)
    with torch.no_grad():
        cache = model(prompt, use_cache=True).past_key_values
        cache.reorder(index_tensor)
        continued = model(step, past_key_values=cache, use_cache=True).last_hidden_state
        recomputed = model(torch.cat([prompt[index_tensor], step], dim=1)).last_hidden_state[:, 4:]
    assert max_diff(continued, recomputed) < TOLERANCE


def test_encoder_decoder_cache_reorder_includes_cross_attention() -> None:
    model = build("encoder-decoder", ENCODER_DECODERS["t5"])
    source, target, step = tokens(2, 5, seed=2), tokens(2, 3, seed=3), tokens(3, 1, seed=4)
    index = torch.tensor([1, 1, 0])
    with torch.no_grad():
        cache = model(source, decoder_input_ids=target, use_cache=True).past_key_values
        cache.reorder(index)
        continued = model(decoder_input_ids=step, past_key_values=cache).last_hidden_state
        recomputed = model(source[index], decoder_input_ids=torch.cat([target[index], step], dim=1))
    assert max_diff(continued, recomputed.last_hidden_state[:, 3:]) < TOLERANCE


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,family", [("decoder", f) for f in DECODERS]
                         + [("encoder-decoder", f) for f in ENCODER_DECODERS]
                         + [("encoder", f) for f in ENCODERS])
def test_config_round_trip(kind: str, family: str) -> None:
    families = {"decoder": DECODERS, "encoder-decoder": ENCODER_DECODERS, "encoder": ENCODERS}
    config = BackboneConfig(kind=kind, **TINY, **families[kind][family])
    assert BackboneConfig.from_dict(config.to_dict()) == config
    assert BackboneConfig.from_dict(dict(config.to_dict())).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "changes,field",
    [
        (dict(hidden_size=30), "hidden_size"),
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(norm="batchnorm"), "norm"),
        (dict(kind="seq2seq"), "kind"),
        (dict(activation="tanh"), "activation"),
        (dict(position_embedding="alibi"), "position_embedding"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(num_heads="4"), "num_heads"),
        (dict(gated_mlp=1), "gated_mlp"),
        (dict(dropout=1.5), "dropout"),
        (dict(num_layers=0), "num_layers"),
        (dict(head_dim=7, position_embedding="rotary"), "head_dim"),
        (dict(position_embedding="relative"), "position_embedding"),
        (dict(type_vocab_size=2), "type_vocab_size"),
        (dict(num_decoder_layers=2), "num_decoder_layers"),
        (dict(pad_token_id=VOCAB), "pad_token_id"),
        (dict(attention_scale=0.0), "attention_scale"),
    ],
)
def test_config_rejects_bad_values(changes: dict, field: str) -> None:
    values = dict(kind="decoder", **TINY)
    values.update(changes)
    with pytest.raises(ValueError, match=field):
        BackboneConfig(**values)


def test_config_from_dict_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match="hidden_sise"):
        BackboneConfig.from_dict(dict(kind="encoder", hidden_sise=32))


def test_head_dim_stays_unresolved_in_stored_config() -> None:
    config = BackboneConfig(kind="decoder", **TINY)
    assert config.head_dim is None and config.resolved_head_dim == 8
    assert dataclasses.replace(config, hidden_size=64).resolved_head_dim == 16


def test_modules_reject_wrong_kind_and_bad_inputs() -> None:
    with pytest.raises(ValueError, match="kind"):
        Encoder(BackboneConfig(kind="decoder", **TINY))
    model = build("decoder", DECODERS["gpt2"])
    with pytest.raises(ValueError, match="attention_mask"):
        model(tokens(1, 4), torch.ones(1, 3))
    with pytest.raises(ValueError, match="max_positions"):
        model(tokens(1, TINY["max_positions"] + 1))


# ---------------------------------------------------------------------------
# Presets, builder, weight tying
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds(name: str) -> None:
    config = PRESETS[name]()
    assert BackboneConfig.from_dict(config.to_dict()) == config
    if not name.endswith("tiny"):
        return  # building small/base modules only costs time
    model = build_backbone(dataclasses.replace(config, vocab_size=VOCAB)).eval()
    assert isinstance(model, KINDS[config.kind])
    ids = tokens(2, 5)
    with torch.no_grad():
        if config.kind == "encoder":
            out = model(ids)
        elif config.kind == "decoder":
            out = model(ids, use_cache=True)
            assert model.logits(out.last_hidden_state).shape == (2, 5, VOCAB)
        else:
            out = model(ids, decoder_input_ids=ids[:, :3], use_cache=True)
            assert model.logits(out.last_hidden_state).shape == (2, 3, VOCAB)
    assert out.last_hidden_state.shape[-1] == config.hidden_size
    assert torch.isfinite(out.last_hidden_state).all()


@pytest.mark.parametrize("cls,kind,family", [(Decoder, "decoder", DECODERS["gpt2"]),
                                             (EncoderDecoder, "encoder-decoder", ENCODER_DECODERS["bart"])])
def test_tied_lm_head_shares_storage(cls: type, kind: str, family: dict) -> None:
    model = build(kind, family)
    assert isinstance(model, cls)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    model = model.to(torch.float64)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    # A checkpoint that stores the tied tensor once still loads strictly, even with assign=True.
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(state, assign=True)
    assert fresh.lm_head.weight is fresh.get_input_embeddings().weight
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the copy's hook left the original alone


def test_untied_lm_head_is_separate() -> None:
    model = build("decoder", DECODERS["qwen2"])
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    model = build("encoder-decoder", ENCODER_DECODERS["t5-v1.1"])
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_dropout_only_in_training() -> None:
    model = build("decoder", DECODERS["gpt2"])
    ids = tokens(2, 5)
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)
        model.train()
        assert not torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)
