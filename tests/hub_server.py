"""An in-memory fake Hugging Face Hub that speaks enough of the real HTTP protocol for the real clients.

`FakeHub` runs a stdlib `ThreadingHTTPServer` on 127.0.0.1 (port 0 by default) and keeps every repository in
memory as a chain of immutable commit snapshots, so `huggingface_hub` (`HfApi`, `hf_hub_download`,
`snapshot_download`, `ModelCard`), transformers `push_to_hub`/`from_pretrained` and peft
`push_to_hub`/`PeftModel.from_pretrained` round-trip byte-exactly against it. Nothing leaves the loopback interface.

Endpoints (`{type}` is `models`, `datasets` or `spaces`; `{rev}` is a branch name, `refs/heads/<branch>` or a full
40-hex commit sha, URL-quoted by the client):

* `GET /api/whoami-v2`, `GET /api/agent-harnesses` (empty registry)
* `POST /api/repos/create` (`visibility`/`private`, 409 if it exists), `DELETE /api/repos/delete`
* `POST /api/validate-yaml` (400 when the front matter is not a YAML mapping)
* `GET /api/{type}/{ns}/{name}[/revision/{rev}]` (`sha`, `siblings`, `private`, `cardData`, `tags`, ...)
* `GET /api/{type}/{ns}/{name}/tree/{rev}[/{path}]` (`recursive`), `POST .../paths-info/{rev}`
* `GET /api/{type}/{ns}/{name}/refs`, `GET .../commits/{rev}`
* `POST /api/{type}/{ns}/{name}/branch/{branch}` (`startingPoint`), `DELETE .../branch/{branch}`
* `POST /api/{type}/{ns}/{name}/preupload/{rev}` (always `"uploadMode": "regular"`, with the git blob oid of an
  identical existing file so the client skips no-op uploads)
* `POST /api/{type}/{ns}/{name}/commit/{rev}` (NDJSON `header` / `file` / `deletedFile` / `deletedFolder`,
  `parentCommit` checked, 412 when stale; `create_pr` and `lfsFile` answer 400)
* `HEAD|GET /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}` (`X-Repo-Commit`, `ETag`, `Content-Length`,
  single `Range`)

Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) and `X-Error-Message`, which
`huggingface_hub.utils.hf_raise_for_status` maps to `RepositoryNotFoundError`, `RevisionNotFoundError` and
`RemoteEntryNotFoundError`.

Auth, modelled on the real Hub:

* an `Authorization: Bearer <token>` with an unknown token → 401 "Invalid credentials in Authorization header" on
  any route (the client raises a plain `HfHubHTTPError`, not `RepositoryNotFoundError`);
* a missing repo, or a private repo without a valid token → `RepoNotFound`, status 401 for anonymous requests and
  404 for authenticated ones (the Hub never reveals that a private repo exists; the client turns both into
  `RepositoryNotFoundError` — `GatedRepoError` is only for `X-Error-Code: GatedRepo`, which this Hub never sends);
* writes: anonymous → 401 "Invalid username or password." (what the real Hub answers), a read-only token → 403;
* every valid token can read all repos and, when it has write access, write to any namespace (single tenant).

Fault injection: `FakeHub.fail_next(endpoint, mode=...)` queues a fault for the next request(s) to a named endpoint
(`"commit"`, `"preupload"`, `"resolve"`, ...): `mode="disconnect"` reads half of the request body and drops the
connection without answering (an interrupted upload), `mode="status"` answers `status` (default 500). A faulted
commit never changes the repo. `FakeHub.requests` logs every request as a `LoggedRequest` (method, path, query,
endpoint, whether an Authorization header was present — never the token itself — and the status sent).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


WRITE_TOKEN = "hf_fake_write_token"
READ_TOKEN = "hf_fake_read_token"
DEFAULT_USER = "tester"
MAX_BODY_BYTES = 1 << 30
HANDLER_TIMEOUT_S = 30.0

TYPE_SEGMENTS = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
INITIAL_GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in ("bin", "gguf", "h5", "npz", "pt", "safetensors")
).encode()
FaultMode = Literal["disconnect", "status"]


class HubError(Exception):
    """An HTTP error answer: status, message (`X-Error-Message`), optional `X-Error-Code` and extra body fields."""

    def __init__(
        self, status: int, message: str, error_code: str | None = None, headers: dict | None = None, **extra: Any
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}
        self.extra = extra


@dataclass(frozen=True)
class TokenInfo:
    """Who a token belongs to and whether it may write."""

    user: str = DEFAULT_USER
    can_write: bool = True


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot of a repository's files."""

    oid: str
    title: str
    message: str
    author: str
    date: str
    parents: tuple[str, ...]
    files: dict[str, bytes]


