"""Translation (and summarisation): sequence to sequence on an encoder-decoder backbone.

A minimal recipe::

    task: translation
    backbone: {preset: encoder-decoder-small}
    tokenizer: {train: bpe, lowercase: false}   # one vocabulary for both languages
    data: {format: parallel, train: train.en, validation: val.en, options: {target: de}}
    translation: {num_beams: 4}

Rows have a ``source`` and a ``target`` text (``data.columns`` maps other
names: ``{source: article, target: summary}`` makes it summarisation).
Training is teacher-forced with label-smoothed cross-entropy; validation
decodes the sources with :mod:`nlpkit.generation` (beam search by default)
and scores the detokenised output against the reference text with BLEU and
chrF, as sacreBLEU computes them (torchmetrics ``SacreBLEUScore``,
``CHRFScore``), on sacreBLEU's 0-100 scale.

Target ids follow each family's convention so pretrained checkpoints keep
working: the labels are the target encoded with its special tokens, and the
decoder reads them shifted right behind ``decoder_start_token_id``: the
end-of-sequence token when the tokenizer starts a sequence with a BOS token
(BART, and tokenizers nlpkit trains), the padding token otherwise (T5,
Marian) — unless the recipe sets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import nn

import nlpkit
from nlpkit import generation
from nlpkit.tasks import GeneratesText, NlpkitError, Task, pad

IGNORE_INDEX = -100


@dataclass
class TranslationOptions:
    source_prefix: str = ""  # put before every source text, e.g. T5's "translate English to German: "
    label_smoothing: float = 0.1
    # Validation decoding (and the defaults of translate / generate).
    num_beams: int = 4
    length_penalty: float = 1.0
    max_new_tokens: int = 128
    decoder_start_token_id: int | None = None  # default: the family's convention (module docstring)
    bleu_tokenize: Literal["13a", "intl", "zh", "char", "none"] = "13a"  # sacreBLEU's default: 13a
    lowercase: bool = False  # case-insensitive BLEU and chrF

    def __post_init__(self) -> None:
        # Checked with the recipe, so a bad value fails before any data is read or training starts.
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {self.label_smoothing}")
        for key in ("num_beams", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: expected an integer >= 1, got {getattr(self, key)}")


class NoHead(nn.Module):
    """Nothing to add: the backbone's own LM head writes the target tokens."""


