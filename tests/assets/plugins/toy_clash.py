"""A plugin that registers a task under a name nlpkit's classification plugin already owns."""

from __future__ import annotations

import nlpkit
from nlpkit.tasks import Task


class OtherClassification(Task):
    name = "classification"


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [OtherClassification]