@dataclass
class Repo:
    """A repository: its branches (name → commit oid) and every commit ever made."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """The commit a branch name, `refs/heads/<branch>` or full commit sha points at."""
        branch = revision.removeprefix("refs/heads/")
        if branch in self.branches:
            return self.commits[self.branches[branch]]
        if revision in self.commits:
            return self.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def branch_head(self, branch: str) -> Commit:
        """The head commit of a branch (commits can only go to branches)."""
        name = branch.removeprefix("refs/heads/")
        if name not in self.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return self.commits[self.branches[name]]


@dataclass
class LoggedRequest:
    """One request as seen by the server (the token itself is never stored)."""

    method: str
    path: str
    query: str
    endpoint: str
    has_auth: bool
    status: int | None = None


@dataclass
class Fault:
    """A queued failure for the next request to `endpoint`."""

    endpoint: str
    mode: FaultMode
    status: int = 500


@dataclass
class Request:
    """A routed request: path parameters, query, body and the caller's identity."""

    method: str
    params: dict[str, str]
    query: dict[str, list[str]]
    body: bytes
    token: TokenInfo | None
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body parsed as JSON (`{}` when empty)."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from error

    def flag(self, name: str) -> bool:
        """A boolean query parameter (`true`, `True`, `1`)."""
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")


@dataclass
class Response:
    """What to send back: status, headers and body bytes."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, payload: Any, status: int = 200) -> Response:
        """A JSON response."""
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of `data` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    """The current UTC time in the Hub's ISO format."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _front_matter(readme: bytes | None) -> dict:
    """The YAML front matter of a README as a dict ({} when absent or invalid)."""
    text = (readme or b"").decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


