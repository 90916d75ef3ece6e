"""CPU fast paths of the shared layers: the same maths as torch's own modules, in fewer passes.

`layers.py` builds the Transformer from `Linear` and `Dropout` and calls
`attention_with_dropout`; this module is why those are not simply
`nn.Linear`, `nn.Dropout` and SDPA. Each replaces torch's implementation on
the CPU, for speed only, and is pinned to the formula it stands in for by
`tests/unit/backbones/test_layers.py`:

- `Dropout` keeps a 1-byte boolean mask for backward instead of torch's
  float noise and, on CPUs where `bernoulli_` runs serially, draws it as
  16-bit random numbers, four from each 64-bit draw (`_keep_mask`).
- `attention_with_dropout` is SDPA's CPU `math` path (the only one with
  dropout) with both scales inside the matmuls, a plain softmax and the same
  boolean dropout mask.
- `Linear` runs float32 and bfloat16 inference with a oneDNN-packed weight
  when asked (`pack_for_cpu_inference`, which `nlpkit.load` calls), else
  multiplies a few rows weight-first, where the CPU BLAS is slow on the few
  rows decoding feeds per step (measurements above `Linear`).

Other devices, and the cases each docstring names, use torch's own kernels.
"""

from __future__ import annotations

import functools
import math
import platform
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Dropout", "Linear", "attention_with_dropout", "pack_for_cpu_inference"]


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


def _bernoulli_is_serial() -> bool:
    """Whether `Tensor.bernoulli_(p)` runs on one thread on this CPU.

    torch samples `bernoulli_` with MKL (in parallel) only on Intel CPUs;
    elsewhere it draws a double per element on one thread
    (`bernoulli_scalar_kernel` in `ATen/native/cpu/DistributionKernels.cpp`),
    about twice the cost of `torch.rand`. Dropout draws one number per
    activation, so on such CPUs (AMD, ARM) the draw alone is ~10% of a BERT
    training step on two cores.
    """
    if not torch.backends.mkl.is_available():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" not in f.read(4096)
    except OSError:
        return "intel" not in platform.processor().lower()


# Read once at import: constants, also to torch.compile (which would warn about tracing a cached function).
_BERNOULLI_IS_SERIAL = _bernoulli_is_serial()
# Whether oneDNN multiplies bfloat16 with this CPU's own instructions (AVX512-BF16, AMX), not emulated.
_BFLOAT16_IS_NATIVE = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Boolean mask, True with probability `1 - p`, from the default generator."""
    if device.type == "cpu" and _BERNOULLI_IS_SERIAL:
        # torch's CPU random kernels run on one thread, one 64-bit draw per element of `random_(from, to)` (for
        # int32's range as for any wider than 32 bits). `random_` from int64's minimum with no `to` is the
        # full 64-bit range: four 16-bit numbers a draw, one per element (p is kept to 1/65536: 0.1 drops
        # 0.100006 of the elements). Measured on 2 AMD EPYC cores, 3.1M elements (BERT-base's attention
        # dropout at 16 x 128): 3.7-4.1 ms, against 7.0-8.3 ms for two 16-bit numbers from each int32 draw
        # and 11.3 ms for `torch.rand(shape) >= p`. Splitting the draw across threads (a generator each)
        # measured no faster.
        count = math.prod(shape)
        words = torch.empty(-(-count // 4), dtype=torch.int64, device=device).random_(-(2**63), None)
        return (words.view(torch.int16)[:count] >= round(p * 65536) - 32768).view(shape)
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p)


class Dropout(nn.Dropout):
    """`nn.Dropout` that keeps a boolean mask on CPU.

    Same distribution and scaling as `F.dropout` (zero with probability `p`,
    the rest multiplied by `1 / (1 - p)`), but backward keeps a 1-byte mask
    per element instead of torch's 4-byte float noise, and the mask comes from
    `_keep_mask` (faster where `bernoulli_` is serial). Other devices use
    torch's fused kernels.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p in (0.0, 1.0) or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        keep = _keep_mask(x.shape, self.p, x.device)
        return torch.where(keep, x, 0.0).mul_(1.0 / (1.0 - self.p))  # where's backward needs only `keep`


# ---------------------------------------------------------------------------
# Attention with dropout
# ---------------------------------------------------------------------------


