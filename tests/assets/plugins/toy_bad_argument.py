"""A plugin whose hook asks for a parameter (``device``) that the spec does not have."""

from __future__ import annotations

import nlpkit


@nlpkit.hookimpl
def nlpkit_register_checkpoint_families(device):
    return None
