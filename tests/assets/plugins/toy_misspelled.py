"""A plugin whose hook name has a typo (``task`` for ``tasks``): loading it must fail, not be ignored."""

from __future__ import annotations

import nlpkit


@nlpkit.hookimpl
def nlpkit_register_task():
    return []