class Translation(GeneratesText, Task):
    name = "translation"
    backbone_kinds = ("encoder-decoder",)
    config_class = TranslationOptions
    input_columns = ("source",)
    target_columns = ("target",)
    metric_names = ("bleu", "chrf")

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.decoder_start = self._decoder_start()

    @classmethod
    def text_columns(cls, column_names):
        # A tokenizer trained from scratch is joint: one vocabulary for both languages, so
        # names, numbers and cognates share pieces (and the embeddings can be tied).
        return [c for c in ("source", "target") if c in column_names]

    @property
    def target_tokenizer(self):
        return self.tokenizer.target or self.tokenizer

    def _decoder_start(self) -> int:
        if self.config.decoder_start_token_id is not None:
            return self.config.decoder_start_token_id
        target = self.target_tokenizer
        first = target.encode_batch(["a"])[0].ids[0]
        bos = target.token_id("bos")
        starts_with_bos = first in {bos, target.token_id("cls")} - {None}
        eos = target.token_id("eos") if target.token_id("eos") is not None else target.token_id("sep")
        if starts_with_bos and eos is not None:
            return eos  # BART: "</s> <s> tokens" is read to predict "<s> tokens </s>"
        return target.pad_token_id  # T5, Marian

    # -- data -----------------------------------------------------------------

    def encode_prompts(self, texts):
        prefix = self.config.source_prefix
        return [e.ids for e in self.tokenizer.encode_batch([prefix + t for t in texts])]

    def encode(self, examples):
        features: dict[str, list[Any]] = {"input_ids": self.encode_prompts(examples["source"])}
        if "target" in examples:
            features["labels"] = [e.ids for e in self.target_tokenizer.encode_batch(examples["target"])]
            features["reference"] = list(examples["target"])
        return features

    def feature_length(self, features):
        # Padded cost of an example in a batch: its longer side.
        return max(len(features["input_ids"]), len(features.get("labels") or ()))

    def collate(self, features):
        ids = [f["input_ids"] for f in features]
        batch: dict[str, Any] = {"input_ids": pad(ids, self.tokenizer.pad_token_id),
                                 "attention_mask": pad([[1] * len(i) for i in ids], 0)}
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            start = self.decoder_start
            batch["labels"] = pad(labels, IGNORE_INDEX)
            batch["decoder_input_ids"] = pad([[start, *row[:-1]] for row in labels], self.target_tokenizer.pad_token_id)
            batch["decoder_attention_mask"] = pad([[1] * len(row) for row in labels], 0)
            batch["reference"] = [f["reference"] for f in features]
        return batch

    def batch_tokens(self, batch):
        # The throughput counts both sides: the encoder reads the sources, the decoder the targets.
        target = batch.get("decoder_attention_mask")
        return int(batch["attention_mask"].sum()) + (int(target.sum()) if target is not None else 0)

    # -- model ----------------------------------------------------------------

    def build_head(self, backbone_config):
        return NoHead()

    def forward(self, model, batch):
        if "decoder_input_ids" not in batch:  # prediction: translate
            return self._translate_ids(model, batch)
        out = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=batch["decoder_input_ids"],
                             decoder_attention_mask=batch["decoder_attention_mask"])
        return model.backbone.logits(out.last_hidden_state)

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                               ignore_index=IGNORE_INDEX, label_smoothing=self.config.label_smoothing)

    def target_tokens(self, batch):
        # What `loss` averages over: label smoothing keeps cross_entropy's mean over the targets not ignored.
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def metrics(self):
        tokenize, lowercase = self.config.bleu_tokenize, self.config.lowercase
        from nlpkit_translation.metrics import CHRF, SacreBLEU  # here: torchmetrics takes seconds to import

        return {"bleu": SacreBLEU(tokenize=tokenize, lowercase=lowercase), "chrf": CHRF(lowercase=lowercase)}

    def _translate_ids(self, model, batch, **options):
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        resolved = generation.resolve_options(options, self.generation_defaults())
        return [candidates[0] for candidates in generation.generate_ids(model.backbone, rows, resolved)]

    def _text(self, ids):
        return self.target_tokenizer.decode(ids, skip_special_tokens=True).strip()

    def evaluate_batch(self, model, batch, logits):
        hypotheses = [self._text(ids) for ids in self._translate_ids(model, batch)]
        return hypotheses, [[reference] for reference in batch["reference"]]

    def decode(self, outputs, batch):
        return [{"translation": self._text(ids)} for ids in outputs]

    def generation_defaults(self):
        target = self.target_tokenizer
        eos = target.token_id("eos") if target.token_id("eos") is not None else target.token_id("sep")
        defaults = {"decoder_start_token_id": self.decoder_start, "pad_token_id": target.pad_token_id,
                    "num_beams": self.config.num_beams, "length_penalty": self.config.length_penalty,
                    "max_new_tokens": self.config.max_new_tokens}
        if eos is not None:
            defaults["eos_token_id"] = eos
        return defaults

    def validation_samples(self, model):
        sources = getattr(self, "_sample_sources", [])
        if not sources:
            return []
        rows = self.encode_prompts(sources)
        resolved = generation.resolve_options({}, self.generation_defaults())
        outputs = generation.generate_ids(model.backbone, rows, resolved)
        return [f"{source} => {self._text(candidates[0])}" for source, candidates in zip(sources, outputs)]

    def setup(self, splits):
        self._sample_sources = list(splits["validation"]["source"][:3]) if "validation" in splits else []

    def state(self):
        # The sources samples.txt shows, kept for a resumed run (which does not call setup).
        return {"sample_sources": getattr(self, "_sample_sources", [])}

    def load_state(self, state):
        self._sample_sources = list(state.get("sample_sources", []))

    def check_split(self, where, dataset):
        if len(dataset) == 0:
            raise NlpkitError(f"{where}: no sentence pairs")

    def report_section(self, predictions, run):
        from nlpkit_translation.report import translation_section

        return translation_section(predictions, run, self.metrics(), self.config.lowercase)

    def hf_head(self, family):
        from nlpkit_translation.hf import seq2seq_lm_head

        return seq2seq_lm_head(family, self.generation_defaults())


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [Translation]


@nlpkit.hookimpl
def nlpkit_register_data_formats():
    from nlpkit_translation.data import load_parallel

    return {"parallel": load_parallel}
