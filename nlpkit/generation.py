"""Text generation for decoders and encoder-decoders: greedy, beam search, sampling.

The same loops serve a decoder (GPT-2, Llama: the prompt is the start of the
output) and an encoder-decoder (BART, T5, Marian: the prompt is the source, run
through the encoder once; the decoder starts from ``decoder_start_token_id``
and reads the source through cross-attention keys and values cached on its
first step).

Options are named as in ``transformers``' ``generate`` (``max_new_tokens``,
``do_sample``, ``num_beams``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
``repetition_penalty``, ``no_repeat_ngram_size``, ``length_penalty``,
``early_stopping``, ``num_return_sequences`` ...), plus ``stop`` (strings that
end a continuation; the text is cut before them) and ``seed`` (a
``torch.Generator`` of the call's own, so a sampled output is reproducible).
Defaults come from a checkpoint folder's ``generation_config.json`` (else its
``config.json``), as in ``transformers``, and an unset value takes
``transformers``' global default (``top_k=50``, ``length_penalty=1.0`` ...),
except the length: with neither ``max_new_tokens`` nor ``max_length`` set
anywhere, 20 new tokens are generated (``transformers`` counts 20 tokens with
the prompt).

The decisions follow ``transformers/generation/utils.py`` and
``logits_process.py`` step for step, so that greedy and beam search pick the
same tokens: processors in the same order, applied to float32 logits (greedy,
sampling) or to their log-softmax (beam search); beam search keeps
``max(2, 1 + number of EOS ids) * num_beams`` candidates per step and the same
early-stopping heuristic (Wolf et al. 2020, and the vectorised beam search of
``transformers`` 4.50+). A batch of prompts of different lengths is padded on
the left; each row's positions count from its first real token (derived from
the attention mask, as ``transformers`` does), so padding changes nothing.

What makes a step cheap: the KV cache (``nlpkit.backbones.KVCache``) is
allocated once per call at its final size and written in place; the LM head
runs on the last position only; a batch without padding passes no mask at
all; the repetition penalty keeps a running "seen" table instead of
re-scanning the history; beam search runs the prompt once per example and
then copies its cache to the beams. Everything runs under
``torch.inference_mode``.

Example:
    >>> from nlpkit.backbones import from_pretrained
    >>> from nlpkit import generation, tokenization
    >>> model = from_pretrained("models/gpt2")
    >>> tokenizer = tokenization.from_pretrained("models/gpt2")
    >>> generation.generate(model, tokenizer, "Once upon a time", max_new_tokens=20)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpkit.schema import Context, build
from nlpkit.errors import NlpkitError
from nlpkit.registry import suggest

if TYPE_CHECKING:
    from nlpkit.backbones import Decoder, EncoderDecoder
    from nlpkit.tasks import TaskTokenizer

__all__ = ["GenerationOptions", "OPTION_NAMES", "resolve_options", "generate_ids", "generate", "Continuation",
           "Generated"]

log = logging.getLogger("nlpkit")

# With nothing said anywhere about the length: how many tokens to add.
DEFAULT_MAX_NEW_TOKENS = 20


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@dataclass
class GenerationOptions:
    """How to decode; names and defaults as ``transformers``' ``GenerationConfig``.

    Attributes:
        max_new_tokens: Tokens to generate at most (beyond the prompt).
        max_length: Alternative to ``max_new_tokens``: the prompt (a decoder's,
            padded) plus the new tokens; ``max_new_tokens`` wins when both are set.
        min_new_tokens: End-of-sequence is forbidden before this many new tokens.
        min_length: Same, counting the (padded) prompt, as ``transformers`` does.
        do_sample: Sample from the distribution instead of taking the best token.
        num_beams: Beams of beam search; 1 means greedy or plain sampling.
        temperature: Divides the logits before sampling.
        top_k: Sample among the k most likely tokens; 0 turns it off.
        top_p: Sample among the most likely tokens whose probability mass reaches p.
        min_p: Drop tokens less likely than ``min_p`` times the most likely one.
        repetition_penalty: Divides positive (multiplies negative) scores of
            tokens already in the sequence (Keskar et al. 2019); 1.0 is off.
        no_repeat_ngram_size: No n-gram of this size occurs twice; 0 is off.
        length_penalty: Beam search scores a finished hypothesis as its
            log-probability over ``length ** length_penalty``.
        early_stopping: Beam search: ``True`` stops once ``num_beams``
            hypotheses are finished; ``False`` stops when a heuristic says no
            better one can come; ``"never"`` only at the canonical end.
        num_return_sequences: Continuations per prompt (beams, or samples).
        stop: Strings that end a continuation; the text is cut before them.
        seed: Seed of the call's own random generator (sampling); None draws
            from torch's global one.
        eos_token_id: End-of-sequence id(s).
        pad_token_id: Padding id; defaults to the first EOS id.
        bos_token_id: Start of a decoder prompt that encodes to nothing.
        decoder_start_token_id: An encoder-decoder's first decoder token
            (defaults to ``bos_token_id``).
        forced_bos_token_id: Token forced first after the decoder start.
        forced_eos_token_id: Token(s) forced when the maximum length is reached.
        bad_words_ids: Token sequences never to generate.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int | None = None
    min_length: int = 0
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: Union[bool, Literal["never"]] = False
    num_return_sequences: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    eos_token_id: Union[int, list[int], None] = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: Union[int, list[int], None] = None
    bad_words_ids: list[list[int]] | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_length", "num_beams", "num_return_sequences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("min_new_tokens", "min_length", "top_k", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected a number > 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p: expected a number in [0, 1], got {self.min_p!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty: expected a number > 0, got {self.repetition_penalty!r}")
        if any(not text for text in self.stop):
            raise ValueError(f"stop: expected non-empty strings, got {self.stop!r}")
        if self.bad_words_ids is not None and any(not ids for ids in self.bad_words_ids):
            raise ValueError(f"bad_words_ids: expected non-empty lists of token ids, got {self.bad_words_ids!r}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences: {self.num_return_sequences} is more than num_beams "
                             f"({self.num_beams}); beam search returns at most its beams")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError("num_return_sequences: greedy decoding has one answer per prompt; "
                             "set do_sample=True or num_beams >= num_return_sequences")

    @property
    def eos_ids(self) -> list[int]:
        """The end-of-sequence ids as a list (empty when none)."""
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationOptions))


