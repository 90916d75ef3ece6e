"""Which process trains a run, and whether it still lives: what ``nlpkit runs`` tells running from interrupted.

A run records the host name, the process id and, where the system tells it
(Linux's ``/proc``), the process's start time in clock ticks since boot: a
process id is reused once its process is gone, and the start time tells a
new process with the old id from the run's own.
"""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ["this_process", "process_alive"]


def _stat(pid: int) -> tuple[str, int] | None:
    """The process's state letter and start time in clock ticks since boot (``/proc/PID/stat`` fields 3 and 22).

    None where the system has no ``/proc`` or no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count the fields after its ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def this_process() -> dict[str, Any]:
    """``{"host", "pid", "start_ticks"}`` of the calling process (``start_ticks`` None where unknown)."""
    pid = os.getpid()
    stat = _stat(pid)
    return {"host": socket.gethostname(), "pid": pid, "start_ticks": stat[1] if stat else None}


def process_alive(process: dict[str, Any]) -> bool | None:
    """Whether the process ``this_process()`` described still runs; None when it ran on another host.

    A process of that id that started at another time is another process; a
    killed one that its parent has not yet reaped (a zombie) is gone.
    """
    if process.get("host") != socket.gethostname():
        return None
    pid = process.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    stat = _stat(pid)
    if stat is None:  # no /proc (macOS): the process id alone must do
        return True
    state, started = stat
    recorded = process.get("start_ticks")
    return state not in ("Z", "X") and (recorded is None or recorded == started)
