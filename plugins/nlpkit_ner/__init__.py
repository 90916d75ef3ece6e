"""Named-entity recognition: a tag per word, entities as character spans of the input text.

A minimal recipe (CoNLL column files; see ``data.py`` for the formats)::

    task: ner
    backbone: {preset: encoder-tiny}
    data: {format: conll, train: train.txt, validation: valid.txt}
    ner: {scheme: iob2}

Training rows are ``{"tokens": [...], "tags": [...]}``; ``predict`` takes raw
text, cuts it into words where treebank-style corpora cut (``data.split_words``
says why: the model is then read where it was trained to be read, so the
answer does not depend on how the text happens to be spaced or punctuated),
and answers ``{"entities": [{"label", "text", "start", "end", "score"}]}``
with character offsets into the input (a pre-split row is answered with
offsets into its words joined by single spaces).

The model reads subwords: each word's first subword carries its tag (or every
subword, ``label_all_subwords``), the others are ignored by the loss. A
sentence longer than the model's length is cut into overlapping windows on
word boundaries (``alignment.py``); each word is read from the window where it
is most central, so nothing is cut and one input still gives one answer.

Tags in the data are read in ``scheme`` (``schemes.py``) and trained in
``train_scheme``; the metrics (``metrics.py``) are entity-level precision,
recall and F1 (and F1 per type, ``f1_PER`` ...) equal to ``seqeval``'s, on
words, in training, ``nlpkit evaluate`` and ``LoadedModel.evaluate`` alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

import nlpkit
from nlpkit.tasks import NlpkitError, Task, family_head, head_layers, pad
from nlpkit_ner.alignment import place_words, word_windows
from nlpkit_ner.data import FORMATS, join_words, split_words
from nlpkit_ner.schemes import SCHEMES, check_tags, chunks, entity_type, scheme_tags, spans, tags_from_spans, transitions

__all__ = ["Ner", "NerOptions"]

IGNORED = -100  # the label of subwords the loss skips (F.cross_entropy's ignore_index)
_FORBIDDEN = -1e9  # the score of a transition the scheme does not allow (Viterbi)


@dataclass
class NerOptions:
    scheme: Literal["iob1", "iob2", "iobes", "bilou"] = "iob2"  # how the data's tags are written
    train_scheme: Literal["iob2", "iobes"] = "iob2"  # the tags the model learns and predicts
    label_all_subwords: bool = False  # every subword carries its word's tag, not only the first
    decoding: Literal["argmax", "viterbi"] = "argmax"  # viterbi: only well-formed tag sequences
    metric_mode: Literal["default", "strict"] = "default"  # seqeval's conlleval-compatible or strict mode
    window_overlap: int = 32  # subwords consecutive windows of a long sentence share
    dropout: float = 0.1


class Ner(Task):
    name = "ner"
    renamed_weights = {"head.1.": "head.out."}  # run folders from before the head took its family's layout
    backbone_kinds = ("encoder",)
    config_class = NerOptions
    input_columns = ("tokens",)  # pre-split words in training data; raw text when predicting
    target_columns = ("tags",)
    metric_names: tuple[str, ...] = ("f1", "precision", "recall")  # and f1_TYPE per type once set up
    labels: list[str] = []  # tags in train_scheme, "O" first
    label_ids: dict[str, int] = {}
    type_metrics: list[str] = []  # f1_TYPE metric names, one per entity type

    def __init__(self, config: NerOptions, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        if config.window_overlap < 0:
            raise NlpkitError(f"ner.window_overlap: expected an integer >= 0, got {config.window_overlap}")
        self.cls_id, self.sep_id = tokenizer.token_id("cls"), tokenizer.token_id("sep")
        self.budget = tokenizer.max_length - (self.cls_id is not None) - (self.sep_id is not None)
        if self.budget < 1:
            raise NlpkitError(f"tokenizer.max_length: {tokenizer.max_length} leaves no room for words")
        unk = tokenizer.token_id("unk")
        self.unk_id = tokenizer.pad_token_id if unk is None else unk

    # -- labels -----------------------------------------------------------------

    @property
    def types(self) -> list[str]:
        return list(dict.fromkeys(entity_type(tag) for tag in self.labels if tag != "O"))

    def _set_labels(self, labels: list[str]) -> None:
        self.labels = labels
        self.label_ids = {label: i for i, label in enumerate(labels)}
        # Per-type F1 joins the metrics once the types are known; recipes monitor the class's names.
        self.type_metrics = _type_metric_names(self.types)
        self.metric_names = (*Ner.metric_names, *self.type_metrics)

    def _check_rows(self, where: str, dataset: Any, known: set[str] | None) -> set[str]:
        scheme = self.config.scheme
        found: set[str] = set()
        for row, (tokens, tags) in enumerate(zip(dataset["tokens"], dataset["tags"]), start=1):
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise NlpkitError(f"{where}: row {row}: 'tokens' must be a list of words, got {tokens!r:.60}")
            if not isinstance(tags, list) or len(tags) != len(tokens):
                count = len(tags) if isinstance(tags, list) else f"not a list of tags but {type(tags).__name__}"
                raise NlpkitError(f"{where}: row {row}: {len(tokens)} tokens but {count} tags")
            bad = check_tags(tags, scheme)
            if bad is not None:
                raise NlpkitError(f"{where}: row {row}: tag '{tags[bad]}' of word {bad + 1} ('{tokens[bad]}') is not "
                                  f"a {scheme.upper()} tag (ner.scheme: {scheme}; prefixes "
                                  f"{', '.join(p + '-' for p in SCHEMES[scheme])} or O)")
            for tag in tags:
                if tag != "O":
                    found.add(entity_type(tag))
                    if known is not None and entity_type(tag) not in known:
                        raise NlpkitError(f"{where}: row {row}: entity type '{entity_type(tag)}' never seen in "
                                          f"training (training types: {', '.join(sorted(known))})")
        return found

    def setup(self, splits):
        types = self._check_rows("data.train", splits["train"], None)
        if not types:
            raise NlpkitError("data.train: every tag is O; NER needs entities to learn from")
        self._set_labels(scheme_tags(sorted(types), self.config.train_scheme))

    def check_split(self, where, dataset):
        self._check_rows(where, dataset, set(self.types))

    def state(self):
        return {"labels": self.labels}

    def load_state(self, state):
        self._set_labels(list(state["labels"]))

    # -- features -----------------------------------------------------------------

    def _words(self, item: Any) -> tuple[list[str], list[list[int]], str]:
        if isinstance(item, str):  # raw text (prediction): cut where the corpora cut, so read where training read
            words, offsets = split_words(item)
            return words, offsets, item
        words = [str(w) for w in item]
        text, offsets = join_words(words)
        return words, offsets, text

    def _train_tags(self, tags: list[str], length: int) -> list[int]:
        """The data's tags, read in ``scheme``, written in ``train_scheme``, as label ids."""
        written = tags_from_spans(spans(tags, self.config.scheme), length, self.config.train_scheme)
        return [self.label_ids[t] for t in written]

    def encode(self, examples):
        words, offsets, texts = zip(*(self._words(item) for item in examples["tokens"])) if examples["tokens"] else ((), (), ())
        # Untruncated and without special tokens: a long sentence becomes windows below instead of losing its end.
        encodings = self.tokenizer.encode_words([w or [""] for w in words], add_special_tokens=False, truncation=False)
        gold = examples.get("tags")
        features: dict[str, list[Any]] = {k: [] for k in ("input_ids", "word_window", "word_token", "text", "word_offsets")}
        if gold is not None:
            features.update(labels=[], tags=[])
        first = int(self.cls_id is not None)
        for i, encoding in enumerate(encodings):
            # Each word's subwords; a word the tokenizer drops entirely (a zero-width character) reads as unknown.
            pieces: list[list[int]] = [[] for _ in words[i]]
            for token, word in zip(encoding.ids, encoding.word_ids):
                if word is not None and word < len(pieces):
                    pieces[word].append(token)
            pieces = [(p or [self.unk_id])[: self.budget] for p in pieces]
            ranges = word_windows([len(p) for p in pieces], self.budget, self.config.window_overlap)
            windows = [self._with_specials([t for p in pieces[s:e] for t in p]) for s, e in ranges]
            placed = place_words([len(p) for p in pieces], ranges)
            features["input_ids"].append(windows)
            features["word_window"].append([window for window, _ in placed])
            features["word_token"].append([first + position for _, position in placed])
            features["text"].append(texts[i])
            features["word_offsets"].append(offsets[i])
            if gold is not None:
                tags = self._train_tags(gold[i], len(pieces))
                features["tags"].append(tags)
                features["labels"].append([self._window_labels(pieces[s:e], tags[s:e]) for s, e in ranges])
        return features

    def _with_specials(self, ids: list[int]) -> list[int]:
        return [*([self.cls_id] if self.cls_id is not None else []), *ids, *([self.sep_id] if self.sep_id is not None else [])]

    def _window_labels(self, pieces: list[list[int]], tags: list[int]) -> list[int]:
        labels = []
        for word_pieces, tag in zip(pieces, tags):
            rest = tag if self.config.label_all_subwords else IGNORED
            labels += [tag] + [rest] * (len(word_pieces) - 1)
        return [*([IGNORED] if self.cls_id is not None else []), *labels, *([IGNORED] if self.sep_id is not None else [])]

    def feature_length(self, features):
        return sum(len(window) for window in features["input_ids"])

    def collate(self, features):
        windows = max(len(f["input_ids"]) for f in features)
        longest = max(len(w) for f in features for w in f["input_ids"])
        shape = (len(features), windows, longest)
        input_ids = torch.full(shape, self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        window_mask = torch.zeros(shape[:2], dtype=torch.bool)
        labels = torch.full(shape, IGNORED, dtype=torch.long) if "labels" in features[0] else None
        for b, feature in enumerate(features):
            for k, window in enumerate(feature["input_ids"]):
                input_ids[b, k, : len(window)] = torch.tensor(window)
                attention_mask[b, k, : len(window)] = 1
                window_mask[b, k] = True
                if labels is not None:
                    labels[b, k, : len(window)] = torch.tensor(feature["labels"][k])
        batch = {
            "input_ids": input_ids,  # (batch, windows, seq)
            "attention_mask": attention_mask,
            "window_mask": window_mask,  # (batch, windows): real windows, not padding
            "word_window": pad([f["word_window"] for f in features], 0),  # (batch, words): where each word is read
            "word_token": pad([f["word_token"] for f in features], 0),
            "word_mask": pad([[1] * len(f["word_window"]) for f in features], 0).bool(),
            "text": [f["text"] for f in features],
            "word_offsets": [f["word_offsets"] for f in features],
        }
        if labels is not None:
            batch["labels"] = labels
            batch["tags"] = pad([f["tags"] for f in features], IGNORED)  # (batch, words), train_scheme ids
        return batch

    # -- model ------------------------------------------------------------------

    def build_head(self, backbone_config):
        shape = family_head(self.checkpoint_family, "token_classification")
        return head_layers(shape, backbone_config, len(self.labels), self.config.dropout)

    def forward(self, model, batch):
        real = batch["window_mask"]
        # Only real windows go through the backbone: (windows in the batch, seq, hidden).
        hidden = model.backbone(batch["input_ids"][real], attention_mask=batch["attention_mask"][real]).last_hidden_state
        logits = model.head(hidden).float()
        token_logits = logits.new_zeros((*batch["input_ids"].shape, logits.shape[-1]))  # (batch, windows, seq, tags)
        token_logits[real] = logits
        rows = torch.arange(token_logits.shape[0], device=logits.device)[:, None]
        word_logits = token_logits[rows, batch["word_window"], batch["word_token"]]  # (batch, words, tags)
        return {"token_logits": token_logits, "word_logits": word_logits}

    def loss(self, outputs, batch):
        logits, labels = outputs["token_logits"], batch["labels"]
        if not bool((labels != IGNORED).any()):  # a batch of empty sentences
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORED)

    def target_tokens(self, batch):
        return int((batch["labels"] != IGNORED).sum())  # the labelled subwords `loss` averages over

    # -- decoding -----------------------------------------------------------------

    def _constraints(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start, follows, end = transitions(self.labels, self.config.train_scheme)

        def scores(allowed: list[Any]) -> torch.Tensor:
            return torch.tensor(allowed, device=device).logical_not().float() * _FORBIDDEN

        return scores(start), scores(follows), scores(end)

    def _viterbi(self, log_probs: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """The best tag path that the scheme allows: (batch, words) ids."""
        batch, words, _ = log_probs.shape
        path = torch.zeros(batch, words, dtype=torch.long)
        if words == 0:
            return path
        start, follows, end = self._constraints(log_probs.device)
        score = log_probs[:, 0] + start  # (batch, tags): best path ending in each tag
        steps = []
        for t in range(1, words):
            best, previous = (score[:, :, None] + follows).max(1)  # over the previous tag
            active = torch.tensor([t < n for n in lengths], device=score.device)[:, None]
            score = torch.where(active, best + log_probs[:, t], score)  # finished sentences keep theirs
            steps.append(previous)
        last = (score + end).argmax(-1).tolist()
        back = torch.stack(steps).tolist() if steps else []  # (words - 1, batch, tags)
        for b, n in enumerate(lengths):
            tag = last[b]
            for t in range(n - 1, -1, -1):
                path[b, t] = tag
                if t:
                    tag = back[t - 1][b][tag]
        return path

    def _predict(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> list[tuple[list[str], list[float]]]:
        """Each example's predicted tags (train_scheme) and each tag's probability, word by word."""
        log_probs = outputs["word_logits"].float().log_softmax(-1)
        lengths = batch["word_mask"].sum(1).tolist()
        path = self._viterbi(log_probs, lengths) if self.config.decoding == "viterbi" else log_probs.argmax(-1).cpu()
        probs = log_probs.cpu().gather(-1, path[..., None]).squeeze(-1).exp()
        return [([self.labels[i] for i in tags[:n]], p[:n]) for tags, p, n in zip(path.tolist(), probs.tolist(), lengths)]

    def evaluate_batch(self, model, batch, outputs):
        predicted = [tags for tags, _ in self._predict(outputs, batch)]
        lengths = batch["word_mask"].sum(1).tolist()
        gold = [[self.labels[i] for i in row[:n]] for row, n in zip(batch["tags"].tolist(), lengths)]
        return predicted, gold

    def decode(self, outputs, batch):
        answers = []
        for (tags, probs), text, offsets in zip(self._predict(outputs, batch), batch["text"], batch["word_offsets"]):
            entities = []
            for type_, first, last in chunks(tags):
                start, end = offsets[first][0], offsets[last - 1][1]
                entities.append({"label": type_, "text": text[start:end], "start": start, "end": end,
                                 "score": sum(probs[first:last]) / (last - first)})
            answers.append({"entities": entities})
        return answers

    def metrics(self):
        from nlpkit_ner.metrics import EntityScore  # here: torchmetrics takes seconds to import

        options = {"mode": self.config.metric_mode, "scheme": self.config.train_scheme}
        metrics = {name: EntityScore(self.types, name, **options) for name in Ner.metric_names}
        for type_, name in zip(self.types, self.type_metrics):
            metrics[name] = EntityScore(self.types, f"f1_{type_}", **options)
        return metrics

    def report_section(self, predictions, run):
        from nlpkit_ner.report import ner_section

        return ner_section(self.types, self.config.scheme, self.config.train_scheme, predictions)

    def hf_head(self, family):
        from nlpkit_ner.hf import token_classification_head

        return token_classification_head(family, self.labels)


def _type_metric_names(types: list[str]) -> list[str]:
    """``f1_TYPE`` for each type, made safe as a metric key (no dots) and unique."""
    names: list[str] = []
    for type_ in types:
        name = "f1_" + re.sub(r"[^0-9A-Za-z_-]", "_", type_)
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [Ner]


@nlpkit.hookimpl
def nlpkit_register_data_formats():
    return dict(FORMATS)