def resolve_options(options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> GenerationOptions:
    """Check a call's decoding options and merge them over a checkpoint's defaults.

    Args:
        options: what the caller asked for (``max_new_tokens=50, top_k=10`` ...);
            a None value means "not set".
        defaults: a checkpoint's ``generation_config.json`` (or the generation
            fields of its ``config.json``); keys that are not decoding options
            (``transformers_version`` ...) are ignored.

    Returns:
        The options; unset ones keep ``transformers``' global defaults.

    Raises:
        NlpkitError: an unknown option (with the closest known name), a value
            of the wrong type or out of range, or a combination that cannot work.
    """
    for name in options:
        if name not in OPTION_NAMES:
            raise NlpkitError(f"unknown decoding option '{name}'{suggest(name, list(OPTION_NAMES))} "
                              f"(known: {', '.join(OPTION_NAMES)})")
    values: dict[str, Any] = {}
    for source in (defaults or {}), options:
        for name, value in source.items():
            if name in OPTION_NAMES and value is not None:
                values[name] = [value] if name == "stop" and isinstance(value, str) else value
    # transformers: the caller's length beats the checkpoint's, and max_new_tokens beats max_length.
    if options.get("max_length") is not None and options.get("max_new_tokens") is None:
        values.pop("max_new_tokens", None)
    return build(GenerationOptions, values, (), _OPTIONS_CONTEXT)


# Messages name the option as a keyword argument is named: "decoding option top_k: expected ...".
_OPTIONS_CONTEXT = Context("decoding options", template="decoding option {key}: {message}")


# ---------------------------------------------------------------------------
# Scores: the processors of transformers' `_get_logits_processor`, in its order
# ---------------------------------------------------------------------------


class _Processors:
    """Turns a step's logits (or log-probabilities) into the scores a token is chosen by.

    Holds what must persist between steps: which tokens each row has seen
    (for the repetition penalty), updated with `append` and `select` instead
    of re-reading the whole history every step.
    """

    def __init__(self, o: GenerationOptions, vocab_size: int, prompt: Tensor, prompt_mask: Tensor | None,
                 prompt_length: int, max_length: int, beams: int) -> None:
        device = prompt.device
        self.o = o
        self.vocab_size = vocab_size
        self.prompt_length = prompt_length
        self.max_length = max_length
        eos = o.eos_ids
        self.eos = torch.tensor(eos, device=device) if eos else None
        self.seen: Tensor | None = None
        if o.repetition_penalty != 1.0:
            # (rows, vocab + 1): the extra column takes the left padding, which is not "seen".
            ids = prompt if prompt_mask is None else prompt.masked_fill(prompt_mask == 0, vocab_size)
            self.seen = torch.zeros(prompt.shape[0], vocab_size + 1, dtype=torch.bool, device=device)
            self.seen.scatter_(1, ids.clamp(max=vocab_size), True)
        words = [w for w in (o.bad_words_ids or []) if not (len(w) == 1 and w[0] in eos)]
        self.bad_tokens = torch.tensor([w[0] for w in words if len(w) == 1 and w[0] < vocab_size], dtype=torch.long,
                                       device=device)
        self.bad_sequences = [w for w in words if len(w) > 1]
        # Sampling in beam search keeps at least one token that does not end the sequence.
        self.min_tokens_to_keep = max(2, len(eos) + 1) if beams > 1 else 1
        forced = o.forced_eos_token_id
        self.forced_eos = None if forced is None else [forced] if isinstance(forced, int) else list(forced)

    def append(self, tokens: Tensor) -> None:
        """Records each row's new token `(rows,)`."""
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None].clamp(max=self.vocab_size), True)

    def select(self, index: Tensor) -> None:
        """Keeps rows `index` (beams chosen, or prompts expanded)."""
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)

    def __call__(self, scores: Tensor, history: Tensor) -> Tensor:
        """Scores `(rows, vocab)` float32 -> processed scores; `history` is `(rows, length so far)`."""
        o, length = self.o, history.shape[1]
        if self.seen is not None:
            seen = self.seen[:, : self.vocab_size]
            penalised = torch.where(scores < 0, scores * o.repetition_penalty, scores / o.repetition_penalty)
            scores = torch.where(seen, penalised, scores)
        if o.no_repeat_ngram_size and length >= o.no_repeat_ngram_size:
            scores = _ban_repeated_ngrams(scores, history, o.no_repeat_ngram_size)
        if self.bad_tokens.numel():
            scores = scores.index_fill(1, self.bad_tokens, -math.inf)
        for words in self.bad_sequences:
            prefix = torch.tensor(words[:-1], device=history.device)
            if length >= len(prefix) and words[-1] < self.vocab_size:
                ends_with = (history[:, length - len(prefix):] == prefix).all(-1)
                scores[ends_with, words[-1]] = -math.inf
        if self.eos is not None:
            too_short = length < o.min_length
            if o.min_new_tokens:
                too_short = too_short or length - self.prompt_length < o.min_new_tokens
            if too_short:
                scores = scores.index_fill(1, self.eos, -math.inf)
        if o.forced_bos_token_id is not None and length == 1:
            scores = torch.full_like(scores, -math.inf)
            scores[:, o.forced_bos_token_id] = 0
        if self.forced_eos is not None and length == self.max_length - 1:
            scores = torch.full_like(scores, -math.inf)
            scores[:, self.forced_eos] = 0
        if o.do_sample:
            scores = self._warp(scores)
        return scores

    def _warp(self, scores: Tensor) -> Tensor:
        """Temperature, top-k, top-p, min-p: transformers' sampling warpers, in its order."""
        o, keep = self.o, self.min_tokens_to_keep
        if o.temperature != 1.0:
            scores = scores / o.temperature
        if o.top_k:
            k = min(max(o.top_k, keep), scores.shape[-1])
            kth = torch.topk(scores, k).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if o.top_p < 1.0:
            ascending, order = torch.sort(scores, descending=False)
            cumulative = ascending.softmax(-1).cumsum(-1)
            drop = cumulative <= 1 - o.top_p
            drop[..., -keep:] = False
            scores = scores.masked_fill(drop.scatter(1, order, drop), -math.inf)
        if o.min_p is not None:
            probs = scores.softmax(-1)
            drop = probs < o.min_p * probs.amax(-1, keepdim=True)
            order = torch.argsort(scores, descending=True, dim=-1)
            sorted_drop = drop.gather(-1, order)
            sorted_drop[..., :keep] = False
            scores = scores.masked_fill(sorted_drop.scatter(1, order, sorted_drop), -math.inf)
        return scores


