"""Every process a test starts, bounded: its own timeout (shorter than pytest's), every Python stack dumped when it
runs out, and nothing left behind, even processes that started sessions of their own.

Torch's launcher starts each rank with `start_new_session=True`, so killing the launcher's process group misses the
ranks, and a rank that outlives a failed test is an orphan. Here each started command carries a marker in its
environment, which every descendant inherits; the whole marked set is signalled, whoever its parent is now.

`PYTHONFAULTHANDLER=1` makes each Python process print the stacks of all its threads on SIGABRT: on a timeout every
marked process gets one, so a hang is diagnosed from the test's own failure message (CI's log).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Sequence

import psutil
import pytest

BASE_ENV = dict(os.environ)  # as conftest left it at collection: what an earlier test sets never reaches a child
MARKER = "NEXTLOCLLM_TEST_PROCESS"
DEFAULT_TIMEOUT_S = 300  # pytest's own timeout is 600 s (setup.cfg): a bounded test fails first, with the stacks
STACKS_GRACE_S = 5.0  # time for every process to write its stacks after SIGABRT
SHOWN_OUTPUT = 30_000  # characters of stderr kept in a failure message


def marked(token: str) -> list[psutil.Process]:
    """The live processes started under `token` (by any parent: orphans included)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == token and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def signal_all(processes: Sequence[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def kill_marked(token: str) -> int:
    """SIGKILL every process started under `token` and wait for them; returns how many were still alive."""
    alive = marked(token)
    signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    return len(alive)


@contextmanager
def spawned(command: Sequence[str], *, env: dict | None = None, **popen) -> Iterator[subprocess.Popen]:
    """`subprocess.Popen(command)` in a session of its own, marked; on leaving, every marked process is killed.
    `env`: the whole environment (default: `BASE_ENV`)."""
    token = uuid.uuid4().hex
    env = {**(BASE_ENV if env is None else env), MARKER: token, "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, env=env, start_new_session=True, **popen)
    process.marker = token
    try:
        yield process
    finally:
        kill_marked(token)
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def dump_stacks_and_kill(process: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT to every marked process (each Python one prints all its threads' stacks), then SIGKILL to what is
    left; returns the output gathered."""
    signal_all(marked(process.marker), signal.SIGABRT)
    deadline = time.monotonic() + STACKS_GRACE_S
    while marked(process.marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_marked(process.marker)
    out, err = process.communicate(timeout=30)
    return out or "", err or ""


def run(command: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, env: dict | None = None, cwd=None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True)`, bounded: past `timeout` seconds the test fails with
    the stacks of every process the command started, and none of them survives."""
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    with spawned(command, env=env, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True) as process:
        try:
            out, err = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            out, err = dump_stacks_and_kill(process)
            pytest.fail(f"{' '.join(map(str, command))[:500]}\nran past its {timeout:.0f} s; every process's stacks "
                        f"(stderr tail):\n{err[-SHOWN_OUTPUT:]}\nstdout tail:\n{out[-4000:]}", pytrace=False)
    return subprocess.CompletedProcess(command, process.returncode, out, err)
