"""Publish the output folder as a Hub dataset repo with `huggingface_hub`: checked before the run
spends anything, pushed as the run's last step, and pushed again by a re-run if that step failed.

One commit uploads data/, curated/, the card, the plot and the run summary, read through the output
folder's filesystem (so an output on s3:// is pushed the same way), and deletes the repo's shards
that are not in it (shard names change with every run), so the repo holds exactly the latest shards.
"""

from __future__ import annotations

import contextlib
import os
import random
import time

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError

from backtrans.config import HubConfig
from backtrans.endpoints import retry_after_s
from backtrans.output import CURATED_DIR, DATA_DIR, OutputFolder
from backtrans.schema import BacktransError
from backtrans.summary import Pushed

# Org roles that may create and write repos (the Hub's "read" role may not).
WRITING_ROLES = {"contributor", "write", "admin"}
# The Hub's transient answers: rate limits, server errors, and 412 when another commit moved the
# branch between our listing and our commit (the next attempt lists again).
PUSH_ATTEMPTS = 4
PUSH_BACKOFF_S = 0.5


class HubError(BacktransError):
    """The Hub refused the token or the repo; the message names `hub.token_env` or `hub.repo_id`."""


class PushFailed(HubError):
    resumable = True  # the output is complete: the same command pushes it without any LLM request


def hub_token(hub: HubConfig) -> str | None:
    # huggingface_hub would also find a token saved by `hf auth login`; None lets it look.
    return os.environ.get(hub.token_env) or None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_access(hub: HubConfig) -> str:
    """Before any request is spent: the token is valid, and it may write `hub.repo_id` (the repo
    exists and the token may write it, or it does not and the token's user or one of its orgs
    owns the namespace). Returns the repo id with its namespace."""
    api = HfApi(token=hub_token(hub))
    try:
        me = api.whoami()
    except LocalTokenNotFoundError:
        raise HubError(f"hub.token_env: {hub.token_env} is not set and no Hub login is saved") from None
    except HfHubHTTPError as error:
        raise HubError(f"hub.token_env: the Hub refused the token in {hub.token_env} ({_first_line(error)})") from None
    if me.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise HubError(f"hub.token_env: the token in {hub.token_env} is read-only; pushing needs write access")
    repo_id = hub.repo_id if "/" in hub.repo_id else f"{me['name']}/{hub.repo_id}"
    try:
        api.auth_check(repo_id, repo_type="dataset", write=True)
        return repo_id
    except RepositoryNotFoundError:
        pass  # not there yet: the token must be able to create it
    except HfHubHTTPError as error:
        raise HubError(f"hub.repo_id: {me['name']} (token in {hub.token_env}) may not write to {repo_id}") from error
    namespace = repo_id.split("/")[0]
    writable = {me["name"]} | {org["name"] for org in me.get("orgs", []) if org.get("roleInOrg") in WRITING_ROLES}
    if namespace not in writable:
        raise HubError(
            f"hub.repo_id: {repo_id} does not exist and {me['name']} (token in {hub.token_env}) "
            f"may not create repos under {namespace}"
        )
    return repo_id


def _uploads(folder: OutputFolder) -> list[str]:
    """The files the repo holds: data/, curated/*/, and the card, plot and summary when present."""
    shards = folder.parquet_files(folder.data)
    shards += [shard for subset in folder.folders(folder.curated_root) for shard in folder.parquet_files(subset)]
    return shards + [path for path in (folder.card, folder.plot, folder.summary) if folder.exists(path)]


def _commit(api: HfApi, folder: OutputFolder, hub: HubConfig, repo_id: str) -> str:
    """One attempt: every file opened anew, streamed from the folder's filesystem (ranged reads on an
    object store, never a local copy of the run), and the repo's listing taken anew."""
    api.create_repo(repo_id, repo_type="dataset", private=hub.private, exist_ok=True)
    with contextlib.ExitStack() as files:
        adds = {
            folder.relative(path): CommitOperationAdd(folder.relative(path), files.enter_context(folder.open(path)))
            for path in _uploads(folder)
        }
        stale = [
            CommitOperationDelete(path)
            for path in api.list_repo_files(repo_id, repo_type="dataset")
            if path.startswith((f"{DATA_DIR}/", f"{CURATED_DIR}/")) and path not in adds
        ]
        return api.create_commit(
            repo_id,
            [*stale, *adds.values()],
            repo_type="dataset",
            commit_message="Upload instruction backtranslation data (backtrans)",
        ).oid


def _transient(error: HfHubHTTPError) -> bool:
    status = error.response.status_code if error.response is not None else None
    return status is not None and (status in (412, 429) or status >= 500)


def push(folder: OutputFolder, hub: HubConfig, repo_id: str) -> Pushed:
    """Create the dataset repo if needed and commit the output's files in one commit, retrying the
    Hub's transient answers with exponential backoff and jitter, honouring Retry-After."""
    api = HfApi(token=hub_token(hub))
    for attempt in range(PUSH_ATTEMPTS):
        try:
            return Pushed(repo=repo_id, commit=_commit(api, folder, hub, repo_id))
        except HfHubHTTPError as error:
            if attempt + 1 == PUSH_ATTEMPTS or not _transient(error):
                raise PushFailed(
                    f"hub: pushing to {repo_id} failed ({_first_line(error)}); the output is complete, "
                    "run the same command again to push it"
                ) from None
            wait = retry_after_s(error.response.headers)
            time.sleep(wait if wait is not None else PUSH_BACKOFF_S * 2**attempt * random.uniform(1, 2))
