"""The checks every Hub write goes through, kept apart from the pushes themselves (`hub.py`) so that a command can
run them before its real work (train.py refuses an occupied `--hub_model_id` before training, the city builder an
occupied city before building).

The token comes from `token=`, `HF_TOKEN` or `hf auth login`; it is never printed or logged, and a file holding it is
never uploaded. huggingface_hub loads only when a check needs it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from .outputs import name_list


def resolve_token(token: str | None) -> str | None:
    """The token to push with: `token` when given, else huggingface_hub's (`HF_TOKEN`, then `hf auth login`)."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def check_repo_id(repo_id: str) -> str:
    """`repo_id` itself if it names a repo (ORG/NAME); a `ValueError` before any request otherwise."""
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ValueError(f"repo_id must look like ORG/NAME, got {repo_id!r}")
    return repo_id


def refuse_token_in(files: Mapping[str, bytes | Path], token: str | None) -> None:
    """Refuse to upload any file holding the token (only its name is reported, never the token).

    Text files are read whole; of a safetensors file only the JSON header (metadata) is read, weights are numbers.
    """
    if not token:
        return
    needle = token.encode()
    for path_in_repo, content in files.items():
        if isinstance(content, bytes):
            data = content
        elif content.suffix == ".safetensors":
            with open(content, "rb") as f:
                header_size = int.from_bytes(f.read(8), "little")
                data = f.read(min(header_size, 100 * 1024 * 1024))
        else:
            data = content.read_bytes()
        if needle in data:
            raise ValueError(f"refusing to push: {path_in_repo} contains the Hub access token")


def hub_api(token: str | None):
    """An `HfApi` for `token` (huggingface_hub imported only here, when a push or check needs it)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def refuse_occupied_repo(repo_id: str, *, repo_type: str, revision: str | None, overwrite: bool, what: str,
                         prefix: str = "", token: str | None = None) -> None:
    """Refuse, before any upload, to push where a result already is (files under `prefix` at `revision`), unless
    `overwrite`. A repo or branch that does not exist yet is free; `.gitattributes` (made with every repo) is not a
    result."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if overwrite:
        return
    try:
        files = hub_api(resolve_token(token)).list_repo_files(repo_id, repo_type=repo_type, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return
    taken = sorted(f for f in files if f != ".gitattributes" and f.startswith(prefix))
    if taken:
        raise FileExistsError(f"{repo_type} repo {repo_id} (revision {revision or 'main'}) already holds {what} "
                              f"({name_list(taken)}): pass --overwrite to replace it")


def refuse_occupied_city(repo_id: str, city: str, *, revision: str | None, overwrite: bool,
                         token: str | None = None) -> None:
    """`refuse_occupied_repo` for one city (config) of a dataset repo."""
    refuse_occupied_repo(repo_id, repo_type="dataset", revision=revision, overwrite=overwrite,
                         what=f"city {city!r}", prefix=f"{city}/", token=token)


__all__ = ["resolve_token", "check_repo_id", "refuse_token_in", "hub_api", "refuse_occupied_repo",
           "refuse_occupied_city"]
