"""Hub revisions and errors: pin a load to one commit, record where a model came from, and turn Hub and
network failures into a `HubError` that says what to do (the token is never printed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)

from peft_shine.errors import HubError


@dataclass(frozen=True)
class HubOrigin:
    """Where a hypernetwork came from on the Hub: repo id, the revision asked for and the commit it resolved to."""

    repo_id: str
    revision: str | None
    commit: str | None



# ---------------------------------------------------------------------------------------------------- errors
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP clients huggingface_hub may use."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(__import__(module).TransportError)
    return tuple(errors)


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub and network errors raised inside the block into a `HubError` saying what to do.

    ``action`` completes "Could not ..." (e.g. ``"push to"``); messages never contain the token.
    """
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        yield
    except HubError:
        raise
    except RevisionNotFoundError as error:
        raise HubError(f"Could not {action} {where}: that revision does not exist. Check the branch, tag or "
                       f"commit sha.") from error
    except RepositoryNotFoundError as error:
        raise HubError(f"Could not {action} {where}: repository not found on {hf_constants.ENDPOINT}, or it is "
                       f"private and your token cannot see it. Check the repo id ('user/name') and that you are "
                       f"logged in ('hf auth login' or HF_TOKEN).") from error
    except HfHubHTTPError as error:
        raise HubError(_http_message(action, where, error)) from error
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, RevisionResolutionError) as error:
        raise HubError(f"Could not {action} {where}: {_unreachable_advice()}") from error
    except _transport_errors() as error:
        unchanged = ("nothing was committed (commits are atomic) and your local files are unchanged"
                     if action.startswith("push") else "your local files are unchanged")
        raise HubError(f"Could not {action} {where}: the connection to {hf_constants.ENDPOINT} failed "
                       f"({type(error).__name__}); {unchanged}. Check your connection and retry.") from error


def _unreachable_advice() -> str:
    """Why a file could not be found locally nor fetched, and what to do."""
    if hf_constants.HF_HUB_OFFLINE:
        return ("it is not in the local cache and offline mode is on (HF_HUB_OFFLINE=1). Download it once while "
                "online, or unset HF_HUB_OFFLINE.")
    return (f"it is not in the local cache and the Hub ({hf_constants.ENDPOINT}) could not be reached. Check your "
            f"connection and retry.")


def _http_message(action: str, where: str, error: HfHubHTTPError) -> str:
    """The advice for an HTTP error answer, by status code."""
    status = error.response.status_code if error.response is not None else None
    prefix = f"Could not {action} {where} (HTTP {status})"
    if status == 401:
        return (f"{prefix}: the Hub refused the credentials. Log in with 'hf auth login' or set HF_TOKEN to a "
                f"valid token.")
    if status == 403:
        return (f"{prefix}: your token may not write to this repo. Log in with a token that has write access to "
                f"this namespace ('hf auth login' or HF_TOKEN).")
    if status == 412:
        return f"{prefix}: the branch moved while uploading (a concurrent push). Retry the push."
    detail = getattr(error, "server_message", None) or type(error).__name__
    return f"{prefix}: {detail}. Retry later; if it persists, check the repo id and revision."




# ---------------------------------------------------------------------------------------------------- pull
def resolve_hub_revision(repo_id: str, revision: str | None = None, *, token: bool | str | None = None) -> str:
    """Resolve ``revision`` (branch, tag, sha; default ``main``) of a Hub repo to its commit, once per load.

    Returns a ``huggingface_hub.ResolvedRevision`` (a str equal to ``revision``, ``.resolved`` = the commit) that
    pins every later download of the load to one commit; honours offline mode (answered from the cache).
    """
    api = HfApi(token=token)
    if not hasattr(api, "resolve_revision"):  # huggingface_hub < 2: transformers resolves it on its own
        return revision
    with hub_errors("load", repo_id, revision):
        return api.resolve_revision(repo_id, revision=revision, token=token,
                                    local_files_only=hf_constants.HF_HUB_OFFLINE)


def hub_origin(repo_id: str, revision: str | None) -> HubOrigin:
    """The `HubOrigin` of a load from ``repo_id`` at a revision returned by `resolve_hub_revision`."""
    return HubOrigin(repo_id, getattr(revision, "initial", revision) or "main", getattr(revision, "resolved", None))
