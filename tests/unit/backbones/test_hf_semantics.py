"""Early semantic checks against `transformers` on tiny random models.

Each test builds a tiny randomly initialised `transformers` model, copies its
weights by hand onto the matching nlpkit backbone (the real mapping files
come later in `backbones/checkpoints/`), and compares hidden states (and
logits where a head exists) at the real positions of a padded batch. This
pins down the formulas early: norms, positions, activations, scaling, masks.
"""

from __future__ import annotations

import pytest
import torch

from nlpkit.backbones import BackboneConfig, Decoder, Encoder, EncoderDecoder

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
VOCAB, HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 64, 32, 2, 4, 48, 40


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (norms and biases too), so no formula hides behind ones and zeros."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model.eval()


def load(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    module.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return module.eval()


def batch(pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    if left:
        ids[1, :3], mask[1, :3] = pad_id, 0
    else:
        ids[1, 4:], mask[1, 4:] = pad_id, 0
    return ids, mask


def assert_close_at(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> None:
    real = mask.bool()
    assert (a[real] - b[real]).abs().max().item() < TOLERANCE


def rename_key(key: str, rules: list[tuple[str, str]]) -> str:
    """Applies substring rules in order (a tiny stand-in for the real mapping files)."""
    for old, new in rules:
        key = key.replace(old, new)
    return key


def rename(hf_state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    return {rename_key(key, rules): value for key, value in hf_state.items()}


GPT2_RULES = [("wte", "embeddings.token"), ("wpe", "embeddings.position"), ("h.", "layers."),
              ("ln_1", "attention_norm"), ("ln_2", "mlp_norm"), ("attn.c_proj", "attention.output"),
              ("mlp.c_fc", "mlp.up"), ("mlp.c_proj", "mlp.down"), ("ln_f", "final_norm")]


# ---------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------


def test_gpt2() -> None:
    hf_config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
                                        n_positions=POSITIONS, attn_implementation="eager")
    hf = randomise(transformers.GPT2LMHeadModel(hf_config))
    config = BackboneConfig(kind="decoder", vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
                            intermediate_size=FFN, max_positions=POSITIONS, activation="gelu_tanh",
                            norm_eps=hf_config.layer_norm_epsilon)
    state = {}
    for key, value in hf.transformer.state_dict().items():
        if key.endswith("attn.c_attn.weight") or key.endswith("attn.c_attn.bias"):
            # Conv1D stores (in, out): transpose, then split the fused q/k/v.
            prefix = key.replace("h.", "layers.").replace("attn.c_attn.", "attention.{}.")
            parts = (value.t() if value.dim() == 2 else value).chunk(3, dim=0)
            for name, part in zip(("query", "key", "value"), parts):
                state[prefix.format(name)] = part
            continue
        if value.dim() == 2 and (".c_proj." in key or ".c_fc." in key):
            value = value.t()
        state[rename_key(key, GPT2_RULES)] = value
    state["lm_head.weight"] = state["embeddings.token.weight"]
    ours = load(Decoder(config), state)

    ids, mask = batch(pad_id=0, left=True)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=position_ids)
        hidden = ours(ids, mask, position_ids=position_ids).last_hidden_state
    assert_close_at(hidden, hf.transformer(ids, attention_mask=mask, position_ids=position_ids).last_hidden_state, mask)
    assert_close_at(ours.logits(hidden), expected.logits, mask)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llama_and_qwen2(family: str) -> None:
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=2, intermediate_size=FFN, max_position_embeddings=POSITIONS, head_dim=12,
                  rope_parameters={"rope_type": "default", "rope_theta": 50000.0}, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, attn_implementation="eager")
    if family == "llama":
        hf = randomise(transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)))
    else:
        hf = randomise(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)))
    config = BackboneConfig(kind="decoder", vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
                            num_kv_heads=2, head_dim=12, intermediate_size=FFN, max_positions=POSITIONS,
                            position_embedding="rotary", rope_theta=50000.0, norm="rmsnorm", norm_eps=1e-6,
                            activation="silu", gated_mlp=True, attention_bias=family == "qwen2",
                            attention_output_bias=False, mlp_bias=False, tie_word_embeddings=False)
    state = rename(hf.state_dict(), [("model.embed_tokens", "embeddings.token"), ("model.layers.", "layers."),
                                     ("self_attn.q_proj", "attention.query"), ("self_attn.k_proj", "attention.key"),
                                     ("self_attn.v_proj", "attention.value"), ("self_attn.o_proj", "attention.output"),
                                     ("input_layernorm", "attention_norm"), ("post_attention_layernorm", "mlp_norm"),
                                     ("_proj", ""), ("model.norm", "final_norm")])
    ours = load(Decoder(config), state)

    ids, mask = batch(pad_id=0, left=True)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=position_ids)
        hidden = ours(ids, mask, position_ids=position_ids).last_hidden_state
    assert_close_at(ours.logits(hidden), expected.logits, mask)


