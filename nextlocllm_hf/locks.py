"""One writer per output: every command that writes a folder or file holds a lock on it from before its "is the
target free?" check to its final rename, so two commands aimed at one output cannot both pass the check and then
replace each other's result.

The lock is an OS file lock (`filelock`, `flock` on POSIX) on a hidden sibling, `.NAME.lock`: the kernel drops it when
its holder exits, killed or not, so a crashed writer never blocks the next one. The holder writes its pid into the
file, for the message the second writer gets. The lock file stays after release (deleting it would race a waiter).
The target is taken by its real path (`.`, `runs/../runs` and a symlink name one output); where its folder is not
writable (`--output_dir /tmp`), the lock is a file in the temporary folder named after that path.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout


class OutputLockedError(OSError):
    """Another process is writing the same output (an `OSError`, so commands report it as one `error:` line)."""


def lock_path(target) -> Path:
    """The lock file of `target`: `.NAME.lock` beside it, or in the temporary folder when that is not writable."""
    target = Path(os.path.realpath(target))
    beside = target.parent / f".{target.name}.lock"
    try:
        beside.parent.mkdir(parents=True, exist_ok=True)
        if os.access(beside.parent, os.W_OK):
            return beside
    except OSError:
        pass
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / "nextlocllm-locks" / f"{digest}.lock"


def holder_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


@contextmanager
def exclusive_output(target, *, enabled: bool = True) -> Iterator[None]:
    """Hold the lock on `target` (a folder or file, existing or not) for the block, or refuse at once with
    `<target> is being written by another process (pid N)`. `enabled=False` (a non-main rank) takes no lock."""
    if not enabled:
        yield
        return
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)  # the temporary folder's, when used
    lock = FileLock(path, timeout=0, is_singleton=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise OutputLockedError(f"{target} is being written by another process (pid {holder_pid(path)})") from None
    try:
        with open(path, "r+", encoding="ascii") as f:  # the locked inode itself: a rename-safe place for the pid
            f.truncate()
            f.write(str(os.getpid()))
        yield
    finally:
        lock.release()