def attention_with_dropout(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None, dropout_p: float
) -> Tensor:
    """SDPA's CPU `math` path with dropout, in fewer passes over the scores.

    torch's CPU flash kernel has no dropout, so in training SDPA runs
    `_scaled_dot_product_attention_math`: it scales q and k, adds the mask,
    takes a "safe" softmax (three extra passes that turn fully `-inf` rows
    into zeros; nlpkit masks with `finfo.min`, so it has none), draws float
    dropout noise with `bernoulli_` and multiplies by it. Here both scales go
    into the matmuls' `alpha`, the softmax is plain, and the dropout keeps a
    boolean mask. bfloat16 inputs are multiplied in bfloat16 where the CPU
    has bfloat16 instructions (as autocast's `matmul` does; oneDNN accumulates
    in float32), with the mask and softmax in float32; other half-precision
    inputs, like the math path, are computed in float32.

    Args:
        q: `(batch, heads, queries, head_dim)`.
        k: `(batch, kv_heads, keys, head_dim)`; `heads` must be a multiple of `kv_heads`.
        v: Same shape as `k`.
        mask: Additive mask broadcastable to `(batch, heads, queries, keys)`, or None.
        is_causal: Mask keys after each query (top-left aligned, as SDPA).
        scale: Multiplier of the dot products; None means `head_dim ** -0.5`.
        dropout_p: Probability of dropping an attention weight.

    Returns:
        `(batch, heads, queries, head_dim)` in the dtype of `q`.
    """
    dtype = q.dtype
    batch, heads, queries, head_dim = q.shape
    keys = k.shape[2]
    if k.shape[1] != heads:  # grouped-query attention: query head h reads kv head h // group
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    # The products' dtype. bfloat16's are 3.4x float32's speed here (192 products of 128 x 64 by 64 x 128: 1.3
    # against 4.4 ms), and a BERT-base attention's forward and backward at 16 x 128 took 35-47 ms against 62-64.
    products = dtype
    if dtype == torch.float16 or (dtype == torch.bfloat16 and not _BFLOAT16_IS_NATIVE):
        products = torch.float32
    softmax_dtype = torch.promote_types(products, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        # One pass each into contiguous (batch * heads, seq, head_dim) rows: a cast writes them contiguous,
        # and without one `to` makes the contiguous copy that `reshape` would.
        q3, k3, v3 = (
            t.to(products, memory_format=torch.contiguous_format).reshape(batch * heads, t.shape[2], head_dim)
            for t in (q, k, v)
        )
        scale = head_dim**-0.5 if scale is None else scale
        # beta=0: the (empty) input is ignored; the scale is applied inside the GEMM.
        scores = torch.baddbmm(q3.new_empty(()), q3, k3.transpose(1, 2), beta=0.0, alpha=scale)
        # (batch, heads, queries, keys), at least float32 from here on; in place: baddbmm's backward needs its
        # inputs, not its output.
        scores = scores.view(batch, heads, queries, keys).to(softmax_dtype)
        if mask is not None:
            scores.add_(mask.to(softmax_dtype))
        if is_causal:
            scores.masked_fill_(torch.ones(queries, keys, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        weights = torch.where(_keep_mask(weights.shape, dropout_p, weights.device), weights, 0.0).to(products)
        y = torch.baddbmm(
            v3.new_empty(()), weights.view(batch * heads, queries, keys), v3, beta=0.0, alpha=1.0 / (1.0 - dropout_p)
        )  # (batch * heads, queries, head_dim); alpha is the dropout's 1 / (1 - p)
    # A cast back to half precision writes (batch, queries, heads, head_dim) rows, so that the
    # caller's `transpose(1, 2).reshape(...)` is a view rather than a second copy.
    y = y.view(batch, heads, queries, head_dim).transpose(1, 2)
    return y.to(dtype, memory_format=torch.contiguous_format).transpose(1, 2)


# ---------------------------------------------------------------------------
# Linear layers
# ---------------------------------------------------------------------------

# Measured with torch 2.13's CPU build on a 2-core AMD EPYC, float32, weights streamed from memory as
# in decoding, milliseconds per product (768 -> 50257 is GPT-2's LM head; oneDNN weights packed for
# 64 rows, 3072 -> 768's for the row count shown):
#                          rows   x @ W.T (MKL)   (W @ x.T).T (MKL)   oneDNN, packed weight
#   768 -> 50257              1          11.9           6.0 (as 2 rows)          5.8
#                             8          23.6          14.7                      5.8
#                            32          35.3          27.2                     13.2
#                           128         112            74                       49
#   768 -> 3072               1           0.72          0.30 (as 2 rows)         0.40
#                             8           0.87          0.86                     0.46
#   3072 -> 768               1           0.56          0.67                     0.38
#                             8           0.81          1.00                     0.40
# MKL's single-row and few-row float32 paths run far below memory bandwidth. A packed weight (oneDNN's
# blocked layout, what torch.compile's CPU backend uses) is fastest, but it is a second copy of the
# weight, so models are packed on request (`pack_for_cpu_inference`, which `nlpkit.load` calls).
# Unpacked, few rows go weight-first, except through a narrowing layer (a down projection) under 32
# rows. Past a few hundred rows (training batches) both MKL orders reach the same GEMM speed. Unpacked
# bfloat16 already goes through oneDNN, where the usual order is as fast or faster, so it keeps it; packed,
# bfloat16 runs 1.3-2x faster still (rows 1 and 8: 768 -> 3072 0.35 / 0.45 ms dense, 0.19 / 0.22 packed;
# the LM head 5.5 / 7.6 against 2.8 / 3.6), close to what this machine streams (about 18 GB/s for oneDNN).
_WEIGHT_FIRST_MAX_ROWS = 128
_NARROWING_MIN_ROWS = 32
_PACKED_ROWS_HINT = 64  # oneDNN picks the blocking for this many rows; 64 measured best for 1-128 rows


@functools.cache
def _packable_dtypes() -> frozenset[torch.dtype]:
    """The weight dtypes oneDNN packs here: float32, and bfloat16 where the CPU has bf16 instructions."""
    if not _onednn_linear_available():
        return frozenset()
    if _BFLOAT16_IS_NATIVE:
        return frozenset({torch.float32, torch.bfloat16})
    return frozenset({torch.float32})


@functools.cache
def _onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed linear kernels (private ops, as torch.compile uses them)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._reorder_linear_weight and torch.ops.mkldnn._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False


class Linear(nn.Linear):
    """`nn.Linear` with faster float32 and bfloat16 inference on the CPU, same parameters and state dict.

    Decoding feeds one row per sequence or beam through every layer, and
    there the CPU BLAS computes `x @ W.T` (what `F.linear` asks for) far
    below memory bandwidth (measurements above). Two remedies, both exact
    up to float32 rounding:

    - `pack()` keeps a copy of the weight in oneDNN's blocked layout, used
      for CPU inputs of the weight's dtype (float32, or bfloat16 where the CPU
      has bf16 instructions) whenever gradients are off (inference); a
      weight changed after packing (an optimizer step, `load_state_dict`)
      drops the stale copy and falls back. `pack(release=True)` keeps the
      blocked weight *instead of* the dense one (inference-only models: no
      second copy in memory); the dense weight comes back (`unpack`) before
      anything that needs it: `train()`, `state_dict()` (saving, exporting),
      `load_state_dict()`, `.to()`, a forward pass with gradients, autocast
      or another dtype. Shape, dtype and device read as before.
    - Without a packed copy, up to 128 rows are multiplied weight-first,
      `(W @ x.T).T`, a lone row doubled so BLAS takes its matrix-matrix path.

    Other devices, dtypes and row counts call `F.linear`.
    """

    _packed: tuple[Tensor, int, int] | None = None  # (blocked weight, weight version, weight data pointer)
    _released = False  # the weight parameter holds the blocked weight itself (pack(release=True))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What reads or writes the dense weight gets it back first (see the class docstring). Module-level
        # functions, not lambdas: a whole model must stay picklable (torch.save(model)).
        self.register_state_dict_pre_hook(_unpack_before_state_dict)
        self.register_load_state_dict_pre_hook(_unpack_before_load)

    def pack(self, release: bool = False) -> bool:
        """Keeps a oneDNN-blocked copy of a float32 or bfloat16 CPU weight for inference; whether one was made.

        Args:
            release: keep the blocked weight in place of the dense one (one copy in memory, not two).
        """
        if self._released:
            return True
        weight = self.weight
        if weight.dtype not in _packable_dtypes() or weight.device.type != "cpu":
            return False
        with torch.no_grad():
            blocked = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACKED_ROWS_HINT)
        if release:
            # An opaque oneDNN tensor, which `.data =` refuses: a new Parameter of the same shape, dtype and device.
            self.weight = nn.Parameter(blocked, requires_grad=weight.requires_grad)
            self._packed, self._released = None, True
        else:
            self._packed = (blocked, weight._version, weight.data_ptr())
        return True

    def unpack(self) -> None:
        """Brings the dense weight back if `pack(release=True)` replaced it (no-op otherwise)."""
        if self._released:
            self.weight = nn.Parameter(self.weight.data.to_dense(), requires_grad=self.weight.requires_grad)
            self._released = False

    def train(self, mode: bool = True) -> "Linear":
        if mode:
            self.unpack()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> "Linear":
        self.unpack()  # .to(), .float(), .cuda() ... convert the dense weight
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        # The packed copy is an opaque oneDNN tensor that cannot be pickled or deep-copied; a copy of
        # the module starts unpacked (`pack()` it again), with the dense weight.
        state = self.__dict__.copy()
        state.pop("_packed", None)
        if self._released:
            weight = nn.Parameter(self.weight.data.to_dense(), requires_grad=self.weight.requires_grad)
            state["_parameters"] = {**state["_parameters"], "weight": weight}
            state["_released"] = False
        return state

    def forward(self, x: Tensor) -> Tensor:
        if self._released:
            if x.device.type == "cpu" and x.dtype == self.weight.dtype and not torch.is_grad_enabled() \
                    and not torch.is_autocast_enabled("cpu"):
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
            self.unpack()
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        if self._packed is not None and not torch.is_grad_enabled():
            blocked, version, pointer = self._packed
            if self.weight._version == version and self.weight.data_ptr() == pointer:
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), blocked, self.bias, "none", [], "")
            self._packed = None  # the weight changed since it was packed
        if x.dtype != torch.float32:
            return super().forward(x)
        rows = x.numel() // self.in_features
        if rows > _WEIGHT_FIRST_MAX_ROWS or (self.out_features < self.in_features and rows < _NARROWING_MIN_ROWS):
            return super().forward(x)
        flat = x.reshape(rows, self.in_features)
        columns = (flat if rows > 1 else flat.repeat(2, 1)).t()  # 2 rows: BLAS's matrix-matrix path
        if self.bias is None:
            y = torch.mm(self.weight, columns)
        else:
            y = torch.addmm(self.bias[:, None], self.weight, columns)  # (out_features, rows)
        return y[:, :rows].t().contiguous().view(*x.shape[:-1], self.out_features)


