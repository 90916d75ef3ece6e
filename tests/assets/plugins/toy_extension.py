"""A plugin implementing the hook that ``toy_hookspecs`` adds; unknown without it."""

from __future__ import annotations

import nlpkit


@nlpkit.hookimpl
def nlpkit_toy_greeting(name):
    return f"hello {name}"
