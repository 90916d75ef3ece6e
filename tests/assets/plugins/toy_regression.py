"""A third-party task plugin, as a user would name it with ``--plugin toy_regression``."""

from __future__ import annotations

import nlpkit
from nlpkit.tasks import Task


class ToyRegression(Task):
    name = "toy-regression"
    backbone_kinds = ("encoder",)
    target_columns = ("score",)


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [ToyRegression]