class FakeHub:
    """The fake Hub: in-memory repos, tokens, a request log, fault injection and the HTTP server around them."""

    def __init__(self, tokens: dict[str, TokenInfo] | None = None, host: str = "127.0.0.1", port: int = 0):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fake Hub only listens on the loopback interface")
        self.tokens = dict(tokens) if tokens is not None else default_tokens()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = itertools.count()

    # ----------------------------------------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """The endpoint to use as `HF_ENDPOINT`."""
        if self._server is None:
            raise RuntimeError("the fake Hub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        """Bind the socket and serve in a daemon thread."""
        server = ThreadingHTTPServer(self._address, _HubHandler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------- test conveniences
    def fail_next(self, endpoint: str = "commit", mode: FaultMode = "disconnect", status: int = 500, times: int = 1):
        """Make the next `times` requests to `endpoint` drop the connection mid-body or answer `status`."""
        with self.lock:
            self.faults.extend(Fault(endpoint, mode, status) for _ in range(times))

    def clear_log(self) -> None:
        """Forget the logged requests."""
        with self.lock:
            self.requests.clear()

    def requests_to(self, endpoint: str) -> list[LoggedRequest]:
        """The logged requests to one endpoint name."""
        with self.lock:
            return [request for request in self.requests if request.endpoint == endpoint]

    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """A repo by id (KeyError when absent)."""
        with self.lock:
            return self.repos[(repo_type, repo_id)]

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """The bytes of a file at a revision."""
        with self.lock:
            return self.get_repo(repo_id, repo_type).resolve(revision).files[path]

    def seed_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False, repo_type: str = "model"):
        """Create a repo with one commit holding `files` (bypasses HTTP and auth)."""
        with self.lock:
            repo = self.create_repo_record(repo_type, repo_id, private)
            self.add_commit(repo, "main", dict(repo.branch_head("main").files) | files, "Seed files", "", DEFAULT_USER)
            return repo

    # ---------------------------------------------------------------------------------------- state changes
    def create_repo_record(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        """Register a new repo whose `main` holds an initial `.gitattributes` commit."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            repo = Repo(repo_type, repo_id, private, _now())
            self.repos[(repo_type, repo_id)] = repo
            self.add_commit(repo, "main", {".gitattributes": INITIAL_GITATTRIBUTES}, "initial commit", "", "system")
            return repo

    def add_commit(self, repo: Repo, branch: str, files: dict[str, bytes], title: str, message: str, author: str):
        """Record a commit with the full file snapshot `files` on `branch` and return it."""
        with self.lock:
            parent = repo.branches.get(branch)
            seed = f"{repo.repo_id}\0{branch}\0{parent}\0{title}\0{next(self._counter)}\0{_now()}".encode()
            digest = hashlib.sha1(seed + b"".join(git_blob_oid(data).encode() for data in files.values()))
            parents = (parent,) if parent else ()
            commit = Commit(digest.hexdigest(), title, message, author, _now(), parents, dict(files))
            repo.commits[commit.oid] = commit
            repo.branches[branch] = commit.oid
            return commit

    def take_fault(self, endpoint: str) -> Fault | None:
        """Pop the first queued fault for `endpoint`, if any."""
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.endpoint == endpoint:
                    return self.faults.pop(index)
        return None

    def token_info(self, authorization: str | None) -> TokenInfo | None:
        """The identity behind an Authorization header (401 for an unknown token)."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    # ------------------------------------------------------------------------------------------- access rules
    def readable_repo(self, request: Request) -> Repo:
        """The repo named by the request, hidden (RepoNotFound) when missing or private without a valid token."""
        repo = self.repos.get((request.params["type"], request.params["repo"]))
        if repo is None or (repo.private and request.token is None):
            status = 404 if request.token is not None else 401
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def writable_repo(self, request: Request) -> Repo:
        """The repo named by the request, when the caller may write to it."""
        repo = self.readable_repo(request)
        require_write(request)
        return repo

    def repo_url(self, repo: Repo) -> str:
        """The web URL of a repo."""
        return f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"


def default_tokens() -> dict[str, TokenInfo]:
    """One write token and one read-only token for the default user."""
    return {WRITE_TOKEN: TokenInfo(DEFAULT_USER, True), READ_TOKEN: TokenInfo(DEFAULT_USER, False)}


def require_write(request: Request) -> TokenInfo:
    """The caller's identity when it may write: 401 when anonymous, 403 with a read-only token."""
    if request.token is None:
        raise HubError(401, "Invalid username or password.")
    if not request.token.can_write:
        raise HubError(403, "You don't have the rights to write to this repository with a read-only token")
    return request.token


# ------------------------------------------------------------------------------------------------ handlers
def handle_whoami(hub: FakeHub, request: Request) -> Response:
    """`GET /api/whoami-v2`."""
    if request.token is None:
        raise HubError(401, "Invalid username or password.")
    role = "write" if request.token.can_write else "read"
    return Response.of_json({
        "type": "user",
        "id": hashlib.sha1(request.token.user.encode()).hexdigest()[:24],
        "name": request.token.user,
        "fullname": request.token.user,
        "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": role}},
    })


def handle_agent_harnesses(hub: FakeHub, request: Request) -> Response:
    """`GET /api/agent-harnesses`: an empty registry (no agent detection)."""
    return Response.of_json({"standardEnvVars": [], "harnesses": {}})


