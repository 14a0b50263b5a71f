"""Writing results so that nothing finished is replaced by accident or left half-written.

Every command that writes a result goes through here:

- `refuse_occupied` checks the target before any work: a result already there is replaced only with `overwrite`
  (the `--overwrite` flag), and a folder holding files the command does not write is never replaced.
- `replacing_folder` / `replacing_file` write into a temporary sibling (`.NAME.partial`) that is renamed into place
  (`os.replace`) once complete, so an interruption (Ctrl-C, SIGKILL, a crash) leaves the old result or no result, never
  a mix. A folder is swapped in two renames (the old one moves to `.NAME.old` first), so during that instant it is
  briefly absent; the old copy is then deleted. Not protected: a power cut (nothing is fsync'ed).
- `remove_folder` deletes by first renaming, so a folder is either complete or gone; `remove_partials` sweeps the
  hidden leftovers of interrupted writes.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

PARTIAL_PATTERNS = (".*.partial", ".*.old", ".*.partial.*")  # the hidden names below, of folders and of files


def partial_path(target: Path, suffix: str = ".partial") -> Path:
    """The hidden sibling a result is written to before it takes `target`'s place (same folder: a rename is atomic)."""
    return target.parent / f".{target.name}{suffix}"


def existing_outputs(folder: Path, patterns: Sequence[str]) -> list[str]:
    """Names in `folder` matching any of `patterns` (globs), sorted; none when `folder` is not a folder."""
    if not Path(folder).is_dir():
        return []
    return sorted(p.name for p in Path(folder).iterdir() if any(fnmatch.fnmatch(p.name, g) for g in patterns))


def refuse_occupied(target, *, overwrite: bool, option: str, what: str, owned: Sequence[str] | None = None) -> None:
    """Raise `FileExistsError` naming `target` when writing it would replace something without `overwrite`.

    `owned=None`: `target` is a file. Otherwise it is a folder replaced as a whole, and `owned` are the globs of the
    names the command writes into it: a folder holding other names is refused even with `overwrite` (they are not
    ours to delete), an empty one is free.
    """
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if owned is None:
        if target.is_dir():
            raise FileExistsError(f"{option} {target} is a folder, not a file")
        if not overwrite:
            raise FileExistsError(f"{option} {target} already exists: pass --overwrite to replace it")
        return
    if not target.is_dir():
        raise FileExistsError(f"{option} {target} is a file, not a folder")
    names = sorted(p.name for p in target.iterdir())
    ours = [*owned, *PARTIAL_PATTERNS]  # leftovers of our own interrupted writes are ours too
    foreign = [name for name in names if not any(fnmatch.fnmatch(name, g) for g in ours)]
    if foreign:
        raise FileExistsError(f"{option} {target} holds {name_list(foreign)}, which is not part of a {what}: refusing "
                              f"to replace it (even with --overwrite); give a new or empty folder")
    if names and not overwrite:
        raise FileExistsError(f"{option} {target} already holds a {what} ({name_list(names)}): pass --overwrite to "
                              f"replace it")


def name_list(names: Sequence[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _no_wait() -> None:
    return None


@contextmanager
def replacing_folder(target, *, is_main: bool = True, wait: Callable[[], None] = _no_wait) -> Iterator[Path]:
    """Yield an empty temporary sibling of `target`; once the block completes it replaces `target`.

    Several processes may write into it (Accelerate's `save_state` writes one random-state file per rank): the main
    process alone creates, renames and deletes, and `wait` (`accelerator.wait_for_everyone`) orders the ranks around
    it. On an exception the partial folder is deleted and `target` is left as it was.
    """
    target = Path(target)
    partial = partial_path(target)
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)  # a leftover of an interrupted write
        partial.mkdir(parents=True)
    wait()
    try:
        yield partial
    except BaseException:
        if is_main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    wait()
    if is_main:
        _swap_in(partial, target)
    wait()


def _swap_in(partial: Path, target: Path) -> None:
    if not target.exists():
        os.replace(partial, target)
        return
    old = partial_path(target, ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old)


@contextmanager
def replacing_file(target) -> Iterator[Path]:
    """Yield a temporary sibling path of `target` (same suffix, so writers that infer the format from it work);
    once the block completes, the file written there replaces `target` in one rename."""
    target = Path(target)
    partial = target.parent / f".{target.stem}.partial{target.suffix}"
    try:
        yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_text(target, text: str) -> None:
    """`Path.write_text`, but a reader never sees a half-written file."""
    with replacing_file(target) as partial:
        partial.write_text(text, encoding="utf-8")


def remove_folder(target) -> None:
    """Delete `target` so that it is never seen half-deleted: renamed away first, then removed."""
    target = Path(target)
    if not target.exists():
        return
    doomed = partial_path(target, ".old")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(target, doomed)
    shutil.rmtree(doomed)


def remove_partials(folder) -> list[str]:
    """Delete the hidden leftovers of interrupted writes in `folder`; returns their names."""
    names = existing_outputs(Path(folder), PARTIAL_PATTERNS)
    for name in names:
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return names