def _unpack_before_state_dict(module: Linear, prefix: str, keep_vars: bool) -> None:
    module.unpack()


def _unpack_before_load(module: Linear, *args: Any) -> None:
    module.unpack()


def pack_for_cpu_inference(model: nn.Module, release: bool = False) -> int:
    """Packs every float32 and bfloat16 CPU `Linear` of `model` for inference (see `Linear.pack`).

    Float32 decoding on the CPU runs 1.2-2x faster than unpacked (GPT-2 small:
    1.4x `transformers` greedy at batch 1, 2.5x at batch 8, 2.8x in beam
    search; see benchmarks/README.md). Training is unaffected: with gradients
    on, the dense weights are used, and a weight that changes drops its
    packed copy.

    Args:
        model: the model; its float32 and bfloat16 CPU `Linear` layers are packed.
        release: keep each packed weight instead of the dense one, for
            inference-only models as `nlpkit.load` makes them: one copy of the
            weights in memory, not two. A weight another module shares (an LM
            head tied to the token embedding, which looks rows up in it) keeps
            its dense form, with a packed copy beside it in bfloat16 only.

    Returns:
        How many layers were packed (0 on other devices or dtypes, or a
        torch build without oneDNN).
    """
    uses: dict[int, int] = {}
    for module in model.modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                uses[id(parameter)] = uses.get(id(parameter), 0) + 1
    linears = [module for module in model.modules() if isinstance(module, Linear)]
    if not release:
        return sum(module.pack() for module in linears)
    shared = [module for module in linears if uses[id(module.weight)] > 1]
    packed = sum(module.pack(release=True) for module in linears if uses[id(module.weight)] == 1)
    if packed:
        # Before the shared weights get their packed copies: the copy moves them, and a packed copy
        # remembers the address of the weight it was made from (it would read as stale and go unused).
        _copy_out_of_mapped_files(model)
    # A shared weight's packed copy is a second copy: worth it in bfloat16 only, where the dense product is
    # 2x slower (GPT-2's tied head at one row: 5.5 against 2.8 ms); float32 multiplies few rows weight-first
    # about as fast as packed (6.0 against 5.8 ms), so there a copy would cost 150 MB for nothing.
    return packed + sum(module.pack() for module in shared if module.weight.dtype == torch.bfloat16)


def _copy_out_of_mapped_files(model: nn.Module) -> None:
    """Copies the dense tensors left into memory of their own, so that no weights file stays mapped.

    safetensors maps the file, and a tensor read from it without a copy (an
    embedding table) keeps the whole mapping alive: every page read while
    loading stays in the process's memory. Once the layers hold their packed
    weights, the few dense tensors left are copied (GPT-2 small: 1,249 MB
    resident before, 927 after; `transformers` needs 878).
    """
    with torch.no_grad():
        for module in model.modules():
            for parameter in module._parameters.values():
                if parameter is not None and not parameter.is_mkldnn:
                    parameter.data = parameter.data.clone()
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.clone()