# ---------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------

BERT_RULES = [("word_embeddings", "token"), ("position_embeddings", "position"),
              ("token_type_embeddings", "token_type"),
              ("embeddings.LayerNorm", "embeddings.norm"), ("encoder.layer.", "layers."),
              ("attention.self.", "attention."), ("attention.output.dense", "attention.output"),
              ("attention.output.LayerNorm", "attention_norm"), ("intermediate.dense", "mlp.up"),
              ("output.dense", "mlp.down"), ("output.LayerNorm", "mlp_norm")]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_bert_and_roberta(family: str) -> None:
    roberta = family == "roberta"
    hf_config = (transformers.RobertaConfig if roberta else transformers.BertConfig)(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS + (2 if roberta else 0),
        type_vocab_size=1 if roberta else 2, pad_token_id=1 if roberta else 0, attn_implementation="eager")
    hf_class = transformers.RobertaModel if roberta else transformers.BertModel
    hf = randomise(hf_class(hf_config, add_pooling_layer=False))
    config = BackboneConfig(kind="encoder", vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
                            intermediate_size=FFN, max_positions=POSITIONS, position_offset=2 if roberta else 0,
                            type_vocab_size=hf_config.type_vocab_size, pad_token_id=hf_config.pad_token_id,
                            norm_position="post", embedding_norm=True, final_norm=False, norm_eps=1e-12)
    ours = load(Encoder(config), rename(hf.state_dict(), BERT_RULES))

    ids, mask = batch(pad_id=hf_config.pad_token_id, left=roberta)  # left padding shows RoBERTa's position rule
    types = torch.zeros_like(ids)
    if not roberta:
        types[:, 4:] = 1
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        hidden = ours(ids, mask, token_type_ids=types).last_hidden_state
    assert_close_at(hidden, expected, mask)


def test_distilbert() -> None:
    hf_config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                              hidden_dim=FFN, max_position_embeddings=POSITIONS,
                                              attn_implementation="eager")
    hf = randomise(transformers.DistilBertModel(hf_config))
    config = BackboneConfig(kind="encoder", vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
                            intermediate_size=FFN, max_positions=POSITIONS, norm_position="post",
                            embedding_norm=True, final_norm=False, norm_eps=1e-12)
    state = rename(hf.state_dict(), [("word_embeddings", "token"), ("position_embeddings", "position"),
                                     ("embeddings.LayerNorm", "embeddings.norm"), ("transformer.layer.", "layers."),
                                     ("q_lin", "query"), ("k_lin", "key"), ("v_lin", "value"), ("out_lin", "output"),
                                     ("sa_layer_norm", "attention_norm"), ("ffn.lin1", "mlp.up"),
                                     ("ffn.lin2", "mlp.down"), ("output_layer_norm", "mlp_norm")])
    ours = load(Encoder(config), state)
    ids, mask = batch(pad_id=0)
    with torch.no_grad():
        assert_close_at(ours(ids, mask).last_hidden_state, hf(ids, attention_mask=mask).last_hidden_state, mask)


# ---------------------------------------------------------------------------
# Encoder-decoders
# ---------------------------------------------------------------------------

BART_RULES = [("model.shared", "token_embedding"), ("model.", ""), ("embed_positions", "embeddings.position"),
              ("layernorm_embedding", "embeddings.norm"), ("self_attn_layer_norm", "attention_norm"),
              ("encoder_attn_layer_norm", "cross_attention_norm"), ("final_layer_norm", "mlp_norm"),
              ("self_attn.", "attention."), ("encoder_attn.", "cross_attention."), ("q_proj", "query"),
              ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "output"), ("fc1", "mlp.up"), ("fc2", "mlp.down")]