def _ban_repeated_ngrams(scores: Tensor, history: Tensor, n: int) -> Tensor:
    """-inf for every token that would complete an n-gram already in the row (prompt included)."""
    length = history.shape[1]
    prefix = history[:, length + 1 - n :]  # (rows, n - 1): the n-gram the next token would complete
    windows = history.unfold(1, n, 1)  # (rows, windows, n)
    matches = (windows[..., :-1] == prefix[:, None]).all(-1)
    vocab = scores.shape[-1]
    banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], -math.inf)


# ---------------------------------------------------------------------------
# Running the model one step at a time
# ---------------------------------------------------------------------------


def _cache_dtype(model: nn.Module, device: torch.device) -> torch.dtype:
    from nlpkit.backbones.cache import kv_cache_dtype

    autocast = torch.is_autocast_enabled(device.type)
    compute = torch.get_autocast_dtype(device.type) if autocast else next(model.parameters()).dtype
    return kv_cache_dtype(compute, device)


class _DecoderSteps:
    """A decoder's prompt pass and single-token steps over one preallocated cache.

    Left-padded rows get positions counted from their first real token and a
    mask over the cache; a batch without padding passes neither, so each step
    is the plain cached forward pass.
    """

    def __init__(self, model: Decoder, ids: Tensor, mask: Tensor, capacity: int) -> None:
        from nlpkit.backbones import KVCache

        self.model = model
        self.ids = ids
        self.padded = bool((mask == 0).any())
        # Set exactly when the batch is padded.
        self.mask: Tensor | None = None
        self.position: Tensor | None = None
        if self.padded:
            self.mask = torch.zeros(ids.shape[0], capacity, dtype=torch.long, device=ids.device)
            self.mask[:, : ids.shape[1]] = mask
            self.prompt_positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, prompt): from each first real token
            self.position = mask.sum(-1, keepdim=True)  # (batch, 1): the next token's position
        self.cache = KVCache.allocate(model.config, ids.shape[0], capacity, dtype=_cache_dtype(model, ids.device),
                                      device=ids.device)

    def prefill(self) -> Tensor:
        """Runs the prompt; the `(batch, vocab)` logits of its last position."""
        length = self.ids.shape[1]
        if self.mask is not None:  # padded
            hidden = self.model(self.ids, attention_mask=self.mask[:, :length], position_ids=self.prompt_positions,
                                past_key_values=self.cache, use_cache=True).last_hidden_state
        else:
            hidden = self.model(self.ids, past_key_values=self.cache, use_cache=True).last_hidden_state
        return self.model.logits(hidden[:, -1])

    def step(self, tokens: Tensor) -> Tensor:
        """Feeds `(rows,)` tokens; the `(rows, vocab)` logits of the next position."""
        if self.mask is not None and self.position is not None:  # padded
            total = self.cache.length + 1
            self.mask[:, total - 1] = 1
            hidden = self.model(tokens[:, None], attention_mask=self.mask[:, :total], position_ids=self.position,
                                past_key_values=self.cache, use_cache=True).last_hidden_state
            self.position += 1
        else:
            hidden = self.model(tokens[:, None], past_key_values=self.cache, use_cache=True).last_hidden_state
        return self.model.logits(hidden[:, -1])

    def expand(self, index: Tensor) -> None:
        """Copies rows `index` of the prompt pass (one per beam or sample)."""
        self.cache.reorder(index)
        if self.mask is not None and self.position is not None:  # padded
            self.mask, self.position = self.mask[index], self.position[index]

    def reorder(self, index: Tensor) -> None:
        """Beam search: each beam continues the cache of its parent `index`.

        The beams of one prompt share its mask and positions, so only the cache moves.
        """
        self.cache.reorder(index)


