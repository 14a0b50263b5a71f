"""A loopback, in-memory server that speaks enough of the Hugging Face Hub protocol for push and load round trips.

Only for tests. It binds 127.0.0.1 on an ephemeral port (never another interface), keeps everything in memory, and
implements the routes that huggingface_hub 2.x, transformers 5 and datasets 5 call for: creating repos and branches,
preupload + NDJSON commits (base64 regular files, `lfsFile` entries, deletions), the LFS batch API with upload and
verify actions, repo/revision info, tree listing, paths-info, refs, commit history, `resolve` downloads (HEAD/GET,
ranges) with `ETag` / `X-Repo-Commit` / `X-Linked-*` headers, card validation (`/api/validate-yaml`, checked with
huggingface_hub's own card classes) and `whoami-v2`.

Storage is git-like: every commit has its own sha and a full snapshot of the repo's files; a revision is a branch
name or a commit sha. It rejects what the Hub rejects, with the `X-Error-Code` headers the client maps to its
exceptions: an unknown repo (`RepoNotFound`, also for a private repo read without a token of its owner), an unknown
revision (`RevisionNotFound`), a missing file (`EntryNotFound`), a commit that references an LFS object never uploaded
(422), an LFS upload whose bytes do not match its oid, a stale `parentCommit` (412), writes without a valid token (401)
or outside the token owner's namespaces (403).

Every request is recorded in `server.requests` (method, path, headers without `Authorization`, body, status), so
tests can assert what the client sent; routes the server does not know are answered 404 and listed in
`server.unknown_routes`.
`GET /__stats` (test-only, not a Hub route) returns the number of requests served so far.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (
    ".safetensors", ".parquet", ".arrow", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".npy", ".npz",
    ".onnx", ".pkl", ".pickle", ".zip", ".tar", ".gz", ".zst", ".model", ".tflite",
)
REGULAR_MAX_BYTES = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """Git object id: of the content for a regular file, of the LFS pointer for an LFS file (as git stores it)."""
        return git_blob_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    files: dict  # path -> Blob (a full snapshot)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner: str
    created: str = field(default_factory=_now)
    branches: dict = field(default_factory=dict)  # name -> commit sha
    commits: dict = field(default_factory=dict)  # sha -> Commit
    lfs_objects: dict = field(default_factory=dict)  # sha256 -> bytes (uploaded, maybe not yet committed)

    def resolve(self, revision: str) -> Commit | None:
        revision = revision.removeprefix("refs/heads/")
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if HEX40.match(revision) and revision in self.commits:
            return self.commits[revision]
        return None


def new_commit(repo: Repo, parent: str | None, title: str, description: str, author: str, files: dict) -> Commit:
    """Record a commit (a full snapshot) in `repo`; its sha hashes the parent, the listing and a fresh uuid."""
    listing = "".join(f"{path}\0{blob.oid}\n" for path, blob in sorted(files.items()))
    sha = hashlib.sha1(f"{parent}\n{title}\n{listing}\n{uuid.uuid4()}".encode()).hexdigest()
    commit = Commit(sha, parent, title, description, author, _now(), files)
    repo.commits[sha] = commit
    return commit


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


class HubState:
    """Repos, tokens and the request log; shared by the handler threads under one lock."""

    def __init__(self, tokens: dict):
        self.tokens = dict(tokens)  # token -> {"name": user, "orgs": [...]}
        self.repos: dict = {}
        self.requests: list = []
        self.unknown_routes: list = []
        self.pending_uploads: dict = {}  # upload id -> (repo key, oid, size)
        self.lock = threading.RLock()
        self.counter = 0


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    # ------------------------------------------------------------------------------------------------ plumbing
    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def log_message(self, format, *args):  # noqa: A002 - never print (requests may carry secrets)
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None,
              head: bool = False, content_length: int | None = None):
        if getattr(self, "_record", None) is not None:
            self._record["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None, content_type: str = "application/json"):
        self._send(status, json.dumps(payload).encode(), content_type=content_type, headers=headers)

    def _handle(self, method: str):
        url = urlsplit(self.path)
        body = self._read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
        self._record = {
            "method": method,
            "path": self.path,
            "headers": {k: v for k, v in self.headers.items() if k.lower() != "authorization"},
            "body": body,
            "status": None,
        }
        with self.state.lock:
            self.state.counter += 1
            self.state.requests.append(self._record)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._route(method, parts, query, body)
        except HubError as error:
            headers = dict(error.headers)
            if error.code:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message.encode("ascii", "replace").decode()
            if method == "HEAD":
                self._send(error.status, b"", headers=headers, head=True)
            else:
                self._json(error.status, {"error": error.message, **error.extra}, headers=headers)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
            self._json(400, {"error": f"bad request: {error!r}"})

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    # -------------------------------------------------------------------------------------------------- routing
    def _route(self, method: str, parts: list, query: dict, body: bytes):
        if parts[:1] == ["__stats"]:
            return self._json(200, {"requests": self.state.counter})
        if parts[:1] == ["__lfs"] and len(parts) == 3:
            return self._lfs_transfer(method, parts[1], parts[2], body)
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body))
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(json.loads(body))
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(json.loads(body))
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, action = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                return self._repo_api(method, repo_type, repo_id, action, query, body)
        else:
            repo_type = "model"
            if parts[:1] in (["datasets"], ["spaces"]):
                repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(method, repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                if method == "POST":
                    return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}", json.loads(body))
        with self.state.lock:
            self.state.unknown_routes.append(f"{method} {self.path}")
        raise HubError(404, f"unknown route {method} /{'/'.join(parts)} (loopback test server)")

    def _repo_api(self, method, repo_type, repo_id, action, query, body):
        if not action and method == "GET":
            return self._info(repo_type, repo_id, "main")
        verb, args = action[0], action[1:]
        if verb == "revision" and len(args) == 1 and method == "GET":
            return self._info(repo_type, repo_id, args[0])
        if verb == "preupload" and len(args) == 1 and method == "POST":
            return self._preupload(repo_type, repo_id, args[0], json.loads(body), query)
        if verb == "commit" and len(args) == 1 and method == "POST":
            return self._commit(repo_type, repo_id, args[0], body, query)
        if verb == "tree" and args and method == "GET":
            return self._tree(repo_type, repo_id, args[0], "/".join(args[1:]), query)
        if verb == "paths-info" and len(args) == 1 and method == "POST":
            return self._paths_info(repo_type, repo_id, args[0], body)
        if verb == "refs" and not args and method == "GET":
            return self._refs(repo_type, repo_id)
        if verb == "commits" and len(args) == 1 and method == "GET":
            return self._commits(repo_type, repo_id, args[0])
        if verb == "branch" and len(args) == 1 and method == "POST":
            return self._create_branch(repo_type, repo_id, args[0], json.loads(body or b"{}"))
        if verb == "branch" and len(args) == 1 and method == "DELETE":
            return self._delete_branch(repo_type, repo_id, args[0])
        with self.state.lock:
            self.state.unknown_routes.append(f"{method} {self.path}")
        raise HubError(404, f"unknown route {method} {self.path} (loopback test server)")

    # --------------------------------------------------------------------------------------------------- access
    def _user(self) -> dict | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self.state.tokens.get(auth[len("Bearer "):].strip())

    def _writer(self, namespace: str) -> dict:
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if namespace not in (user["name"], *user.get("orgs", ())):
            raise HubError(403, f"You don't have the rights to write to namespace {namespace}")
        return user

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        with self.state.lock:
            repo = self.state.repos.get((repo_type, repo_id))
        user = self._user()
        namespaces = () if user is None else (user["name"], *user.get("orgs", ()))
        readable = repo is not None and (not repo.private or repo.repo_id.split("/")[0] in namespaces)
        if not readable:
            raise HubError(404, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound")
        if write:
            self._writer(repo_id.split("/")[0])
        return repo

    @staticmethod
    def _commit_of(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ---------------------------------------------------------------------------------------------- account/repos
    def _whoami(self):
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": org, "roleInOrg": "admin"} for org in user.get("orgs", ())]
        self._json(200, {"type": "user", "id": user["name"], "name": user["name"], "fullname": user["name"],
                         "orgs": orgs, "auth": {"type": "access_token",
                                                "accessToken": {"displayName": "loopback", "role": "write"}}})

    def _create_repo(self, payload: dict):
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        namespace = payload.get("organization") or user["name"]
        repo_type = payload.get("type") or "model"
        name = payload["name"]
        if repo_type not in URL_PREFIX or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name or ""):
            raise HubError(400, f"invalid repo type {repo_type!r} or name {name!r}")
        self._writer(namespace)
        repo_id = f"{namespace}/{name}"
        private = payload.get("private", payload.get("visibility") == "private") or False
        with self.state.lock:
            if (repo_type, repo_id) in self.state.repos:
                raise HubError(409, f"You already created this {repo_type} repo",
                               extra={"url": f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"})
            repo = Repo(repo_type, repo_id, bool(private), user["name"])
            initial = new_commit(repo, None, "initial commit", "", "system",
                                       {".gitattributes": Blob(GITATTRIBUTES, lfs=False)})
            repo.branches["main"] = initial.sha
            self.state.repos[(repo_type, repo_id)] = repo
        self._json(200, {"url": f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}", "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or (self._user() or {}).get('name')}/{payload['name']}"
        self._repo(repo_type, repo_id, write=True)
        with self.state.lock:
            del self.state.repos[(repo_type, repo_id)]
        self._json(200, {})

    def _create_branch(self, repo_type, repo_id, branch, payload):
        repo = self._repo(repo_type, repo_id, write=True)
        start = self._commit_of(repo, payload.get("startingPoint") or "main")
        with self.state.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            if HEX40.match(branch):
                raise HubError(400, f"invalid branch name {branch!r}")
            repo.branches[branch] = start.sha
        self._json(200, {})

    def _delete_branch(self, repo_type, repo_id, branch):
        repo = self._repo(repo_type, repo_id, write=True)
        with self.state.lock:
            if branch not in repo.branches or branch == "main":
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo.branches[branch]
        self._json(200, {})

    # ------------------------------------------------------------------------------------------------ read APIs
    def _info(self, repo_type, repo_id, revision):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            "usedStorage": sum(blob.size for blob in commit.files.values()),
        }
        card = commit.files.get("README.md")
        if card is not None:
            import yaml

            text = card.data.decode("utf-8", "replace")
            match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
            if match:
                try:
                    info["cardData"] = yaml.safe_load(match.group(1)) or {}
                except yaml.YAMLError:
                    pass
        if repo_type == "model":
            info["modelId"] = repo_id
            config = commit.files.get("config.json")
            if config is not None:
                try:
                    info["config"] = {k: v for k, v in json.loads(config.data).items()
                                      if k in ("architectures", "model_type", "auto_map")}
                except ValueError:
                    pass
        self._json(200, info)

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict | None:
        blob = commit.files.get(path)
        if blob is not None:
            entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
        elif path == "" or any(p.startswith(path + "/") for p in commit.files):
            inside = sorted((p, b.oid) for p, b in commit.files.items() if p.startswith(path + "/") or path == "")
            entry = {"type": "directory", "oid": hashlib.sha1(repr(inside).encode()).hexdigest(), "size": 0,
                     "path": path}
        else:
            return None
        if expand:
            last = self._last_commit(repo, commit, path)
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry

    @staticmethod
    def _last_commit(repo: Repo, commit: Commit, path: str) -> Commit:
        def snapshot(c):
            return sorted((p, b.oid) for p, b in c.files.items() if p == path or p.startswith(path + "/"))

        current = commit
        while current.parent is not None and snapshot(repo.commits[current.parent]) == snapshot(current):
            current = repo.commits[current.parent]
        return current

    def _tree(self, repo_type, repo_id, revision, path, query):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        path = path.strip("/")
        expand = query.get("expand", "").lower() in ("1", "true")
        recursive = query.get("recursive", "").lower() in ("1", "true")
        root = self._entry(repo, commit, path, False)
        if root is None or (path and root["type"] != "directory"):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound",
                           {"X-Repo-Commit": commit.sha})
        prefix = f"{path}/" if path else ""
        names = set()
        for file_path in commit.files:
            if not file_path.startswith(prefix):
                continue
            pieces = file_path[len(prefix):].split("/")
            for depth in range(1, len(pieces) + 1 if recursive else 2):
                names.add(prefix + "/".join(pieces[:depth]))
        entries = [self._entry(repo, commit, name, expand) for name in sorted(names)]
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        self._json(200, entries)

    def _paths_info(self, repo_type, repo_id, revision, body):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(body)
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[-1].lower() in ("1", "true")
        entries = [self._entry(repo, commit, p.strip("/"), expand) for p in paths]
        self._json(200, [e for e in entries if e is not None])

    def _refs(self, repo_type, repo_id):
        repo = self._repo(repo_type, repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in sorted(repo.branches.items())]
        self._json(200, {"branches": branches, "converts": [], "tags": []})

    def _commits(self, repo_type, repo_id, revision):
        repo = self._repo(repo_type, repo_id)
        commit, history = self._commit_of(repo, revision), []
        while commit is not None:
            history.append({"id": commit.sha, "title": commit.title, "message": commit.description,
                            "authors": [{"user": commit.author}], "date": commit.date})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, history)

    def _resolve(self, method, repo_type, repo_id, revision, path):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path} at {revision}", "EntryNotFound",
                           {"X-Repo-Commit": commit.sha})
        headers = {"ETag": f'"{blob.etag}"', "X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        data, status = blob.data, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and method == "GET" and (match.group(1) or match.group(2)):
            start = int(match.group(1)) if match.group(1) else max(0, blob.size - int(match.group(2)))
            end = int(match.group(2)) if match.group(1) and match.group(2) else blob.size - 1
            end = min(end, blob.size - 1)
            if start >= blob.size or start > end:
                raise HubError(416, f"range {self.headers['Range']} outside {blob.size} bytes",
                               headers={"Content-Range": f"bytes */{blob.size}"})
            data, status = blob.data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        self._send(status, data, content_type="application/octet-stream", headers=headers, head=method == "HEAD",
                   content_length=len(data))

    # ------------------------------------------------------------------------------------------------ uploads
    def _preupload(self, repo_type, repo_id, revision, payload, query):
        repo = self._repo(repo_type, repo_id, write=True)
        if query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the loopback test server")
        commit = self._commit_of(repo, revision)
        files = []
        for item in payload["files"]:
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            lfs = path.lower().endswith(LFS_SUFFIXES) or size > REGULAR_MAX_BYTES or b"\0" in sample
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.sha})

    def _lfs_batch(self, repo_type, repo_id, payload):
        repo = self._repo(repo_type, repo_id, write=True)
        if payload.get("operation") != "upload":
            raise HubError(400, f"LFS operation {payload.get('operation')!r} is not supported here")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "only the basic LFS transfer is supported")
        objects = []
        for obj in payload["objects"]:
            oid, size = str(obj["oid"]), int(obj["size"])
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid"}})
                continue
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_objects:
                upload_id = uuid.uuid4().hex
                with self.state.lock:
                    self.state.pending_uploads[upload_id] = ((repo_type, repo_id), oid, size)
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/__lfs/upload/{upload_id}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/__lfs/verify/{upload_id}", "header": {}},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_transfer(self, method, kind, upload_id, body):
        with self.state.lock:
            pending = self.state.pending_uploads.get(upload_id)
        if pending is None:
            raise HubError(404, "unknown or expired LFS upload URL")
        key, oid, size = pending
        repo = self.state.repos[key]
        if kind == "upload" and method == "PUT":
            if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, f"uploaded bytes do not match oid {oid} / size {size}")
            with self.state.lock:
                repo.lfs_objects[oid] = body
            return self._send(200, b"")
        if kind == "verify" and method == "POST":
            claim = json.loads(body)
            if claim.get("oid") != oid or int(claim.get("size", -1)) != size or oid not in repo.lfs_objects:
                raise HubError(404, f"LFS object {oid} was not uploaded")
            return self._json(200, {"message": "ok"})
        raise HubError(405, f"{method} not allowed on an LFS {kind} URL")

    def _commit(self, repo_type, repo_id, revision, body, query):
        repo = self._repo(repo_type, repo_id, write=True)
        user = self._user()
        if query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the loopback test server")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit payload starts with a header line")
        header = lines[0]["value"]
        with self.state.lock:
            branch = revision.removeprefix("refs/heads/")
            if branch not in repo.branches:
                if repo.resolve(revision) is not None:
                    raise HubError(400, f"cannot commit to {revision}: not a branch")
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            if header.get("parentCommit") and header["parentCommit"] != head.sha:
                raise HubError(412, f"A commit has happened since {header['parentCommit']}. Please refresh and retry.")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value.get("path", "")
                if path.startswith("/") or ".." in path.split("/") or path.startswith(".git/") or not path:
                    raise HubError(400, f"invalid path in repo: {path!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                    files[path] = Blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    oid = value.get("oid")
                    data = repo.lfs_objects.get(oid)
                    if data is None:
                        raise HubError(422, f"Your push was rejected: '{path}' points to LFS object {oid}, which was "
                                            f"never uploaded")
                    if "size" in value and int(value["size"]) != len(data):
                        raise HubError(422, f"'{path}': LFS size {value['size']} does not match the stored object")
                    files[path] = Blob(data, lfs=True)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"cannot delete {path}: not in {revision}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    folder = path.rstrip("/") + "/"
                    for existing in [p for p in files if p.startswith(folder)]:
                        del files[existing]
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            commit = new_commit(repo, head.sha, header.get("summary") or "update", header.get("description", ""),
                                      user["name"], files)
            repo.branches[branch] = commit.sha
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.sha}"
        self._json(200, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    # --------------------------------------------------------------------------------------------------- cards
    def _validate_yaml(self, payload: dict):
        """Parse the front matter and check it with huggingface_hub's own card data classes (model-index included)."""
        import yaml
        from huggingface_hub import DatasetCardData, ModelCardData, SpaceCardData
        from huggingface_hub.repocard_data import model_index_to_eval_results

        content, repo_type = payload.get("content", ""), payload.get("repoType") or "model"
        match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if not match:
            return self._json(200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        errors = []
        try:
            data = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as error:
            return self._json(400, {"errors": [{"message": f"YAML could not be parsed: {error}"}]})
        if not isinstance(data, dict):
            return self._json(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
        for key in ("tags", "datasets", "metrics", "language"):
            value = data.get(key)
            if value is not None and not (isinstance(value, str) or
                                          (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                errors.append(f'"{key}" must be a string or a list of strings')
        if "license" in data and not isinstance(data["license"], str):
            errors.append('"license" must be a string')
        if repo_type == "model" and "model-index" in data:
            errors += _model_index_errors(data["model-index"])
            if not errors:
                try:
                    model_index_to_eval_results(data["model-index"])
                except Exception as error:  # noqa: BLE001 - any failure of the official parser is a card error
                    errors.append(f'"model-index" is not valid: {error!r}')
        if repo_type == "dataset" and "configs" in data:
            configs = data["configs"]
            if not isinstance(configs, list) or not all(isinstance(c, dict) and isinstance(c.get("config_name"), str)
                                                        for c in configs):
                errors.append('"configs" must be a list of mappings with a "config_name"')
        if not errors:
            card_data_class = {"model": ModelCardData, "dataset": DatasetCardData, "space": SpaceCardData}[repo_type]
            try:
                card_data_class(**data, ignore_metadata_errors=False)
            except Exception as error:  # noqa: BLE001
                errors.append(f"metadata rejected by {card_data_class.__name__}: {error}")
        if errors:
            return self._json(400, {"errors": [{"message": message} for message in errors]})
        return self._json(200, {"warnings": []})


def _model_index_errors(model_index) -> list:
    errors = []
    if not isinstance(model_index, list) or not model_index:
        return ['"model-index" must be a non-empty list']
    for i, model in enumerate(model_index):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f'"model-index[{i}].name" must be a string')
            continue
        results = model.get("results")
        if not isinstance(results, list) or not results:
            errors.append(f'"model-index[{i}].results" must be a non-empty list')
            continue
        for j, result in enumerate(results):
            where = f"model-index[{i}].results[{j}]"
            if not isinstance(result, dict):
                errors.append(f'"{where}" must be a mapping')
                continue
            if not isinstance((result.get("task") or {}).get("type"), str):
                errors.append(f'"{where}.task.type" must be a string')
            dataset = result.get("dataset") or {}
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                errors.append(f'"{where}.dataset" needs a string "type" and "name"')
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f'"{where}.metrics" must be a non-empty list')
                continue
            for k, metric in enumerate(metrics):
                value = metric.get("value") if isinstance(metric, dict) else None
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str):
                    errors.append(f'"{where}.metrics[{k}].type" must be a string')
                elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    errors.append(f'"{where}.metrics[{k}].value" must be a number or a string')
                elif isinstance(value, float) and value != value:
                    errors.append(f'"{where}.metrics[{k}].value" is NaN')
    return errors


class LoopbackHub:
    """`with LoopbackHub(tokens={TOKEN: {"name": "alice", "orgs": ["org"]}}) as hub: ... hub.endpoint`."""

    def __init__(self, tokens: dict | None = None):
        self.state = HubState(tokens or {})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        host, port = self.httpd.server_address[:2]
        self.endpoint = self.httpd.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> "LoopbackHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests (direct access to the in-memory storage) --
    @property
    def requests(self) -> list:
        return self.state.requests

    @property
    def unknown_routes(self) -> list:
        return self.state.unknown_routes

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.state.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict:
        commit = self.repo(repo_id, repo_type).resolve(revision)
        return {path: blob.data for path, blob in commit.files.items()}

    def put_files(self, repo_id: str, files: dict, *, revision: str = "main", repo_type: str = "model",
                  delete: tuple = (), title: str = "edit") -> str:
        """Commit bytes straight into storage (to stage damaged repos: truncated or missing files); returns the sha."""
        repo = self.repo(repo_id, repo_type)
        with self.state.lock:
            head = repo.commits[repo.branches[revision]]
            snapshot = {p: b for p, b in head.files.items() if p not in delete}
            for path, data in files.items():
                lfs = path.lower().endswith(LFS_SUFFIXES)
                snapshot[path] = Blob(data, lfs=lfs)
                if lfs:
                    repo.lfs_objects[hashlib.sha256(data).hexdigest()] = data
            commit = new_commit(repo, head.sha, title, "", "test", snapshot)
            repo.branches[revision] = commit.sha
        return commit.sha


if __name__ == "__main__":  # manual use: python tests/hub_server.py (loopback only; Ctrl-C stops it)
    import sys

    hub = LoopbackHub(tokens={sys.argv[1] if len(sys.argv) > 1 else "hf_loopback": {"name": "me", "orgs": ["org"]}})
    hub.start()
    print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
