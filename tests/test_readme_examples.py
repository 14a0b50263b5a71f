"""The README's examples run as written.

Every fenced `bash` or `python` block right after a `<!-- doc-check -->` line runs, in the order of the file, in one
scratch folder that holds the repository's scripts (so `python train.py ...` and `data/alpha` mean what they say
there), offline, with the SmolLM2 backbone of the venv. `<!-- doc-check: hub -->` blocks talk to the loopback Hub
server instead of the network, where `ORG` is the token owner's organization. A block fails the test with its own
output; the blocks after it still run.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import LoopbackHub
from processes import run as run_bounded

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "dataset_scripts/README.md")
LINKED = ("train.py", "demo.py", "dataset_scripts", "configs")  # what the examples call by relative path
MARKER = re.compile(r"^<!-- doc-check(?:: (?P<mode>\w+))? -->$")
TOKEN = "hf_doccheck"
BLOCK_TIMEOUT = 300  # one block; pytest stops the whole test at 600 s


@dataclass
class Block:
    document: str
    line: int
    language: str
    mode: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def marked_blocks(document: str) -> list[Block]:
    """The blocks `document` marks for the doc-check; a marker not followed by a bash/python fence is an error."""
    lines = (REPO_ROOT / document).read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match:
            continue
        fence = lines[number + 1] if number + 1 < len(lines) else ""
        language = fence.removeprefix("```").strip()
        if not fence.startswith("```") or language not in ("bash", "python"):
            raise ValueError(f"{document}:{number + 1}: a doc-check marker must precede a ```bash or ```python block")
        end = next(i for i in range(number + 2, len(lines)) if lines[i].startswith("```"))
        blocks.append(Block(document, number + 2, language, match.group("mode") or "offline",
                            "\n".join(lines[number + 2:end])))
    return blocks


BLOCKS = [block for document in DOCUMENTS for block in marked_blocks(document)]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every marked block in order; block name -> (exit code, output)."""
    scratch = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (scratch / name).symlink_to(REPO_ROOT / name)
    hub = LoopbackHub(tokens={TOKEN: {"name": "doc-reader", "orgs": ["ORG"]}}).start()
    base = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    base.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                 "HF_HOME": str(scratch / ".hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "MPLBACKEND": "Agg",
                 "TOKENIZERS_PARALLELISM": "false"})
    results = {}
    try:
        for block in BLOCKS:
            env = dict(base, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
            if block.mode == "hub":
                env.update({"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
                            "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1",
                            "no_proxy": "127.0.0.1"})
            command = (["bash", "-euo", "pipefail", "-c", block.source] if block.language == "bash"
                       else [sys.executable, "-c", block.source])
            run = run_bounded(command, cwd=scratch, env=env, timeout=BLOCK_TIMEOUT)
            results[block.name] = (run.returncode, run.stdout + run.stderr)
    finally:
        hub.stop()
    return results


def test_the_readmes_mark_examples_to_run():
    assert {block.document for block in BLOCKS} >= {"README.md"}
    assert {block.mode for block in BLOCKS} <= {"offline", "hub"}


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_the_example_runs_as_written(outcomes, block):
    code, output = outcomes[block.name]
    assert code == 0, f"{block.name} exited {code}:\n{output[-4000:]}"
