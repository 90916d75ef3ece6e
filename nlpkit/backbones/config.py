"""One configuration dataclass for the three Transformer backbones.

Family differences are fields with `Literal[...]` values, not subclasses (the
litgpt idea without its flag creep): every field below is needed by at least
one family the backbones reproduce, and the comment beside it names which.

How the families map onto the fields (the `checkpoints/` mapping files fill
them in from a Hugging Face `config.json`):

| family        | norm / position | positions              | notable fields                               |
| ------------- | --------------- | ---------------------- | -------------------------------------------- |
| BERT          | layernorm, post | learned                | type_vocab_size=2, embedding_norm            |
| RoBERTa       | layernorm, post | learned, offset 2      | type_vocab_size=1, embedding_norm            |
| DistilBERT    | layernorm, post | learned                | embedding_norm                               |
| XLM-R         | layernorm, post | learned, offset 2      | as RoBERTa                                   |
| ELECTRA       | layernorm, post | learned                | as BERT; embedding_size (a projection)       |
| ModernBERT    | layernorm, pre  | rotary                 | norm_bias, first_layer_attention_norm, local rope |
|               |                 |                        | two-sided sliding_window, layer_types, gated gelu |
| GPT-2         | layernorm, pre  | learned                | gelu_tanh, final_norm, tied head             |
| Llama/Mistral | rmsnorm, pre    | rotary                 | gated silu MLP, num_kv_heads, sliding_window |
| Qwen2         | rmsnorm, pre    | rotary                 | as Llama; q/k/v attention_bias, layer_types  |
| Qwen3         | rmsnorm, pre    | rotary                 | as Qwen2 with qk_norm, head_dim, no biases   |
| Phi-3 / Phi-4 | rmsnorm, pre    | rotary                 | as Llama; longrope, partial_rotary_factor    |
| Gemma         | rmsnorm, pre    | rotary                 | norm_unit_offset, scale_embedding, gelu_tanh |
| Gemma 2       | rmsnorm, pre    | rotary                 | as Gemma; branch_output_norm, soft-capping   |
| Gemma 3       | rmsnorm, pre    | rotary                 | as Gemma 2, no caps; qk_norm, local rope     |
| BART          | layernorm, post | learned, offset 2      | embedding_norm, lm_head_bias                 |
| Marian        | layernorm, post | sinusoidal             | scale_embedding, silu, lm_head_bias          |
| T5 / Flan-T5  | rmsnorm, pre    | relative               | attention_scale=1.0, head_dim, scale_lm_head_input |
| DeBERTa-v2    | layernorm, post | learned + disentangled | disentangled_attention (c2p, p2c), mask_embeddings |
| DeBERTa-v3    | layernorm, post | none + disentangled    | as v2; relative_position_buckets, shared proj.  |

The config stores only plain values so that it serialises to YAML/JSON and
round-trips through `to_dict`/`from_dict`. Defaults that depend on other
fields (`head_dim=None` meaning `hidden_size // num_heads`) stay `None` in the
stored value and are resolved by the `resolved_*` properties, so that
`dataclasses.replace(config, hidden_size=...)` never keeps a stale value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from nlpkit.schema import Context, build, check_fields

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BackboneConfig", "DisentangledTerm", "RopeScaling"]

Kind = Literal["encoder", "decoder", "encoder-decoder"]
PositionEmbedding = Literal["learned", "sinusoidal", "rotary", "relative", "none"]
Norm = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
RopeType = Literal["linear", "dynamic", "yarn", "llama3", "longrope"]
LayerType = Literal["full_attention", "sliding_attention"]
DisentangledTerm = Literal["c2p", "p2c"]


@dataclass
class RopeScaling:
    """How rotary frequencies are stretched past the pretraining length (`nlpkit/backbones/rope.py` applies it).

    The names and formulas follow `transformers/modeling_rope_utils.py`; a
    field that a type does not read is ignored by it. Not frozen, like
    `BackboneConfig`, because the schema check converts values in place.

    Attributes:
        type: `linear` (positions divided by `factor`), `dynamic` (NTK: the
            base grows once positions pass `max_positions`), `yarn`
            (Peng et al. 2023), `llama3` (Llama 3.1's wavelength bands) or
            `longrope` (Phi-3: per-frequency `short_factor`/`long_factor`).
        factor: Context extension factor; `None` lets `yarn` and `longrope`
            use `max_positions / original_max_positions`.
        original_max_positions: Pretraining context length (`yarn`, `llama3`,
            `longrope`).
        low_freq_factor: `llama3`: wavelengths above
            `original_max_positions / low_freq_factor` are divided by `factor`.
        high_freq_factor: `llama3`: wavelengths below
            `original_max_positions / high_freq_factor` are kept.
        beta_fast: `yarn` ramp bound in rotations; `None` means 32.
        beta_slow: `yarn` ramp bound in rotations; `None` means 1.
        truncate: `yarn`: round the ramp bounds to whole dimensions.
        short_factor: `longrope` per-frequency divisors up to `original_max_positions`.
        long_factor: `longrope` per-frequency divisors beyond it.
        attention_factor: Multiplier of cos/sin (`yarn`, `longrope`); `None`
            derives it from `factor` as `transformers` does.
        mscale: `yarn` (DeepSeek form) numerator of the derived attention factor.
        mscale_all_dim: `yarn` (DeepSeek form) denominator of it.
    """

    type: RopeType
    factor: float | None = None
    original_max_positions: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    truncate: bool = True
    short_factor: list[float] | None = None
    long_factor: list[float] | None = None
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("factor", "original_max_positions", "low_freq_factor", "high_freq_factor", "beta_fast",
                     "beta_slow", "attention_factor"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        required = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor", "original_max_positions"),
                    "llama3": ("factor", "original_max_positions", "low_freq_factor", "high_freq_factor"),
                    "longrope": ("original_max_positions", "short_factor", "long_factor")}[self.type]
        for name in required:
            if getattr(self, name) is None:
                raise ValueError(f"{name} is needed by rope type {self.type!r}")
        if self.type == "llama3" and self.low_freq_factor == self.high_freq_factor:
            raise ValueError(f"high_freq_factor must differ from low_freq_factor, both are {self.low_freq_factor}")


@dataclass
class BackboneConfig:
    """Shape and family options of a Transformer backbone.

    Attributes:
        kind: Which backbone module this config builds.
        vocab_size: Rows of the token embedding (and columns of the LM head).
        hidden_size: Width of the residual stream (`d_model`).
        num_layers: Number of layers; the encoder's stack for an encoder-decoder.
        num_decoder_layers: Decoder layers of an encoder-decoder; `None` means
            `num_layers` (T5 and BART style symmetry).
        num_heads: Query heads per attention layer; the encoder's for an
            encoder-decoder.
        num_decoder_heads: Query heads of the decoder of an encoder-decoder
            (self- and cross-attention); `None` means `num_heads`. BART and
            Marian may give the stacks different head counts.
        num_kv_heads: Key/value heads for grouped-query attention (Llama,
            Mistral, Qwen2); `None` means `num_heads` (ordinary multi-head).
        head_dim: Width of one head; `None` means `hidden_size // num_heads`.
            Flan-T5-small and some Qwen/Mistral sizes need an explicit value.
        intermediate_size: Hidden width of the feed-forward block; the
            encoder's for an encoder-decoder.
        decoder_intermediate_size: Feed-forward width of the decoder of an
            encoder-decoder; `None` means `intermediate_size`.
        max_positions: Number of usable positions for learned and sinusoidal
            tables (the table itself has `max_positions + position_offset`
            rows). Ignored by rotary and relative positions.
        position_embedding: `learned` (BERT, GPT-2, BART), `sinusoidal`
            (Marian: first half sin, second half cos), `rotary` (Llama,
            `rotate_half` layout) or `relative` (T5 buckets, shared by all
            layers of a stack; not available for decoder-only models) or
            `none` (no absolute positions: DeBERTa-v3, whose positions are
            all in `disentangled_attention`).
        position_offset: Added to position ids before the table lookup:
            2 for RoBERTa and BART. In an `Encoder` a non-zero offset also
            switches to RoBERTa's padding-aware ids (pads get
            `position_offset - 1`, real tokens count up from
            `position_offset`), which is why it then needs `pad_token_id`.
        rope_theta: Base of the rotary frequencies.
        rope_scaling: Scaled rotary frequencies (Llama 3.1, YaRN, Phi-3
            longrope, ...); `None` means plain RoFormer frequencies.
        local_rope_theta: Rotary base of the sliding-window layers when it
            differs from `rope_theta` (Gemma 3: 10,000 locally, 1,000,000
            globally); `None` means `rope_theta`.
        local_rope_scaling: Scaling of the sliding-window layers when
            `local_rope_theta` is set (Gemma 3 scales only its global
            layers); `None` means plain frequencies there.
        partial_rotary_factor: Fraction of each head that is rotated: the
            first `int(head_dim * partial_rotary_factor)` dimensions (GPT-NeoX,
            Phi layout); the rest pass unchanged.
        sliding_window: Local attention of the sliding layers (Beltagy et al.
            2020, https://arxiv.org/abs/2004.05150). In a decoder a query at
            position `i` sees keys `j` with `i - sliding_window < j <= i`
            (Mistral, Qwen2, Gemma 2 and 3). In an encoder the window is the
            same on both sides: `|i - j| < sliding_window`, so a query sees
            `2 * sliding_window - 1` keys (ModernBERT's `local_attention`
            of 128 is a `sliding_window` of 65: `|i - j| <= 64`). `None`
            means full attention. Not for encoder-decoders.
        layer_types: Per layer `full_attention` or `sliding_attention`
            (Qwen2's `max_window_layers`, alternating patterns of Gemma and
            ModernBERT); `None` means every layer slides when
            `sliding_window` is set. Not for encoder-decoders.
        relative_attention_num_buckets: T5 relative position buckets.
        relative_attention_max_distance: T5 distance beyond which buckets saturate.
        disentangled_attention: Encoders only: DeBERTa's relative terms
            added to the attention scores before the softmax (He et al.
            2021, https://arxiv.org/abs/2006.03654): `c2p` (each query
            against the keys of relative positions) and/or `p2c` (each key
            against the queries of relative positions), from one table of
            relative embeddings shared by all layers. The scores are then
            scaled by `(head_dim * (1 + len(terms))) ** -0.5` unless
            `attention_scale` is set. `None` means plain attention.
        max_relative_positions: Relative distances the disentangled terms
            tell apart (DeBERTa's `max_relative_positions`); `None` means
            `max_positions`. Without buckets the table has twice as many rows.
        relative_position_buckets: Log-spaced buckets of the relative
            distances (DeBERTa-v3's `position_buckets`): distances under half
            of it stay exact, longer ones grow logarithmically up to
            `max_relative_positions`; the table then has `2 * buckets` rows.
            `None` means exact distances, clamped.
        shared_position_projections: The disentangled terms project the
            relative embeddings with the content query and key projections
            (DeBERTa-v3's `share_att_key`) instead of their own
            `position_key` / `position_query`.
        relative_embedding_norm: LayerNorm the relative embeddings before
            they are projected (DeBERTa's `norm_rel_ebd="layer_norm"`).
        mask_embeddings: Encoders: multiply the embeddings by the attention
            mask, so padding rows start as zeros (`DebertaV2Embeddings`).
        type_vocab_size: Rows of the token-type (segment) embedding; 0 means
            none. BERT uses 2, RoBERTa 1. Encoders only.
        embedding_size: Width of the token, position and token-type
            embeddings and their norm when it differs from `hidden_size`;
            a Linear (`embeddings.projection`) then maps them onto the
            residual stream (ELECTRA's `embeddings_project`). `None` means
            `hidden_size`.
        norm: `layernorm` (with bias) or `rmsnorm` (no mean subtraction, no
            bias: Llama and T5).
        norm_eps: Epsilon of every normalisation layer.
        norm_bias: LayerNorms have a bias; False: a bias-less LayerNorm
            (ModernBERT's `norm_bias`). RMSNorm never has one.
        norm_unit_offset: RMSNorm weights are stored as offsets from one
            (Gemma): the norm multiplies by `1 + weight`, in float32 before
            casting back (`GemmaRMSNorm`), and starts from zeros.
        norm_position: `pre` (GPT-2, Llama, T5) or `post` (BERT, BART, Marian)
            relative to each residual branch.
        embedding_norm: Normalise the summed embeddings (BERT, RoBERTa,
            DistilBERT, BART, ModernBERT).
        first_layer_attention_norm: A pre-norm first layer normalises its
            attention input. False: layer 0 has no attention norm and its
            attention reads the embeddings as they are (ModernBERT, whose
            `embedding_norm` has normalised them already; its `attn_norm`
            of layer 0 is an `nn.Identity`).
        branch_output_norm: Pre-norm layers also normalise each branch's
            output before it joins the residual stream (Gemma 2 and 3's
            `post_attention_layernorm` and `post_feedforward_layernorm`).
        final_norm: Normalise the output of the last layer (GPT-2, Llama, T5).
        scale_embedding: Multiply token embeddings by `sqrt(hidden_size)`
            before adding positions (Marian; BART checkpoints set it per model).
        activation: Feed-forward activation: `gelu` (erf form: BERT, BART),
            `gelu_tanh` (GPT-2 `gelu_new`, T5 v1.1), `relu` (T5 v1.0) or `silu`
            (Llama, Marian's `swish`).
        gated_mlp: Gated feed-forward `down(act(gate(x)) * up(x))` (SwiGLU in
            Llama, gated-GELU in T5 v1.1/Flan).
        attention_bias: Biases on the query, key and value projections
            (BERT, GPT-2, BART, Qwen2).
        qk_norm: RMSNorm over each head of the queries and keys (a weight
            of `head_dim` shared by the heads, epsilon `norm_eps`), after
            the projections and before rotary positions: Qwen3
            (`Qwen3Attention.q_norm`/`k_norm`). Self-attention only.
        attention_output_bias: Bias on the attention output projection (BERT,
            GPT-2, BART; not Qwen2, Llama or T5).
        mlp_bias: Biases on the feed-forward projections.
        attention_scale: Multiplier of the query-key dot products; `None`
            means `head_dim ** -0.5`. T5 uses 1.0, Gemma 2 and 3
            `query_pre_attn_scalar ** -0.5`.
        attention_softcap: Attention logits become `cap * tanh(logits / cap)`
            before the mask (Gemma 2's `attn_logit_softcapping`). SDPA cannot
            do this, so such layers run a plain attention (`softcapped_attention`).
        logit_softcap: The LM head's logits become `cap * tanh(logits / cap)`
            (Gemma 2's `final_logit_softcapping`).
        tie_word_embeddings: Share one Parameter between the token embedding
            and the LM head.
        lm_head_bias: Add a (non-trained) `final_logits_bias` buffer to the
            logits (BART, Marian).
        scale_lm_head_input: Multiply the hidden states by
            `hidden_size ** -0.5` before the LM head (original T5 with a tied
            head).
        dropout: Dropout on embeddings and residual branches (training only).
        attention_dropout: Dropout on attention probabilities (training only).
        pad_token_id: Padding token id; needed by RoBERTa-style positions.
    """

    kind: Kind
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_decoder_layers: int | None = None
    num_heads: int = 12
    num_decoder_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 3072
    decoder_intermediate_size: int | None = None
    max_positions: int = 512
    position_embedding: PositionEmbedding = "learned"
    position_offset: int = 0
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    local_rope_theta: float | None = None
    local_rope_scaling: RopeScaling | None = None
    partial_rotary_factor: float = 1.0
    sliding_window: int | None = None
    layer_types: list[LayerType] | None = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    disentangled_attention: list[DisentangledTerm] | None = None
    max_relative_positions: int | None = None
    relative_position_buckets: int | None = None
    shared_position_projections: bool = False
    relative_embedding_norm: bool = False
    mask_embeddings: bool = False
    type_vocab_size: int = 0
    embedding_size: int | None = None
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    norm_unit_offset: bool = False
    norm_position: NormPosition = "pre"
    embedding_norm: bool = False
    first_layer_attention_norm: bool = True
    branch_output_norm: bool = False
    final_norm: bool = True
    scale_embedding: bool = False
    activation: Activation = "gelu"
    gated_mlp: bool = False
    attention_bias: bool = True
    attention_output_bias: bool = True
    qk_norm: bool = False
    mlp_bias: bool = True
    attention_scale: float | None = None
    attention_softcap: float | None = None
    logit_softcap: float | None = None
    tie_word_embeddings: bool = True
    lm_head_bias: bool = False
    scale_lm_head_input: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int | None = 0

    def __post_init__(self) -> None:
        # Types first: a YAML typo like `num_heads: "12"` should name the field,
        # not fail later inside torch with an unrelated message.
        check_fields(self)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_positions", "relative_attention_num_buckets", "relative_attention_max_distance"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_decoder_layers", "num_decoder_heads", "num_kv_heads", "head_dim",
                     "decoder_intermediate_size", "max_relative_positions", "relative_position_buckets"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        for name in ("position_offset", "type_vocab_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("rope_theta", "norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("attention_scale", "attention_softcap", "logit_softcap", "local_rope_theta"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.local_rope_scaling is not None and self.local_rope_theta is None:
            raise ValueError("local_rope_scaling needs local_rope_theta (None means the global rope throughout)")
        if self.branch_output_norm and self.norm_position != "pre":
            raise ValueError("branch_output_norm applies only to norm_position 'pre'")
        if self.norm_unit_offset and self.norm != "rmsnorm":
            raise ValueError("norm_unit_offset applies only to norm 'rmsnorm'")
        if not self.norm_bias and self.norm != "layernorm":
            raise ValueError("norm_bias=False applies only to norm 'layernorm' (RMSNorm has no bias)")
        if not self.first_layer_attention_norm and self.norm_position != "pre":
            raise ValueError("first_layer_attention_norm=False applies only to norm_position 'pre'")

        if self.embedding_size is not None and self.embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1 or None, got {self.embedding_size}")
        if self.head_dim is None and self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}) "
                "when head_dim is None"
            )
        if self.num_heads % self.resolved_num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})"
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        if self.position_embedding == "rotary" and (self.rotary_dim % 2 != 0 or self.rotary_dim == 0):
            raise ValueError(f"rotary_dim (head_dim * partial_rotary_factor) must be even and positive for rotary "
                             f"positions, got {self.rotary_dim}")
        for field_name in ("rope_scaling", "local_rope_scaling"):
            scaling = getattr(self, field_name)
            for name in ("short_factor", "long_factor"):
                factors = getattr(scaling, name) if scaling is not None else None
                if factors is not None and len(factors) != self.rotary_dim // 2:
                    raise ValueError(f"{field_name} needs {name} of rotary_dim / 2 = {self.rotary_dim // 2} values, "
                                     f"got {len(factors)}")
        if self.position_embedding == "relative" and self.kind == "decoder":
            raise ValueError("position_embedding 'relative' needs kind 'encoder' or 'encoder-decoder'")
        for name in ("num_decoder_layers", "num_decoder_heads", "decoder_intermediate_size"):
            if getattr(self, name) is not None and self.kind != "encoder-decoder":
                raise ValueError(f"{name} applies only to kind 'encoder-decoder', not {self.kind!r}")
        if self.num_decoder_heads is not None:
            if self.head_dim is None and self.hidden_size % self.num_decoder_heads != 0:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_decoder_heads "
                                 f"({self.num_decoder_heads}) when head_dim is not set")
            if self.num_kv_heads is not None and self.num_decoder_heads % self.num_kv_heads != 0:
                raise ValueError(f"num_decoder_heads ({self.num_decoder_heads}) must be divisible by num_kv_heads "
                                 f"({self.num_kv_heads})")
        if self.disentangled_attention is not None:
            if self.kind != "encoder":
                raise ValueError(f"disentangled_attention applies only to kind 'encoder', not {self.kind!r}")
            if not self.disentangled_attention or len(set(self.disentangled_attention)) != len(
                    self.disentangled_attention):
                raise ValueError(f"disentangled_attention needs distinct terms among c2p, p2c (None for none), "
                                 f"got {self.disentangled_attention}")
        if self.relative_position_buckets is not None and self.relative_position_buckets < 2:
            raise ValueError(f"relative_position_buckets must be >= 2 or None, got {self.relative_position_buckets}")
        if self.type_vocab_size > 0 and self.kind != "encoder":
            raise ValueError(f"type_vocab_size applies only to kind 'encoder', not {self.kind!r}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if (self.sliding_window is not None or self.layer_types is not None) and self.kind == "encoder-decoder":
            raise ValueError("sliding_window and layer_types apply only to kinds 'encoder' and 'decoder', "
                             "not 'encoder-decoder'")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"layer_types needs one entry per layer ({self.num_layers}), "
                                 f"got {len(self.layer_types)}")
            if self.sliding_window is None and "sliding_attention" in self.layer_types:
                raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id must be in [0, vocab_size), got {self.pad_token_id}")
        if (self.kind == "encoder" and self.position_offset > 0
                and self.position_embedding in ("learned", "sinusoidal") and self.pad_token_id is None):
            raise ValueError("pad_token_id is needed by an encoder with position_offset > 0 (RoBERTa positions)")

    @property
    def resolved_embedding_size(self) -> int:
        """Width of the embeddings (`embedding_size` or `hidden_size`)."""
        return self.embedding_size if self.embedding_size is not None else self.hidden_size

    @property
    def resolved_head_dim(self) -> int:
        """Width of one attention head (`head_dim` or `hidden_size // num_heads`)."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def relative_position_span(self) -> int:
        """Distances on each side of the disentangled relative table: it has `2 * span` rows (DeBERTa's `att_span`)."""
        if self.relative_position_buckets is not None:
            return self.relative_position_buckets
        return self.max_relative_positions if self.max_relative_positions is not None else self.max_positions

    @property
    def rotary_dim(self) -> int:
        """Rotated width of each head: `int(head_dim * partial_rotary_factor)`, as `transformers` rounds it."""
        return int(self.resolved_head_dim * self.partial_rotary_factor)

    def rope(self, sliding: bool = False) -> tuple[float, RopeScaling | None]:
        """The rotary base and scaling of full-attention layers, or of sliding-window ones (`local_rope_*`)."""
        if sliding and self.local_rope_theta is not None:
            return self.local_rope_theta, self.local_rope_scaling
        return self.rope_theta, self.rope_scaling

    def layer_window(self, layer_index: int) -> int | None:
        """The sliding window of one layer, or None for full attention (causal in a decoder)."""
        if self.layer_types is not None and self.layer_types[layer_index] != "sliding_attention":
            return None
        return self.sliding_window

    @property
    def resolved_num_kv_heads(self) -> int:
        """Key/value heads (`num_kv_heads` or `num_heads`)."""
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def resolved_num_decoder_layers(self) -> int:
        """Decoder layers of an encoder-decoder (`num_decoder_layers` or `num_layers`)."""
        return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

    @property
    def resolved_num_decoder_heads(self) -> int:
        """Query heads of an encoder-decoder's decoder (`num_decoder_heads` or `num_heads`)."""
        return self.num_decoder_heads if self.num_decoder_heads is not None else self.num_heads

    @property
    def resolved_decoder_intermediate_size(self) -> int:
        """Feed-forward width of an encoder-decoder's decoder (`decoder_intermediate_size` or `intermediate_size`)."""
        return self.decoder_intermediate_size if self.decoder_intermediate_size is not None else self.intermediate_size

    def decoder_side(self) -> BackboneConfig:
        """The config the decoder stack of an encoder-decoder is built from: its layers, heads and widths.

        The shared modules (layers, KV cache) read `num_layers`, `num_heads`
        and `intermediate_size`; the decoder of an asymmetric encoder-decoder
        gets a copy with its own values there (and `head_dim`, when unset,
        follows its head count as BART's `d_model // decoder_attention_heads`
        does). The copy of a copy is the same.
        """
        if self.kind != "encoder-decoder":
            raise ValueError(f"decoder_side applies only to kind 'encoder-decoder', not {self.kind!r}")
        return dataclasses.replace(
            self,
            num_layers=self.resolved_num_decoder_layers,
            num_heads=self.resolved_num_decoder_heads,
            intermediate_size=self.resolved_decoder_intermediate_size,
            num_decoder_layers=None,
            num_decoder_heads=None,
            decoder_intermediate_size=None,
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a plain dict (JSON/YAML serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = "backbone config") -> BackboneConfig:
        """Builds a config from a dict as written by `to_dict` (or read from a file), checking every field.

        Args:
            d: Field names to values; missing fields take their defaults.
            source: Names where `d` comes from in messages (a file); None for
                messages that start at the field (the caller names the file).

        Returns:
            The validated config.

        Raises:
            NlpkitError: On an unknown key (with the closest known one), a value
                of the wrong type or out of range (the message names the field).
        """
        return build(cls, d, (), Context(source) if source else Context("", template="{key}: {message}"))


def config_of(backbone: nn.Module) -> BackboneConfig:
    """The config of a backbone module: every registered kind keeps its `BackboneConfig` as `config`.

    `nn.Module` types the attributes it does not declare as tensors or
    modules, so code that holds a backbone as an `nn.Module` reads the config
    through this one typed accessor.
    """
    return cast(BackboneConfig, backbone.config)
