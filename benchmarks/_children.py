"""What every benchmark shares: each side runs in a child process of its own, and reports memory.

A side in its own process keeps one library's imports, caches and allocator
state out of the other's figures; the child prints one JSON line last.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any


def run_child(script: str, arguments: list[str]) -> dict[str, Any]:
    """Run ``python script *arguments`` and return the JSON object on its last line of stdout."""
    done = subprocess.run([sys.executable, os.path.abspath(script), *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"child {' '.join(arguments)} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_mib() -> float:
    """This process's resident set size now, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident set size since it started, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
