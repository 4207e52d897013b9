"""The fake Hub's HTTP endpoints: one `handle_*` function per route, their helpers, the route table and `route()`.

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
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

import yaml

from hub_model import URL_PREFIXES, Commit, HubError, Repo, Request, Response, TokenInfo, _front_matter, git_blob_oid


if TYPE_CHECKING:
    from hub_server import FakeHub


TYPE_SEGMENTS = {"models": "model", "datasets": "dataset", "spaces": "space"}


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
Handler = Callable[["FakeHub", Request], Response]
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
