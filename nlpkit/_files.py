"""Files written so that a crash never leaves half of one, with the permissions ``open`` gives.

Every file nlpkit writes (run folders, checkpoints, exported models) goes
through here: a temporary name beside the target, ``fsync``, then one atomic
rename; a set of files goes into a staging folder first and moves in at the
end. Folders that are to receive run folders are checked before anything is
written to them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from nlpkit.errors import NlpkitError

__all__ = ["atomic_file", "atomic_write", "staged_folder", "file_mode", "check_output_dir", "make_folder", "read_text"]

_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the process's umask."""
    with _UMASK_LOCK:  # Python < 3.13 reads the umask only by setting it
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` only when the block succeeds.

    The rename is atomic on one filesystem, so readers (and a process killed
    mid-write) see either the old file or the new one, never half of one. The
    file gets the permissions ``open`` would give it (``mkstemp`` makes 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # After the writer: some (safetensors) replace the file they are given with one of their own.
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as handle:  # flush the data to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """A new folder to write a set of files into; they move into ``target`` only when the block succeeds.

    The staging folder sits in ``target``'s nearest existing folder (one
    filesystem, so each move is a rename); ``target`` is created at the end.
    A failure anywhere in the block leaves ``target`` as it was and removes
    the staging folder.
    """
    target = Path(target)
    check_output_dir(target, str(target))
    base = next(parent for parent in (target, *target.parents) if parent.exists())
    staging = Path(tempfile.mkdtemp(dir=base, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        target.mkdir(parents=True, exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, target / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file's content, or a one-line error naming ``what`` and the file.

    Args:
        path: the file.
        what: how messages name it (``recipe file``, ``--input file``).

    Raises:
        NlpkitError: a folder, a missing file, or bytes that are not UTF-8 (with the line).
    """
    file = Path(path)
    if file.is_dir():
        raise NlpkitError(f"{what} '{path}' is a folder; expected a file")
    if not file.is_file():
        raise NlpkitError(f"{what} '{path}' does not exist")
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise NlpkitError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x})") from None


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def check_output_dir(folder: str | Path, what: str = "output_dir") -> None:
    """Check that run folders can be made in ``folder`` (it need not exist yet), without creating anything.

    Raises:
        NlpkitError: naming ``what``: the path is a file, lies inside a file,
            or its nearest existing folder is not writable.
    """
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == folder else f"lies inside {parent}, which is a file"
                raise NlpkitError(f"{what}: {folder} {where}; expected a folder for run folders")
            try:  # os.access answers yes to root on a read-only filesystem: try it
                fd, probe = tempfile.mkstemp(dir=parent, prefix=".nlpkit-write-check-")
            except OSError as error:
                raise NlpkitError(f"{what}: {folder} cannot be written ({parent} is not writable: "
                                  f"{error.strerror})") from None
            os.close(fd)
            os.unlink(probe)
            return


def make_folder(folder: Path, what: str) -> None:
    """``mkdir -p``, with a one-line error naming ``what`` (a file in the way, no permission ...)."""
    check_output_dir(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NlpkitError(f"{what}: cannot create {folder} ({error.strerror})") from None
