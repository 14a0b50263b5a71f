"""Writing results so that nothing finished is replaced by accident or left half-written.

Every command that writes a result goes through here:

- `refuse_occupied` checks the target before any work: a result already there is replaced only with `overwrite`
  (the `--overwrite` flag), and a folder holding files the command does not write is never replaced.
- `replacing_folder` / `replacing_file` write into a temporary sibling (`.NAME.partial`) that is renamed into place
  (`os.replace`) once complete, so an interruption (Ctrl-C, SIGKILL, a crash) leaves the old result or no result, never
  a mix. A folder is swapped in two renames (the old one moves to `.NAME.old` first), so during that instant it is
  briefly absent; the old copy is then deleted. Not protected: a power cut (nothing is fsync'ed).
- A write that fails because the disk (or the user's quota) is full comes out of `replacing_folder` /
  `replacing_file` as one `NoSpaceError` naming the target and the space left, whichever writer failed (Python's own
  files, pyarrow, safetensors, torch.save); the partial write is deleted and the previous result stays.
- `remove_folder` deletes by first renaming, so a folder is either complete or gone; `remove_partials` sweeps the
  hidden leftovers of interrupted writes.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

PARTIAL_PATTERNS = (".*.partial", ".*.old", ".*.partial.*")  # the hidden names below, of folders and of files
# torch.save into a path reports a failed write as a RuntimeError that names no cause ("unexpected pos 640 vs 598"):
# one raised while the filesystem has less than this left is taken for a full disk.
NEARLY_FULL_BYTES = 1 << 20


class NoSpaceError(OSError):
    """A result that did not fit on its disk: `OSError(ENOSPC)` naming the target, the space left and where."""

    def __init__(self, target: Path, free: int | None, mount: Path, quota: bool = False):
        reason = "disk quota exceeded" if quota else "no space left on device"
        left = "unknown space" if free is None else byte_size(free)
        super().__init__(errno.ENOSPC, f"{reason} writing {target} ({left} free on {mount})")

    def __str__(self) -> str:  # OSError's would prefix "[Errno 28]"
        return self.strerror


def byte_size(count: int) -> str:
    """A byte count for people: `0 B`, `812.3 kB`, `1.2 GB`."""
    size, unit = float(count), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it was raised from or while handling (a writer may wrap the OSError)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _says_no_space(error: BaseException) -> str | None:
    """Whether `error` is a write refused for lack of space ("space") or quota ("quota"): an OSError with ENOSPC /
    EDQUOT, or any error whose message carries its text (safetensors: "I/O error: No space left on device (os error
    28)")."""
    for code, kind in ((errno.EDQUOT, "quota"), (errno.ENOSPC, "space")):
        if (isinstance(error, OSError) and error.errno == code) or os.strerror(code) in str(error):
            return kind
    return None


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def no_space_error(error: BaseException, target) -> NoSpaceError | None:
    """The `NoSpaceError` that `error`, raised while writing `target`, amounts to; None when it is something else.

    Call it before the partial write is deleted: the space left is measured then (a writer that names no cause is
    recognised by the full filesystem it leaves)."""
    if isinstance(error, NoSpaceError) or not isinstance(error, Exception):
        return None  # already said (an inner result's), or an interruption
    target = Path(target)
    folder = next((p for p in (target.parent, *target.parent.parents) if p.is_dir()), Path("/"))
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    kinds = {kind for kind in map(_says_no_space, _causes(error)) if kind}
    if not kinds and not (isinstance(error, RuntimeError) and free is not None and free < NEARLY_FULL_BYTES):
        return None
    return NoSpaceError(target, free, _mount_point(folder), quota=kinds == {"quota"})


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
    it. On an exception the partial folder is deleted and `target` is left as it was; a disk found full is said as
    one `NoSpaceError`.
    """
    target = Path(target)
    partial = partial_path(target)
    try:
        if is_main:
            shutil.rmtree(partial, ignore_errors=True)  # a leftover of an interrupted write
            partial.mkdir(parents=True)
        wait()
        yield partial
    except BaseException as error:
        no_space = no_space_error(error, target)
        if is_main:
            shutil.rmtree(partial, ignore_errors=True)
        if no_space is not None:
            raise no_space from error
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
    once the block completes, the file written there replaces `target` in one rename. On an exception `target` is
    left as it was; a disk found full is said as one `NoSpaceError`."""
    target = Path(target)
    partial = target.parent / f".{target.stem}.partial{target.suffix}"
    try:
        yield partial
        os.replace(partial, target)
    except Exception as error:
        no_space = no_space_error(error, target)
        if no_space is not None:
            raise no_space from error
        raise
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