class _EncoderDecoderSteps:
    """An encoder-decoder: the source is encoded once; the decoder runs from its start token."""

    def __init__(self, model: EncoderDecoder, source: Tensor, source_mask: Tensor, start: int, capacity: int) -> None:
        from nlpkit.backbones import KVCache

        self.model = model
        self.source_mask = None if bool(source_mask.all()) else source_mask
        # (batch, source, hidden); None after the prompt pass
        self.memory: Tensor | None = model.encode(source, self.source_mask).last_hidden_state
        self.start = torch.full((source.shape[0], 1), start, dtype=torch.long, device=source.device)
        self.cache = KVCache.allocate(model.config, source.shape[0], capacity, dtype=_cache_dtype(model, source.device),
                                      device=source.device)

    def prefill(self) -> Tensor:
        hidden = self.model(decoder_input_ids=self.start, attention_mask=self.source_mask, encoder_outputs=self.memory,
                            past_key_values=self.cache, use_cache=True).last_hidden_state
        self.memory = None  # the cache now holds each layer's cross-attention keys and values
        return self.model.logits(hidden[:, -1])

    def step(self, tokens: Tensor) -> Tensor:
        hidden = self.model(decoder_input_ids=tokens[:, None], attention_mask=self.source_mask,
                            past_key_values=self.cache, use_cache=True).last_hidden_state
        return self.model.logits(hidden[:, -1])

    def expand(self, index: Tensor) -> None:
        self.cache.reorder(index)
        if self.source_mask is not None:
            self.source_mask = self.source_mask[index]

    def reorder(self, index: Tensor) -> None:
        # Beams of one source share its cross-attention keys and values: only self-attention moves.
        self.cache.reorder(index, cross=False)


# ---------------------------------------------------------------------------
# The searches
# ---------------------------------------------------------------------------