def handle_create_repo(hub: FakeHub, request: Request) -> Response:
    """`POST /api/repos/create`."""
    token = require_write(request)
    payload = request.json()
    name = payload.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise HubError(400, f"Invalid repo name: {name!r}")
    repo_type = payload.get("type") or "model"
    if repo_type not in URL_PREFIXES:
        raise HubError(400, f"Invalid repo type: {repo_type!r}")
    private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
    repo = hub.create_repo_record(repo_type, f"{payload.get('organization') or token.user}/{name}", private)
    return Response.of_json({"url": hub.repo_url(repo), "name": repo.repo_id, "id": repo.repo_id})


def handle_delete_repo(hub: FakeHub, request: Request) -> Response:
    """`DELETE /api/repos/delete`."""
    token = require_write(request)
    payload = request.json()
    key = (payload.get("type") or "model", f"{payload.get('organization') or token.user}/{payload.get('name')}")
    with hub.lock:
        if hub.repos.pop(key, None) is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
    return Response.of_json({})


def handle_validate_yaml(hub: FakeHub, request: Request) -> Response:
    """`POST /api/validate-yaml`: the front matter, when present, must be a YAML mapping."""
    content = str(request.json().get("content", ""))
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if match:
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            raise HubError(400, f"Invalid YAML in README front matter: {error}") from error
        if data is not None and not isinstance(data, dict):
            raise HubError(400, "README front matter must be a YAML mapping")
    return Response.of_json({"errors": [], "warnings": []})


def handle_repo_info(hub: FakeHub, request: Request) -> Response:
    """`GET /api/{type}/{ns}/{name}[/revision/{rev}]`."""
    with hub.lock:
        repo = hub.readable_repo(request)
        commit = repo.resolve(request.params.get("rev") or "main")
        return Response.of_json(repo_info_payload(repo, commit, with_blobs=request.flag("blobs")))


def repo_info_payload(repo: Repo, commit: Commit, with_blobs: bool) -> dict:
    """The repo-info JSON of a repo at a commit."""
    card = _front_matter(commit.files.get("README.md"))
    tags = [tag for tag in card.get("tags") or [] if isinstance(tag, str)]
    siblings = [{"rfilename": path} for path in sorted(commit.files)]
    if with_blobs:
        for sibling in siblings:
            data = commit.files[sibling["rfilename"]]
            sibling.update(size=len(data), blobId=git_blob_oid(data))
    namespace = repo.repo_id.split("/")[0]
    return {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "author": namespace,
        "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
        "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": tags,
        "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"),
        "cardData": card or None, "siblings": siblings,
    }


def handle_tree(hub: FakeHub, request: Request) -> Response:
    """`GET /api/{type}/{ns}/{name}/tree/{rev}[/{path}]` (one page, no `Link` header)."""
    with hub.lock:
        commit = hub.readable_repo(request).resolve(request.params["rev"])
    prefix = (request.params.get("path") or "").strip("/")
    entries = tree_entries(commit.files, prefix, recursive=request.flag("recursive"))
    if prefix and not entries and prefix not in commit.files:
        raise HubError(404, f"{prefix} does not exist on {commit.oid}", "EntryNotFound")
    return Response.of_json(entries)


def tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    """The files and folders below `prefix` (direct children only unless `recursive`)."""
    base = f"{prefix}/" if prefix else ""
    folders: set[str] = set()
    entries = []
    for path in sorted(files):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            folders.add(base + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            entries.append(file_entry(path, files[path]))
    entries.extend(folder_entry(folder, files) for folder in sorted(folders))
    return entries


def file_entry(path: str, data: bytes) -> dict:
    """A tree/paths-info entry for a file."""
    return {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}


def folder_entry(path: str, files: dict[str, bytes]) -> dict:
    """A tree/paths-info entry for a folder (its oid hashes the oids below it)."""
    below = "".join(git_blob_oid(data) for name, data in sorted(files.items()) if name.startswith(f"{path}/"))
    return {"type": "directory", "oid": hashlib.sha1(below.encode()).hexdigest(), "size": 0, "path": path}


def handle_paths_info(hub: FakeHub, request: Request) -> Response:
    """`POST /api/{type}/{ns}/{name}/paths-info/{rev}` (form-encoded `paths`)."""
    with hub.lock:
        commit = hub.readable_repo(request).resolve(request.params["rev"])
    form = parse_qs(request.body.decode(), keep_blank_values=True)
    entries = []
    for path in (path.strip("/") for path in form.get("paths", [])):
        if path in commit.files:
            entries.append(file_entry(path, commit.files[path]))
        elif any(name.startswith(f"{path}/") for name in commit.files):
            entries.append(folder_entry(path, commit.files))
    return Response.of_json(entries)


def handle_refs(hub: FakeHub, request: Request) -> Response:
    """`GET /api/{type}/{ns}/{name}/refs`."""
    with hub.lock:
        repo = hub.readable_repo(request)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in repo.branches.items()
        ]
    return Response.of_json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})


def handle_commits(hub: FakeHub, request: Request) -> Response:
    """`GET /api/{type}/{ns}/{name}/commits/{rev}`: the first-parent history, newest first."""
    with hub.lock:
        repo = hub.readable_repo(request)
        commit: Commit | None = repo.resolve(request.params["rev"])
        history = []
        while commit is not None:
            history.append({
                "id": commit.oid, "title": commit.title, "message": commit.message, "date": commit.date,
                "authors": [{"user": commit.author}],
            })
            commit = repo.commits[commit.parents[0]] if commit.parents else None
    return Response.of_json(history)


def handle_create_branch(hub: FakeHub, request: Request) -> Response:
    """`POST /api/{type}/{ns}/{name}/branch/{branch}` (optional `startingPoint`)."""
    with hub.lock:
        repo = hub.writable_repo(request)
        branch = request.params["branch"]
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        if re.fullmatch(r"[0-9a-f]{40}", branch) or not re.fullmatch(r"[\w.\-/]+", branch):
            raise HubError(400, f"Invalid branch name: {branch!r}")
        repo.branches[branch] = repo.resolve(request.json().get("startingPoint") or "main").oid
    return Response.of_json({})


def handle_delete_branch(hub: FakeHub, request: Request) -> Response:
    """`DELETE /api/{type}/{ns}/{name}/branch/{branch}`."""
    with hub.lock:
        repo = hub.writable_repo(request)
        branch = request.params["branch"]
        if branch == "main":
            raise HubError(403, "Cannot delete the main branch")
        if repo.branches.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
    return Response.of_json({})


def handle_preupload(hub: FakeHub, request: Request) -> Response:
    """`POST /api/{type}/{ns}/{name}/preupload/{rev}`: every file goes inline ("regular"), never LFS/Xet."""
    with hub.lock:
        head = hub.writable_repo(request).branch_head(request.params["rev"])
    files = []
    for item in request.json().get("files", []):
        current = head.files.get(item["path"])
        oid = git_blob_oid(current) if current is not None else None
        files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
    return Response.of_json({"files": files, "commitOid": head.oid})


def handle_commit(hub: FakeHub, request: Request) -> Response:
    """`POST /api/{type}/{ns}/{name}/commit/{rev}` (NDJSON body)."""
    if request.flag("create_pr"):
        raise HubError(400, "Pull requests are not supported by the fake Hub")
    header, operations = parse_commit_body(request.body)
    with hub.lock:
        repo = hub.writable_repo(request)
        head = repo.branch_head(request.params["rev"])
        parent = header.get("parentCommit")
        if parent and parent != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = apply_operations(dict(head.files), operations)
        branch = request.params["rev"].removeprefix("refs/heads/")
        title = str(header.get("summary") or "Upload files")
        commit = hub.add_commit(repo, branch, files, title, str(header.get("description") or ""), request.token.user)
        url = f"{hub.repo_url(repo)}/commit/{commit.oid}"
    return Response.of_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})


