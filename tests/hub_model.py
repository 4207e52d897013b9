"""The fake Hub's data model: repos as chains of immutable commit snapshots, tokens, requests and responses.

`Repo` keeps its branches (name → commit oid) and every `Commit` ever made; `Request`/`Response` are what the route
handlers in `hub_routes.py` take and return; `HubError` is an HTTP error answer (see `error_response`). The server
around them is `FakeHub` in `hub_server.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import yaml


WRITE_TOKEN = "hf_fake_write_token"
READ_TOKEN = "hf_fake_read_token"
DEFAULT_USER = "tester"

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


def error_response(error: HubError) -> Response:
    """The JSON error answer of a `HubError`, with the Hub's `X-Error-*` headers."""
    response = Response.of_json({"error": error.message, **error.extra}, error.status)
    response.headers["X-Error-Message"] = error.message.encode("ascii", "replace").decode()
    if error.error_code:
        response.headers["X-Error-Code"] = error.error_code
    response.headers.update(error.headers)
    return response