StopCheck = Callable[[list[list[int]]], list[bool]]
TokenCallback = Callable[[Tensor, Tensor], None]


def _choose(scores: Tensor, o: GenerationOptions, generator: torch.Generator | None) -> Tensor:
    if o.do_sample:
        return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return scores.argmax(-1)


def _greedy_or_sample(steps: Any, logits: Tensor, sequences: Tensor, prompt_length: int, max_length: int,
                      processors: _Processors, o: GenerationOptions, generator: torch.Generator | None,
                      stop: StopCheck | None, on_tokens: TokenCallback | None) -> list[tuple[Tensor, int]]:
    """One continuation per row: `(sequence row, generated length)` each."""
    rows = sequences.shape[0]
    eos, pad = processors.eos, o.pad_token_id if o.pad_token_id is not None else (o.eos_ids or [0])[0]
    unfinished = torch.ones(rows, dtype=torch.bool, device=sequences.device)
    generated = torch.zeros(rows, dtype=torch.long, device=sequences.device)
    length = prompt_length
    while True:
        scores = processors(logits.float(), sequences[:, :length])
        tokens = _choose(scores, o, generator)
        if eos is not None:
            tokens = torch.where(unfinished, tokens, pad)  # finished rows take padding, as in transformers
        sequences[:, length] = tokens
        length += 1
        generated += unfinished
        if on_tokens is not None:
            on_tokens(tokens, unfinished)
        if eos is not None:
            unfinished &= ~torch.isin(tokens, eos)
        if stop is not None:
            hits = stop(sequences[:, prompt_length:length].tolist())
            unfinished &= ~torch.tensor(hits, device=tokens.device)
        if length >= max_length or not bool(unfinished.any()):
            break
        processors.append(tokens)
        logits = steps.step(tokens)
    return [(sequences[i], int(generated[i])) for i in range(rows)]


