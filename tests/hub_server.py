"""An in-memory fake Hugging Face Hub that speaks enough of the real HTTP protocol for the real clients.

`FakeHub` runs a stdlib `ThreadingHTTPServer` on 127.0.0.1 (port 0 by default) and keeps every repository in
memory as a chain of immutable commit snapshots, so `huggingface_hub` (`HfApi`, `hf_hub_download`,
`snapshot_download`, `ModelCard`), transformers `push_to_hub`/`from_pretrained` and peft
`push_to_hub`/`PeftModel.from_pretrained` round-trip byte-exactly against it. Nothing leaves the loopback interface.

The endpoints and their handlers live in `hub_routes.py`, the data model (`Repo`, `Commit`, `Request`, `Response`,
`HubError`, tokens) in `hub_model.py`; this module holds `FakeHub`, the HTTP request handler around the routes, and
re-exports the names the tests import from here.

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

import contextlib
import hashlib
import itertools
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hub_model import (
    DEFAULT_USER,
    INITIAL_GITATTRIBUTES,
    READ_TOKEN,
    URL_PREFIXES,
    WRITE_TOKEN,
    Commit,
    Fault,
    FaultMode,
    HubError,
    LoggedRequest,
    Repo,
    Request,
    Response,
    TokenInfo,
    _now,
    error_response,
    git_blob_oid,
)
from hub_routes import ROUTES, Handler, require_write, route


__all__ = [
    "DEFAULT_USER",
    "READ_TOKEN",
    "ROUTES",
    "WRITE_TOKEN",
    "Commit",
    "FakeHub",
    "Fault",
    "FaultMode",
    "HubError",
    "LoggedRequest",
    "Repo",
    "Request",
    "Response",
    "TokenInfo",
    "default_tokens",
    "error_response",
    "git_blob_oid",
    "route",
]

MAX_BODY_BYTES = 1 << 30
HANDLER_TIMEOUT_S = 30.0


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