@pytest.mark.parametrize("family", ["bart", "marian"])
def test_bart_and_marian(family: str) -> None:
    common = dict(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                  encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                  decoder_ffn_dim=FFN, max_position_embeddings=POSITIONS, pad_token_id=1,
                  decoder_start_token_id=2, attn_implementation="eager")
    if family == "bart":
        hf = randomise(transformers.BartForConditionalGeneration(transformers.BartConfig(**common)))
    else:
        hf_config = transformers.MarianConfig(**common, scale_embedding=True, activation_function="swish")
        hf = transformers.MarianMTModel(hf_config)
        sinusoids = {k: v.clone() for k, v in hf.state_dict().items() if "embed_positions" in k}
        randomise(hf)
        hf.load_state_dict(sinusoids, strict=False)  # fixed tables, not weights
    with torch.no_grad():
        hf.final_logits_bias.normal_()
    config = BackboneConfig(kind="encoder-decoder", vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS,
                            num_heads=HEADS, intermediate_size=FFN, max_positions=POSITIONS, pad_token_id=1,
                            position_embedding="learned" if family == "bart" else "sinusoidal",
                            position_offset=2 if family == "bart" else 0, embedding_norm=family == "bart",
                            scale_embedding=family == "marian", activation="gelu" if family == "bart" else "silu",
                            norm_position="post", final_norm=False, lm_head_bias=True)
    state = rename({k: v for k, v in hf.state_dict().items()
                    if not k.endswith("embed_tokens.weight") and not (family == "marian" and "embed_positions" in k)},
                   BART_RULES)
    state["final_logits_bias"] = state["final_logits_bias"].flatten()
    ours = load(EncoderDecoder(config), state)
    if family == "marian":
        assert (ours.encoder.embeddings.position.table - hf.model.encoder.embed_positions.weight).abs().max() < 1e-6

    source, source_mask = batch(pad_id=1)
    target = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(source, attention_mask=source_mask, decoder_input_ids=target, output_hidden_states=True)
        out = ours(source, source_mask, decoder_input_ids=target)
    assert_close_at(out.encoder_last_hidden_state, expected.encoder_last_hidden_state, source_mask)
    full = torch.ones_like(target)
    assert_close_at(out.last_hidden_state, expected.decoder_hidden_states[-1], full)
    assert_close_at(ours.logits(out.last_hidden_state), expected.logits, full)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_t5(version: str) -> None:
    gated = version == "1.1"
    hf_config = transformers.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=12, d_ff=FFN, num_layers=LAYERS,
                                      num_decoder_layers=LAYERS + 1, num_heads=HEADS,
                                      relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                      feed_forward_proj="gated-gelu" if gated else "relu", pad_token_id=0,
                                      decoder_start_token_id=0, tie_word_embeddings=not gated,
                                      attn_implementation="eager")
    hf = randomise(transformers.T5ForConditionalGeneration(hf_config))
    config = BackboneConfig(kind="encoder-decoder", vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS,
                            num_decoder_layers=LAYERS + 1, num_heads=HEADS, head_dim=12, intermediate_size=FFN,
                            position_embedding="relative", relative_attention_num_buckets=8,
                            relative_attention_max_distance=20, norm="rmsnorm", norm_eps=1e-6,
                            activation="gelu_tanh" if gated else "relu", gated_mlp=gated, attention_bias=False,
                            attention_output_bias=False, mlp_bias=False, attention_scale=1.0,
                            tie_word_embeddings=not gated, scale_lm_head_input=not gated)
    state = {}
    for key, value in hf.state_dict().items():
        if key.endswith("embed_tokens.weight") or (key == "lm_head.weight" and not gated):
            continue
        if "relative_attention_bias" in key:
            state[key.split(".")[0] + ".relative_position_bias.embedding.weight"] = value
            continue
        stack = key.split(".")[0]
        sublayer = {"0": "attention", "1": "cross_attention" if stack == "decoder" else "mlp", "2": "mlp"}
        parts = key.split(".")
        if parts[1] == "block":
            kind = sublayer[parts[4]]
            name = parts[5] if parts[5] == "layer_norm" else parts[6]
            name = {"q": "query", "k": "key", "v": "value", "o": "output", "wi": "up", "wi_0": "gate", "wi_1": "up",
                    "wo": "down"}.get(name, name)
            prefix = f"{stack}.layers.{parts[2]}.{kind}"
            state[f"{prefix}_norm.weight" if name == "layer_norm" else f"{prefix}.{name}.weight"] = value
        else:
            state[rename_key(key, [("shared", "token_embedding"), ("final_layer_norm", "final_norm")])] = value
    ours = load(EncoderDecoder(config), state)

    source, source_mask = batch(pad_id=0)
    target = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(source, attention_mask=source_mask, decoder_input_ids=target, output_hidden_states=True)
        out = ours(source, source_mask, decoder_input_ids=target)
    assert_close_at(out.encoder_last_hidden_state, expected.encoder_last_hidden_state, source_mask)
    full = torch.ones_like(target)
    assert_close_at(out.last_hidden_state, expected.decoder_hidden_states[-1], full)
    if not gated:
        # transformers 5 always ties T5's head, so only the tied (v1.0) logits are comparable.
        assert_close_at(ours.logits(out.last_hidden_state), expected.logits, full)