def parse_commit_body(body: bytes) -> tuple[dict, list[dict]]:
    """Split an NDJSON commit payload into its header value and its operations."""
    header: dict = {}
    operations = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise HubError(400, f"Invalid NDJSON line: {error}") from error
        if item.get("key") == "header":
            header = item.get("value") or {}
        else:
            operations.append(item)
    return header, operations


def apply_operations(files: dict[str, bytes], operations: list[dict]) -> dict[str, bytes]:
    """Apply `file` / `deletedFile` / `deletedFolder` operations to a snapshot (400 for anything else)."""
    for operation in operations:
        key, value = operation.get("key"), operation.get("value") or {}
        path = str(value.get("path", "")).strip("/")
        if not path:
            raise HubError(400, f"Missing path in {key} operation")
        if key == "file":
            files[path] = decode_file_content(value)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            for name in [name for name in files if name.startswith(f"{path}/")]:
                del files[name]
        else:
            raise HubError(400, f"Unsupported commit operation {key!r} (the fake Hub only takes inline files)")
    return files


def decode_file_content(value: dict) -> bytes:
    """The bytes of a `file` operation (`encoding` base64 or utf-8)."""
    content = value.get("content", "")
    if value.get("encoding", "utf-8") == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except ValueError as error:
            raise HubError(400, f"Invalid base64 content for {value.get('path')}") from error
    return str(content).encode()


def handle_resolve(hub: FakeHub, request: Request) -> Response:
    """`HEAD|GET /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}`."""
    with hub.lock:
        commit = hub.readable_repo(request).resolve(request.params["rev"])
    path = request.params["path"]
    if path not in commit.files:
        raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
    data = commit.files[path]
    headers = {
        "X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"', "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream", "Content-Disposition": f'inline; filename="{path.split("/")[-1]}"',
    }
    return ranged_response(data, request.headers.get("Range"), headers)