def _gather_beams(tensor: Tensor, index: Tensor) -> Tensor:
    """`tensor[b, index[b, k], ...]`: `(batch, beams, ...)` by `(batch, k)` -> `(batch, k, ...)`."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _beam_search(steps: Any, logits: Tensor, prompt: Tensor, prompt_length: int, max_length: int,
                 processors: _Processors, o: GenerationOptions, generator: torch.Generator | None,
                 stop: StopCheck | None) -> list[tuple[Tensor, int]]:
    """`num_return_sequences` hypotheses per prompt, best first: `(sequence row, generated length)` each.

    The vectorised beam search of transformers (`_beam_search` and its helpers):
    each step takes the top `keep` continuations of all beams, the best
    `num_beams` of those that do not end go on running, and those that end
    (EOS, a stop string, the maximum length) compete for the `num_beams`
    finished slots, scored with the length penalty.
    """
    batch, beams, device = prompt.shape[0], o.num_beams, prompt.device
    eos = processors.eos
    keep = max(2, 1 + (0 if eos is None else eos.numel())) * beams
    top_beams = torch.arange(keep, device=device) < beams  # (keep,)
    offsets = torch.arange(batch, device=device)[:, None] * beams  # (batch, 1): row of each prompt's first beam

    # Run the prompt once per prompt, then give every beam its copy.
    expand = torch.arange(batch, device=device).repeat_interleave(beams)
    steps.expand(expand)
    processors.select(expand)
    logits = logits[expand]

    fill = o.pad_token_id if o.pad_token_id is not None else (o.eos_ids or [0])[0]
    running = torch.full((batch, beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :prompt_length] = prompt[:, None]
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = -1e9  # all beams start equal: only the first may spread at step one
    finished = running.clone()
    finished_scores = torch.full((batch, beams), -1e9, device=device)
    finished_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
    is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    length = prompt_length
    while True:
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs = processors(log_probs, running.view(batch * beams, max_length)[:, :length])
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)
        if o.do_sample:
            picked = torch.multinomial(totals.softmax(-1), keep, generator=generator)
            top_scores, order = totals.gather(1, picked).sort(dim=-1, descending=True)
            picked = picked.gather(1, order)
        else:
            top_scores, picked = torch.topk(totals, keep)  # (batch, keep)
        parents, tokens = picked // vocab, picked % vocab
        candidates = _gather_beams(running, parents)  # (batch, keep, max_length)
        candidates[:, :, length] = tokens

        ends = torch.full_like(tokens, length + 1 >= max_length, dtype=torch.bool)
        if eos is not None:
            ends |= torch.isin(tokens, eos)
        if stop is not None:
            flat = candidates[:, :, prompt_length : length + 1].reshape(batch * keep, -1).tolist()
            ends |= torch.tensor(stop(flat), device=device).view(batch, keep)

        # The best continuations that go on.
        go_on = top_scores + ends.float() * -1e9
        chosen = torch.topk(go_on, beams).indices  # (batch, beams)
        running = _gather_beams(candidates, chosen)
        running_scores = _gather_beams(go_on, chosen)
        beam_rows = (_gather_beams(parents, chosen) + offsets).view(-1)  # (batch * beams,) cache row of each parent

        # The best finished hypotheses, among the old ones and those ending now in the top `beams`.
        ended_now = ends & top_beams[None, :]
        scored = top_scores / ((length + 1 - prompt_length) ** o.length_penalty)
        full = is_finished.all(-1, keepdim=True) & (o.early_stopping is True)
        scored = scored + full.float() * -1e9 + (~improvable).float() * -1e9 + (~ended_now).float() * -1e9
        merged_scores = torch.cat([finished_scores, scored], dim=1)
        best = torch.topk(merged_scores, beams).indices
        finished = _gather_beams(torch.cat([finished, candidates], dim=1), best)
        finished_scores = _gather_beams(merged_scores, best)
        new_lengths = torch.full_like(tokens, length + 1 - prompt_length)
        finished_lengths = _gather_beams(torch.cat([finished_lengths, new_lengths], dim=1), best)
        is_finished = _gather_beams(torch.cat([is_finished, ended_now], dim=1), best)

        length += 1
        # Could a running beam still beat the worst finished one? (transformers' heuristic)
        if o.early_stopping == "never" and o.length_penalty > 0.0:
            best_length = max_length - prompt_length
        else:
            best_length = length - prompt_length
        best_possible = running_scores[:, :1] / (best_length ** o.length_penalty)
        worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, -1e9)
        improvable = improvable & (best_possible > worst).any(-1, keepdim=True)
        all_done = bool(is_finished.all()) and o.early_stopping is True
        if not bool(improvable.any()) or all_done or bool(ends.all()):
            break
        steps.reorder(beam_rows)
        processors.select(beam_rows)
        tokens_now = running[:, :, length - 1].reshape(-1)
        processors.append(tokens_now)
        logits = steps.step(tokens_now)

    results = []
    for b in range(batch):
        for k in range(o.num_return_sequences):
            results.append((finished[b, k], int(finished_lengths[b, k])))
    return results


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def _left_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, longest - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, longest - len(row):] = 1
    return ids.to(device), mask.to(device)


def _right_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _kind(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    kind = getattr(config, "kind", None)
    if kind not in ("decoder", "encoder-decoder") or not hasattr(model, "logits"):
        raise NlpkitError(f"generation needs a decoder or an encoder-decoder with an LM head, got {kind or type(model).__name__}")
    return kind


@torch.inference_mode()
def generate_ids(
    model: nn.Module,
    inputs: Sequence[Sequence[int]],
    options: GenerationOptions,
    *,
    stop: StopCheck | None = None,
    on_tokens: TokenCallback | None = None,
) -> list[list[list[int]]]:
    """Generate token ids: the continuations of each input.

    Args:
        model: an nlpkit ``Decoder`` or ``EncoderDecoder`` (its ``logits`` is the LM head).
        inputs: one list of token ids per prompt: a decoder's prompt (padded on
            the left here), or an encoder-decoder's source.
        options: resolved options (:func:`resolve_options`).
        stop: given each row's generated ids so far, says which rows are done
            (stop strings); called after every step.
        on_tokens: called after every greedy or sampling step with the new
            tokens ``(rows,)`` and which rows were still running (streaming).

    Returns:
        Per input, ``num_return_sequences`` lists of new token ids (the
        prompt excluded; an end-of-sequence token that ended one is kept).

    Raises:
        NlpkitError: an input longer than the model's context window, an
            empty input, or an encoder-decoder without a decoder start token.
    """
    from nlpkit.backbones.config import config_of

    kind = _kind(model)
    if not inputs:
        return []
    o = options
    config = config_of(model)
    device = next(model.parameters()).device
    window = config.max_positions
    for i, row in enumerate(inputs):
        if not row:
            raise NlpkitError(f"prompt {i + 1} has no tokens")
        if len(row) > window:
            raise NlpkitError(f"prompt {i + 1} has {len(row)} tokens, more than the model's context window of "
                              f"{window} tokens")
    pad = o.pad_token_id if o.pad_token_id is not None else (o.eos_ids or [config.pad_token_id or 0])[0]
    if kind == "decoder":
        prompt, mask = _left_pad(inputs, pad, device)
        prompt_length = prompt.shape[1]
    else:
        start = o.decoder_start_token_id if o.decoder_start_token_id is not None else o.bos_token_id
        if start is None:
            raise NlpkitError("an encoder-decoder needs decoder_start_token_id (or bos_token_id) to start decoding")
        source, source_mask = _right_pad(inputs, pad, device)
        prompt = torch.full((len(inputs), 1), start, dtype=torch.long, device=device)
        mask = torch.ones_like(prompt)
        prompt_length = 1
    if o.max_new_tokens is not None:
        new_tokens = o.max_new_tokens
    elif o.max_length is not None:
        new_tokens = max(o.max_length - prompt_length, 0)
    else:
        new_tokens = DEFAULT_MAX_NEW_TOKENS
    if prompt_length + new_tokens > window:
        log.warning("generation stops at the model's context window of %d tokens (%d new tokens instead of %d)",
                    window, window - prompt_length, new_tokens)
        new_tokens = window - prompt_length
    if new_tokens <= 0:
        return [[[] for _ in range(o.num_return_sequences)] for _ in inputs]
    max_length = prompt_length + new_tokens

    # _kind checked the kind and the LM head; a backbone of a kind offers what nlpkit's class of that kind does.
    if kind == "decoder":
        steps: Any = _DecoderSteps(cast("Decoder", model), prompt, mask, max_length)
    else:
        steps = _EncoderDecoderSteps(cast("EncoderDecoder", model), source, source_mask, int(prompt[0, 0]), max_length)
    logits = steps.prefill()
    processors = _Processors(o, logits.shape[-1], prompt, mask if kind == "decoder" else None, prompt_length,
                             max_length, o.num_beams)
    generator = None
    if o.seed is not None:
        generator = torch.Generator(device=device).manual_seed(o.seed)

    if o.num_beams > 1:
        found = _beam_search(steps, logits, prompt, prompt_length, max_length, processors, o, generator, stop)
    else:
        copies = o.num_return_sequences
        if copies > 1:
            expand = torch.arange(len(inputs), device=device).repeat_interleave(copies)
            steps.expand(expand)
            processors.select(expand)
            logits, prompt = logits[expand], prompt[expand]
        sequences = torch.full((prompt.shape[0], max_length), pad, dtype=torch.long, device=device)
        sequences[:, :prompt_length] = prompt
        found = _greedy_or_sample(steps, logits, sequences, prompt_length, max_length, processors, o, generator,
                                  stop, on_tokens)
    ids = [row[prompt_length : prompt_length + n].tolist() for row, n in found]
    per = o.num_return_sequences
    return [ids[i * per : (i + 1) * per] for i in range(len(inputs))]


class _StopStrings:
    """Which rows' generated text contains a stop string (decoded with the tokenizer)."""

    def __init__(self, tokenizer: TaskTokenizer, strings: list[str]) -> None:
        self.tokenizer = tokenizer
        self.strings = strings

    def __call__(self, rows: list[list[int]]) -> list[bool]:
        texts = [self.tokenizer.decode(row) for row in rows]
        return [any(s in text for s in self.strings) for text in texts]


