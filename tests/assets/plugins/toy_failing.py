"""A classification task that fails on purpose mid-run: for the tests of what a failed run leaves behind.

``toy-failing.fail_at_step``: the training step whose loss fails; ``fail_with``
``user`` raises an NlpkitError (a user error a plugin reports), ``bug`` a
RuntimeError (a bug of the plugin, which must keep its traceback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nlpkit_classification import Classification, ClassificationOptions

import nlpkit
from nlpkit import NlpkitError


@dataclass
class FailingOptions(ClassificationOptions):
    fail_at_step: int = 0
    fail_with: Literal["user", "bug"] = "bug"


class ToyFailing(Classification):
    name = "toy-failing"
    config_class = FailingOptions

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.steps = 0

    def loss(self, logits, batch):
        if logits.requires_grad:  # a training step, not validation
            if self.steps == self.config.fail_at_step:
                if self.config.fail_with == "user":
                    raise NlpkitError(f"toy-failing: the data broke at step {self.steps}")
                raise RuntimeError(f"toy-failing: a bug at step {self.steps}")
            self.steps += 1
        return super().loss(logits, batch)


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [ToyFailing]