def ranged_response(data: bytes, range_header: str | None, headers: dict[str, str]) -> Response:
    """A 200 with all of `data`, or a 206 for a single `bytes=start-[end]` range."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header or "")
    if not match or not (match.group(1) or match.group(2)):
        return Response(200, data, headers)
    if match.group(1):
        start, end = int(match.group(1)), int(match.group(2) or len(data) - 1)
    else:
        start, end = max(len(data) - int(match.group(2)), 0), len(data) - 1
    end = min(end, len(data) - 1)
    if start > end:
        raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
    return Response(206, data[start : end + 1], headers | {"Content-Range": f"bytes {start}-{end}/{len(data)}"})


# ------------------------------------------------------------------------------------------------- routing
_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_RESOLVE = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"
Handler = Callable[[FakeHub, Request], Response]
ROUTES: list[tuple[frozenset[str], re.Pattern, str, Handler]] = [
    (frozenset({method}), re.compile(pattern), name, handler)
    for method, pattern, name, handler in [
        ("GET", r"/api/whoami-v2", "whoami", handle_whoami),
        ("GET", r"/api/agent-harnesses", "agent-harnesses", handle_agent_harnesses),
        ("POST", r"/api/repos/create", "create-repo", handle_create_repo),
        ("DELETE", r"/api/repos/delete", "delete-repo", handle_delete_repo),
        ("POST", r"/api/validate-yaml", "validate-yaml", handle_validate_yaml),
        ("GET", _REPO + r"(?:/revision/(?P<rev>[^/]+))?", "info", handle_repo_info),
        ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree", handle_tree),
        ("POST", _REPO + r"/paths-info/(?P<rev>[^/]+)", "paths-info", handle_paths_info),
        ("GET", _REPO + r"/refs", "refs", handle_refs),
        ("GET", _REPO + r"/commits/(?P<rev>[^/]+)", "commits", handle_commits),
        ("POST", _REPO + r"/branch/(?P<branch>[^/]+)", "create-branch", handle_create_branch),
        ("DELETE", _REPO + r"/branch/(?P<branch>[^/]+)", "delete-branch", handle_delete_branch),
        ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)", "preupload", handle_preupload),
        ("POST", _REPO + r"/commit/(?P<rev>[^/]+)", "commit", handle_commit),
        ("GET", _RESOLVE, "resolve", handle_resolve),
    ]
]


def route(method: str, raw_path: str) -> tuple[str, Handler, dict[str, str]] | None:
    """Match a raw (still quoted) path: the endpoint name, its handler and the unquoted path parameters."""
    lookup_method = "GET" if method == "HEAD" else method
    for methods, pattern, name, handler in ROUTES:
        match = pattern.fullmatch(raw_path)
        if match and lookup_method in methods and (method != "HEAD" or name == "resolve"):
            params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
            params["type"] = TYPE_SEGMENTS.get(params.get("type", "models"), "model")
            return name, handler, params
    return None


class _HubHandler(BaseHTTPRequestHandler):
    """Turns HTTP requests into `Request`s for the route handlers and writes their `Response`s."""

    protocol_version = "HTTP/1.1"
    timeout = HANDLER_TIMEOUT_S
    server_version = "FakeHub/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self.dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self.dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self.dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self.dispatch()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence the default stderr access log (`FakeHub.requests` is the log)."""

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def dispatch(self) -> None:
        """Route, apply a queued fault, run the handler and answer (errors become `HubError` answers)."""
        url = urlsplit(self.path)
        entry = LoggedRequest(self.command, url.path, url.query, "unknown", "Authorization" in self.headers)
        with self.hub.lock:
            self.hub.requests.append(entry)
        matched = route(self.command, url.path)
        fault = None
        if matched is not None:
            entry.endpoint = matched[0]
            fault = self.hub.take_fault(entry.endpoint)
            if fault is not None and fault.mode == "disconnect":
                self.drop_mid_body()
                return
        try:
            body = self.read_body()
            if matched is None:
                raise HubError(404, f"No route for {self.command} {url.path}")
            if fault is not None:
                raise HubError(fault.status, f"Injected fault on {entry.endpoint}")
            response = self.run(matched, url.query, body)
        except HubError as error:
            response = error_response(error)
        entry.status = response.status
        self.send(response)

    def run(self, matched: tuple[str, Handler, dict[str, str]], query: str, body: bytes) -> Response:
        """Authenticate and call the route handler."""
        name, handler, params = matched
        token = self.hub.token_info(self.headers.get("Authorization"))
        headers = {key: value for key, value in self.headers.items() if key.lower() != "authorization"}
        request = Request(self.command, params, parse_qs(query, keep_blank_values=True), body, token, headers)
        return handler(self.hub, request)

    def read_body(self) -> bytes:
        """The request body (Content-Length or chunked), bounded by `MAX_BODY_BYTES`."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"".join(self.iter_chunks())
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def iter_chunks(self) -> Iterator[bytes]:
        """Decode a chunked request body."""
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise HubError(413, "Request body too large")
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass
                return
            yield self.rfile.read(size)
            self.rfile.readline(1024)

    def drop_mid_body(self) -> None:
        """Read half of the announced body, then reset the connection without answering."""
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
        if length:
            self.rfile.read(max(length // 2, 1))
        self.close_connection = True
        with contextlib.suppress(OSError):  # linger 0: closing the socket sends a reset, not a clean FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def send(self, response: Response) -> None:
        """Write status, headers and (except for HEAD) the body."""
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


def error_response(error: HubError) -> Response:
    """The JSON error answer of a `HubError`, with the Hub's `X-Error-*` headers."""
    response = Response.of_json({"error": error.message, **error.extra}, error.status)
    response.headers["X-Error-Message"] = error.message.encode("ascii", "replace").decode()
    if error.error_code:
        response.headers["X-Error-Code"] = error.error_code
    response.headers.update(error.headers)
    return response