class _Streamer:
    """Streams each row's text as its tokens come: decodes the row so far and emits the part not yet shown.

    Text that could still become a stop string (a suffix of the text that is a prefix of one) and a byte-level
    token's half character are held back until the next token says what they are, so that the pieces streamed
    add up to the final answer exactly.
    """

    def __init__(self, tokenizer: TaskTokenizer, eos: list[int], stop: list[str], emit: Callable[[int, str], None],
                 rows: int) -> None:
        self.tokenizer, self.eos, self.stop, self.emit = tokenizer, set(eos), stop, emit
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.shown = [0] * rows
        self.done = [False] * rows

    def __call__(self, tokens: Tensor, running: Tensor) -> None:
        for row, (token, live) in enumerate(zip(tokens[: len(self.ids)].tolist(), running.tolist())):
            if self.done[row] or not live:
                continue
            if token in self.eos:
                self._show(row, final=True)
                continue
            self.ids[row].append(token)
            self._show(row, final=False)

    def finish(self) -> None:
        """Shows what is still held back: bytes that never became a character decode as U+FFFD, as in the answer."""
        for row in range(len(self.ids)):
            if not self.done[row]:
                self._show(row, final=True)

    def _show(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        end = len(text)
        if cut >= 0:  # the answer ends before a stop string
            end, final = cut, True
        elif not final:
            if text.endswith("\ufffd"):
                return  # a byte-level token may end inside a character: wait for the rest of it
            held = max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
            end -= held
        if end > self.shown[row]:
            self.emit(row, text[self.shown[row] : end])
            self.shown[row] = end
        self.done[row] = final


@dataclass
class Continuation:
    """One continuation with what an API reports of it.

    Attributes:
        text: the text, special tokens skipped and cut before a stop string.
        tokens: the tokens generated (an end-of-sequence token that ended it counted).
        finish_reason: ``"stop"`` (an end-of-sequence token or a stop string ended it) or ``"length"``
            (``max_new_tokens`` or the context window did).
    """

    text: str
    tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass
class Generated:
    """A prompt's continuations (``num_return_sequences`` of them) and its length in tokens."""

    prompt_tokens: int
    continuations: list[Continuation]


def generate(
    model: nn.Module,
    tokenizer: TaskTokenizer,
    prompts: str | Sequence[Any],
    *,
    encode: Callable[[list[Any]], list[list[int]]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    stream: Callable[[str], None] | None = None,
    on_text: Callable[[int, str], None] | None = None,
    details: bool = False,
    **options: Any,
) -> Any:
    """Generate text: the continuation of each prompt (or, for an encoder-decoder, its output).

    Args:
        model: an nlpkit ``Decoder`` or ``EncoderDecoder``.
        tokenizer: encodes the prompts and decodes the output (a translation
            pair's ``.target`` decodes an encoder-decoder's output).
        prompts: a text or a list of texts (or of what ``encode`` takes:
            ``nlpkit.chat`` passes conversations).
        encode: prompts -> token ids; by default the tokenizer with its special
            tokens (a Llama tokenizer adds BOS), never truncated.
        defaults: the checkpoint's generation defaults (``generation_config.json``).
        stream: called with each new piece of text of the first prompt as it is
            produced (greedy and sampling).
        on_text: called with ``(row, piece)`` for every continuation's new text
            (row ``i * num_return_sequences + j`` is prompt ``i``'s ``j``-th);
            the pieces of a row add up to its final text (greedy and sampling).
        details: return a :class:`Generated` per prompt (texts, token counts,
            finish reasons) instead of the texts.
        **options: decoding options, named as in ``transformers``' ``generate``
            (see :class:`GenerationOptions`), plus ``stop`` and ``seed``.

    Returns:
        The continuation only, special tokens skipped and cut before a stop
        string: a string for a single prompt, a list of strings for a list,
        and a list of lists when ``num_return_sequences > 1``; with
        ``details``, a :class:`Generated` (or a list of them) instead.

    Raises:
        NlpkitError: an unknown option or value, or a prompt longer than the
            model's context window.
    """
    o = resolve_options(options, defaults)
    kind = _kind(model)
    single = isinstance(prompts, str)
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        return []
    if encode is None:
        encodings = tokenizer.encode_batch(texts, truncation=False)
        ids = [list(e.ids) for e in encodings]
    else:
        ids = encode(texts)
    if kind == "decoder":
        # An empty prompt starts from BOS (transformers' rule), else from the end of a previous text.
        start = o.bos_token_id if o.bos_token_id is not None else (o.eos_ids[0] if o.eos_ids else None)
        for row in ids:
            if not row and start is not None:
                row.append(start)
    output_tokenizer = getattr(tokenizer, "target", None) if kind == "encoder-decoder" else None
    output_tokenizer = output_tokenizer or tokenizer
    stop = _StopStrings(output_tokenizer, o.stop) if o.stop else None
    streamer = None
    if o.num_beams == 1 and (stream is not None or on_text is not None):
        def emit(row: int, text: str) -> None:
            if on_text is not None:
                on_text(row, text)
            if stream is not None and row == 0:
                stream(text)
        rows = len(ids) * o.num_return_sequences if on_text is not None else 1
        streamer = _Streamer(output_tokenizer, o.eos_ids, o.stop, emit, rows)
    found = generate_ids(model, ids, o, stop=stop, on_tokens=streamer)
    if streamer is not None:
        streamer.finish()
    eos = set(o.eos_ids)
    answers: list[Generated] = []
    for prompt, rows_found in zip(ids, found):
        continuations = []
        for row in rows_found:
            tokens = len(row)
            ended = bool(row) and row[-1] in eos
            if ended:
                row = row[:-1]
            text = output_tokenizer.decode(row, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in o.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, ended = text[:cut], True
            continuations.append(Continuation(text, tokens, "stop" if ended else "length"))
        answers.append(Generated(len(prompt), continuations))
    if details:
        return answers[0] if single else answers
    texts_out = [[c.text for c in generated.continuations] for generated in answers]
    if o.num_return_sequences > 1:
        return texts_out[0] if single else texts_out
    firsts = [texts[0] for texts in texts_out]
    return firsts[0] if single else firsts
