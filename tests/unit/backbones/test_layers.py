"""The CPU fast paths of the shared layers (`cpu.py`) and the dropped all-ones masks.

These replace torch's own implementations for speed only, so each test pins
them to the formula they stand in for: `F.dropout`'s distribution and
scaling, SDPA's math path given the same dropout mask, `nn.Linear` for any
row count, packed or not, and "no mask" for a mask of ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlpkit.backbones import BackboneConfig, Encoder, cpu, layers


@pytest.mark.parametrize("serial", [True, False])
def test_dropout_matches_torch_distribution_and_scaling(serial: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_BERNOULLI_IS_SERIAL", serial)
    torch.manual_seed(0)
    dropout = cpu.Dropout(0.1).train()
    x = torch.randn(1000, 1000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    # 1e6 draws: the kept share is within 5 standard deviations (5 * 3e-4) of 0.9.
    assert abs(kept.float().mean().item() - 0.9) < 1.5e-3
    assert torch.equal(y[kept], (x * (1 / 0.9))[kept])
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * (1 / 0.9))
    assert dropout.eval()(x) is x


def test_dropout_follows_the_torch_seed() -> None:
    dropout = cpu.Dropout(0.5).train()
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(dropout(x), first)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_with_dropout_is_sdpa_math_given_the_mask(
    kv_heads: int, causal: bool, masked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    batch, heads, length, head_dim, p = 2, 4, 7, 8, 0.3
    q = torch.randn(batch, heads, length, head_dim, requires_grad=True)
    k = torch.randn(batch, kv_heads, length, head_dim, requires_grad=True)
    v = torch.randn(batch, kv_heads, length, head_dim, requires_grad=True)
    mask = torch.zeros(batch, 1, length, length)
    mask[1, ..., 5:] = torch.finfo(mask.dtype).min
    mask = mask if masked else None
    keep = torch.rand(batch, heads, length, length) >= p
    monkeypatch.setattr(cpu, "_keep_mask", lambda shape, p, device: keep)

    y = cpu.attention_with_dropout(q, k, v, mask, causal, 0.5, p)

    # Reference: SDPA's math path written out in float64, dropping the same weights.
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    group = heads // kv_heads
    scores = q64 @ k64.repeat_interleave(group, 1).transpose(-1, -2) * 0.5
    if mask is not None:
        scores = scores + mask.double()
    if causal:
        scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    reference = (torch.softmax(scores, -1) * keep / (1 - p)) @ v64.repeat_interleave(group, 1)
    assert (y.double() - reference).abs().max().item() < 1e-5

    grad = torch.randn_like(reference)
    (y.double() * grad).sum().backward()
    (reference * grad).sum().backward()
    for ours, theirs in ((q, q64), (k, k64), (v, v64)):
        assert (ours.grad.double() - theirs.grad).abs().max().item() < 1e-5


@pytest.mark.parametrize("native", [True, False])
def test_attention_with_dropout_in_bfloat16_is_the_float32_maths(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # native: the products in bfloat16 (a CPU with bfloat16 instructions); else all in float32, as SDPA's math path.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    monkeypatch.setattr(cpu, "_keep_mask", lambda shape, p, device: torch.ones(shape, dtype=torch.bool))
    monkeypatch.setattr(cpu, "_BFLOAT16_IS_NATIVE", native)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu.attention_with_dropout(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, False, None, 0.5)
    assert y.dtype == torch.bfloat16
    # Keeping everything, dropout only scales by 1 / (1 - p).
    expected = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float()) * 2
    assert (y.float() - expected).abs().max().item() < 3e-2


def test_mask_of_ones_is_no_mask() -> None:
    ones = torch.ones(2, 5, dtype=torch.long)
    assert layers.make_attention_mask(ones, 5, 5, causal=False, dtype=torch.float32, device=ones.device) == (None, False)
    assert layers.make_attention_mask(ones, 5, 5, causal=True, dtype=torch.float32, device=ones.device) == (None, True)
    # Two new queries over three past positions: only the causal part remains, shared by the batch.
    mask, is_causal = layers.make_attention_mask(ones, 2, 5, causal=True, dtype=torch.float32, device=ones.device)
    assert not is_causal and mask.shape == (1, 1, 2, 5)
    assert torch.equal(mask == 0, torch.tensor([[True] * 4 + [False], [True] * 5])[None, None])
    mask, _ = layers.make_attention_mask(ones, 5, 5, causal=False, dtype=torch.float32, device=ones.device,
                                         explicit=True)
    assert mask is not None and torch.all(mask == 0)
    with pytest.raises(ValueError, match="attention_mask must cover"):
        layers.make_attention_mask(ones, 4, 4, causal=False, dtype=torch.float32, device=ones.device)


def test_encoder_trains_the_same_with_a_mask_of_ones() -> None:
    config = BackboneConfig(kind="encoder", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                            intermediate_size=64, max_positions=16, type_vocab_size=2)
    encoder = Encoder(config).train()
    ids = torch.randint(1, 50, (3, 9))
    torch.manual_seed(5)
    with_mask = encoder(ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.manual_seed(5)
    without = encoder(ids).last_hidden_state
    assert torch.equal(with_mask, without)


@pytest.mark.parametrize("rows", [1, 2, 7, 32, 128, 129, 600])
@pytest.mark.parametrize("shape", [(48, 48), (48, 200), (200, 48)], ids=["square", "widening", "narrowing"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_nn_linear_for_any_row_count(rows: int, shape: tuple[int, int], bias: bool) -> None:
    # The weight-first product for few rows is the same function as nn.Linear, batch dims and all.
    torch.manual_seed(0)
    ours = cpu.Linear(*shape, bias=bias)
    reference = torch.nn.Linear(*shape, bias=bias)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(rows, 1, shape[0])
    y = ours(x)
    assert y.shape == (rows, 1, shape[1]) and y.is_contiguous()
    torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x[:, 0]), reference(x[:, 0]), rtol=1e-5, atol=1e-5)


def test_linear_trains_like_nn_linear_through_the_few_rows_path() -> None:
    torch.manual_seed(0)
    ours, reference = cpu.Linear(16, 24), torch.nn.Linear(16, 24)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 16)
    ours(x).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad)


needs_onednn = pytest.mark.skipif(not cpu._onednn_linear_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("rows", [1, 8, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_nn_linear_in_inference(rows: int, bias: bool) -> None:
    torch.manual_seed(0)
    ours, reference = cpu.Linear(48, 200, bias=bias), torch.nn.Linear(48, 200, bias=bias)
    reference.load_state_dict(ours.state_dict())
    assert ours.pack()
    x = torch.randn(rows, 2, 48)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    assert ours(x).requires_grad  # with gradients on, the dense weight is used and trained


@needs_onednn
def test_packed_linear_drops_a_stale_copy_when_the_weight_changes() -> None:
    torch.manual_seed(0)
    ours = cpu.Linear(16, 24)
    assert ours.pack()
    x = torch.randn(3, 16)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.5)
    ours(x).square().sum().backward()
    optimizer.step()  # an in-place update of the weight
    with torch.no_grad():
        torch.testing.assert_close(ours(x), torch.nn.functional.linear(x, ours.weight, ours.bias))
    assert ours.pack()
    ours.load_state_dict({"weight": torch.zeros(24, 16), "bias": torch.ones(24)})
    with torch.no_grad():
        assert torch.equal(ours(x), torch.ones(3, 24))


def test_float32_and_bfloat16_cpu_weights_are_packed_where_onednn_has_them() -> None:
    model = torch.nn.Sequential(cpu.Linear(8, 8), cpu.Linear(8, 8).to(torch.bfloat16),
                                cpu.Linear(8, 8).double(), torch.nn.Linear(8, 8))
    expected = 0
    if cpu._onednn_linear_available():
        expected = 2 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 1
    assert cpu.pack_for_cpu_inference(model) == expected


@pytest.mark.skipif(not (cpu._onednn_linear_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="no oneDNN bfloat16 on this CPU")
@pytest.mark.parametrize("release", [False, True])
@pytest.mark.parametrize("rows", [1, 8, 300])
def test_a_packed_bfloat16_linear_equals_nn_linear_in_inference(rows: int, release: bool) -> None:
    torch.manual_seed(0)
    ours, reference = cpu.Linear(64, 200).bfloat16(), torch.nn.Linear(64, 200).bfloat16()
    reference.load_state_dict(ours.state_dict())
    assert cpu.pack_for_cpu_inference(ours, release=release) == 1
    assert ours.weight.is_mkldnn == release and ours.weight.dtype == torch.bfloat16
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        # Both accumulate in float32 and round once; they may differ in the summation order only.
        torch.testing.assert_close(ours(x), reference(x), rtol=1.6e-2, atol=1e-2)
    assert ours.weight.is_mkldnn == release  # a bfloat16 input kept the packed weight
    assert ours(x).requires_grad and not ours.weight.is_mkldnn  # training needs the dense weight back


@needs_onednn
def test_a_packed_model_can_be_copied_and_saved_whole() -> None:
    import copy
    import io

    torch.manual_seed(0)
    model = torch.nn.Sequential(cpu.Linear(16, 24), torch.nn.ReLU(), cpu.Linear(24, 4))
    assert cpu.pack_for_cpu_inference(model) == 2
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    x = torch.randn(5, 16)
    for other in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert other[0]._packed is None  # copies start unpacked
        with torch.no_grad():
            torch.testing.assert_close(other(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_linear_has_exactly_the_parameters_and_state_dict_of_nn_linear(packed: bool) -> None:
    # Checkpoints map onto nn.Linear names and shapes; the packed copy is no parameter, buffer or state.
    ours, reference = cpu.Linear(16, 24), torch.nn.Linear(16, 24)
    if packed:
        cpu.pack_for_cpu_inference(ours)
    assert [(name, p.shape) for name, p in ours.named_parameters()] == \
        [(name, p.shape) for name, p in reference.named_parameters()]
    assert list(ours.buffers()) == []
    assert {name: t.shape for name, t in ours.state_dict().items()} == \
        {name: t.shape for name, t in reference.state_dict().items()}
    assert isinstance(ours, torch.nn.Linear) and isinstance(cpu.Dropout(0.1), torch.nn.Dropout)


def test_moved_names_are_still_importable_from_layers() -> None:
    # Callers outside the backbones still import these from `layers` (see the re-export there).
    assert layers.Linear is cpu.Linear and layers.Dropout is cpu.Dropout
    assert layers.pack_for_cpu_inference is cpu.pack_for_cpu_inference
    assert layers._onednn_linear_available is cpu._onednn_linear_available


@needs_onednn
def test_a_released_weight_is_one_copy_that_answers_the_same_and_comes_back_dense_when_needed() -> None:
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(cpu.Linear(16, 24), torch.nn.ReLU(), cpu.Linear(24, 4)).eval()
    reference = copy.deepcopy(model)
    x = torch.randn(5, 16)
    assert cpu.pack_for_cpu_inference(model, release=True) == 2
    assert model[0].weight.is_mkldnn and model[0].weight.shape == (24, 16) and model[0]._packed is None
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    # Saving reads the dense weight, exactly as it was.
    state = model.state_dict()
    assert not model[0].weight.is_mkldnn
    assert all(torch.equal(state[name], value) for name, value in reference.state_dict().items())
    # Training, gradients, moving and loading each bring the dense weight back first.
    for bring_back in (lambda m: m.train(), lambda m: m(x).sum().backward(), lambda m: m.double(),
                       lambda m: m.load_state_dict(reference.state_dict())):
        released = copy.deepcopy(reference)
        cpu.pack_for_cpu_inference(released, release=True)
        bring_back(released)
        assert not released[0].weight.is_mkldnn
    # A copy starts dense; the original stays released.
    assert cpu.pack_for_cpu_inference(model, release=True) == 2
    copied = copy.deepcopy(model)
    assert not copied[0].weight.is_mkldnn and model[0].weight.is_mkldnn
    with torch.no_grad():
        torch.testing.assert_close(copied(x), reference(x), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_weight_tied_to_an_embedding_keeps_its_dense_form(dtype: torch.dtype) -> None:
    if dtype not in cpu._packable_dtypes():
        pytest.skip("no oneDNN bfloat16 on this CPU")
    embedding, head, other = torch.nn.Embedding(24, 16), cpu.Linear(16, 24, bias=False), cpu.Linear(16, 16)
    head.weight = embedding.weight  # an LM head tied to the token embedding, which looks rows up in it
    model = torch.nn.ModuleDict({"embedding": embedding, "head": head, "other": other}).to(dtype)
    copy_too = dtype == torch.bfloat16  # a second, packed copy only where the dense product is slow
    assert cpu.pack_for_cpu_inference(model, release=True) == 1 + copy_too
    assert head.weight is embedding.weight and not head.weight.is_mkldnn
    assert (head._packed is not None) == copy_too
    with torch.inference_mode():
        torch.testing.assert_close(head(torch.ones(3, 16, dtype=dtype)),
                                   torch.ones(3, 16, dtype=dtype) @ embedding.weight.T, rtol=1.6e-2, atol=1e-2)
    assert (head._packed is not None) == copy_too  # current (a stale copy is dropped when used), so it is used
