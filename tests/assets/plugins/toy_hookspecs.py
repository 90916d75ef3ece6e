"""A plugin that adds a hook of its own for other plugins (through ``nlpkit_addhooks``)."""

from __future__ import annotations

import pluggy

import nlpkit

hookspec = pluggy.HookspecMarker("nlpkit")


class ToyHooks:
    @hookspec
    def nlpkit_toy_greeting(self, name):
        """Return a greeting for ``name``."""


@nlpkit.hookimpl
def nlpkit_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(ToyHooks)
