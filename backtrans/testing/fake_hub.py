"""A loopback fake of the Hugging Face Hub HTTP API, for tests only.

It speaks enough of the Hub's HTTP API for the *real* ``huggingface_hub`` (2.x) and
``datasets`` (5.x) clients: repo creation, commits (``upload_file``, ``upload_folder``
with ``delete_patterns``, ``create_commit``), repo info / tree / paths-info / commits /
refs, ``/resolve`` downloads with HTTP Range, ``whoami``, and everything ``HfFileSystem``
and ``datasets.load_dataset`` need. Served by aiohttp on 127.0.0.1 in a background
thread; it never talks to the network itself.

Usage::

    from backtrans.testing.fake_hub import FakeHub

    with FakeHub(root_dir=tmp_path / "hub") as hub:
        env = hub.env(hf_home=tmp_path / "hf", token="hf_fake")  # for client processes
        subprocess.run([sys.executable, "client.py"], env={**os.environ, **env}, check=True)
        hub.files("datasets", "fake-user/name")  # {path: bytes} of the current tree
        hub.requests  # [RecordedRequest(method, path, query, has_auth, status), ...]

Command line (prints the URL on its first stdout line, serves until killed)::

    python -m backtrans.testing.fake_hub --port 0 --root DIR [--required-token TOKEN]

Pointing clients at it (the important part)
-------------------------------------------
``huggingface_hub.constants.ENDPOINT`` and ``datasets.config.HF_ENDPOINT`` are read from
``HF_ENDPOINT`` *once, when those libraries are first imported*; a later change to
``os.environ`` is not seen by a process that already imported them. Three ways work:

1. Session-wide (what ``tests/conftest.py`` does): start one hub and set ``HF_ENDPOINT``
   (plus ``HF_HOME``/``HF_TOKEN``) in ``os.environ`` at conftest import, before anything
   imports ``huggingface_hub``/``datasets`` and before ``ray.init()``. Ray workers are
   fresh processes that inherit the driver's environment, so ``hf://datasets/...`` reads
   through ``HfFileSystem`` on workers reach the hub too. This module imports neither
   library, so importing it never freezes the endpoint.
2. A hub per test: run the client code in a **subprocess** whose environment holds
   ``hub.env(hf_home=..., token=...)`` (``HF_ENDPOINT``, a private ``HF_HOME`` and
   datasets cache, ``HF_TOKEN``, offline/telemetry/download-count switches, ``NO_PROXY``).
   ``tests/test_fake_hub.py`` does this.
3. In-process with an explicit endpoint: ``HfApi(endpoint=hub.url, token=...)``,
   ``HfFileSystem(endpoint=hub.url, token=...)`` and ``hf_hub_download(..., endpoint=...)``
   take it per call. ``datasets.load_dataset`` has no such argument: it uses the
   import-time value, so it needs 1. or 2.

Behaviour worth knowing
-----------------------
* Every file is stored as a regular git blob: ``preupload`` always answers
  ``"uploadMode": "regular"``, so content travels base64-inline in the ndjson commit and
  neither LFS nor Xet is used: ``huggingface_hub`` only takes the Xet (or, with
  ``HF_HUB_DISABLE_XET=1``, the LFS) route for files the server labels "lfs", and only
  downloads through Xet when ``/resolve`` answers with ``X-Xet-Hash``, which we never send.
  ``lfsFile`` commit lines are rejected with 400.
* Like the real Hub, a new repo starts with an "initial commit" holding ``.gitattributes``;
  ``files()`` returns it too.
* Writes (create/delete repo, preupload, commit, branches) need an ``Authorization``
  header, and private repos answer 401 to reads without one, as on the real Hub. With
  ``required_token`` set, every request needs ``Authorization: Bearer <token>``.
  The token value is never stored or logged (only its hash, for ``set_token``); only its
  presence is recorded.
* Accounts: a token speaks for ``fake-user`` with write access unless ``set_token`` says
  otherwise: another ``Account`` (a user, its orgs and roles, a read-only token), or a token
  the Hub refuses (401 on every request, like a revoked one). ``whoami`` reports the account,
  and writes answer 403 outside the namespaces it may write (its own, and orgs where its role
  is contributor, write or admin), as ``auth-check/write`` does.
* ``fail_next(method, path_pattern, status)`` answers the next matching request with that
  status, once: for testing a client's recovery from a failed upload.
* Every commit keeps its full tree (blobs are content-addressed on disk under
  ``root_dir``): ``datasets`` pins data files to the commit sha it resolved
  (``hf://datasets/REPO@SHA/...``), and those reads keep working after later commits.
* Not supported (answered like the real Hub answers a missing thing, so clients fall
  back): pull requests, ``refs/convert/parquet``, Xet/LFS, tags, spaces runtime.
  ``datasets`` also asks ``datasets-server.<host>`` and an S3 URL for download counts;
  those never reach us: ``env()`` sets ``HF_UPDATE_DOWNLOAD_COUNTS=0`` for the latter,
  the former fails name resolution at once and ``datasets`` ignores it.
* ``datasets`` picks one builder (json, parquet, ...) from the *first* README ``configs:``
  entry and uses it for every config, so all configs of a repo must share one file format
  (real-Hub behaviour too; it is client-side).
* Client-side caching: ``hf_hub_download`` with a commit-sha revision is answered from
  ``HF_HOME`` without any request once cached, and ``HfFileSystem`` instances (cached by
  fsspec per endpoint/token) keep directory listings until ``invalidate_cache()``. Use a
  fresh ``HF_HOME`` when asserting on ``requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote

import yaml
from aiohttp import web

logger = logging.getLogger(__name__)

USERNAME = "fake-user"
WRITING_ROLES = frozenset({"contributor", "write", "admin"})  # org roles that may create and write repos
# Same shape as what the Hub puts in a brand-new repo (content does not matter here).
_GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.arrow filter=lfs diff=lfs merge=lfs -text\n"
# Repo types as the URLs spell them (plural) and as the API bodies do (singular).
_TYPES = {name + plural: name for name in ("model", "dataset", "space") for plural in ("", "s")}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as seen by the fake: never holds the token itself."""

    method: str
    path: str  # decoded URL path, without query string
    query: str
    has_auth: bool  # an Authorization header was present
    status: int


@dataclass(frozen=True)
class Account:
    """Who a token speaks for: a user, its role in each org, and the token's own role."""

    name: str = USERNAME
    orgs: Mapping[str, str] = field(default_factory=dict)  # org -> "read" | "contributor" | "write" | "admin"
    role: str = "write"  # the token's: "read" or "write"

    def may_write(self, namespace: str) -> bool:
        return self.role == "write" and (namespace == self.name or self.orgs.get(namespace) in WRITING_ROLES)


@dataclass
class _Commit:
    oid: str
    title: str
    message: str
    date: str
    parent: str | None
    tree: dict[str, str]  # path -> blob oid (git sha1)
    changed: frozenset[str]  # paths added, modified or deleted by this commit


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid

    def resolve(self, revision: str) -> _Commit:
        revision = revision.removeprefix("refs/heads/")
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class _HubError(Exception):
    """An HTTP error answered the way the Hub does (X-Error-Code / X-Error-Message)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.body = dict(headers or {}), dict(body or {})

    def response(self) -> web.Response:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        body = {"error": self.message, **self.body}
        return web.json_response(body, status=self.status, headers=headers)


def _now() -> str:
    # The client's parse_datetime only accepts '%Y-%m-%dT%H:%M:%S.%fZ'.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(data: bytes) -> str:
    # Same oid as git (and huggingface_hub's sha.git_hash): lets the client skip unchanged files.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _card_data(readme: bytes) -> dict | None:
    match = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", readme.decode("utf-8", "replace"), re.DOTALL)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _anonymous(request: web.Request) -> _HubError:
    # What the Hub answers anonymous callers: on repo URLs it does not tell "private"
    # from "missing", and the client turns that into RepositoryNotFoundError.
    on_repo = re.match(r"/api/(models|datasets|spaces)/|/.+/resolve/", request.path)
    code = "RepoNotFound" if on_repo else None
    return _HubError(401, "Invalid username or password.", code)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


_REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"

_Handler = Callable[..., Awaitable[web.StreamResponse]]
# (methods, path pattern, FakeHub handler), in the order the handlers are defined: a request is
# answered by the first that matches it.
_ROUTES: list[tuple[str, str, _Handler]] = []


def _route(methods: str, pattern: str) -> Callable[[_Handler], _Handler]:
    """The decorated handler answers `methods` (space-separated) on raw paths that fully match
    `pattern`, called with the pattern's named groups as keyword arguments."""

    def register(handler: _Handler) -> _Handler:
        _ROUTES.append((methods, pattern, handler))
        return handler

    return register


class FakeHub:
    """In-process fake Hub server on 127.0.0.1 (see module docstring)."""

    def __init__(
        self,
        root_dir: str | os.PathLike | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        required_token: str | None = None,
    ):
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-hub-") if root_dir is None else None
        self.root_dir = Path(root_dir if root_dir is not None else self._tmp.name)
        self._blob_dir = self.root_dir / "blobs"
        self._blob_dir.mkdir(parents=True, exist_ok=True)
        self._host, self._port = host, port
        self._required_token = required_token
        self._lock = threading.Lock()  # guards repos/requests: mutated on the server thread, read by tests
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._requests: list[RecordedRequest] = []
        self._accounts: dict[str, Account | None] = {}  # sha256 of a token -> its account, None: refused
        self._failures: list[tuple[str, str, int]] = []  # (method, path pattern, status), each used once
        self._counter = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        # Bind in the caller's thread so the chosen port is known before serving.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(128)
        self.url = f"http://{self._host}:{sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-hub", daemon=True)
        self._thread.start()
        # Startup errors surface here, in the caller's thread.
        self._call(self._serve(sock))
        return self

    async def _serve(self, sock: socket.socket) -> None:
        # Regular uploads arrive base64-inline in one request body (the client
        # budgets 100 MB per commit), far above aiohttp's 1 MiB default.
        app = web.Application(client_max_size=2**31, middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._thread is not None:
            if self._runner is not None:
                self._call(self._runner.cleanup())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._thread = self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test API

    def env(self, hf_home: str | os.PathLike, token: str | None = None) -> dict[str, str]:
        """Environment for a client process (or for os.environ before ``ray.init()``)."""
        env = {
            "HF_ENDPOINT": self.url,
            "HF_HOME": str(hf_home),  # private caches and no stored token from the host
            "HF_DATASETS_CACHE": str(Path(hf_home) / "datasets"),
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets would HEAD an S3 URL on every load
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "NO_PROXY": "127.0.0.1,localhost",  # httpx honours *_PROXY, even for loopback
            "no_proxy": "127.0.0.1,localhost",
        }
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def set_token(self, token: str, account: Account | None) -> None:
        """What ``token`` stands for from now on: ``account``, or None for a token the Hub refuses."""
        with self._lock:
            self._accounts[_token_digest(token)] = account

    def fail_next(self, method: str, path_pattern: str, status: int = 500) -> None:
        """Answer the next ``method`` request whose path fully matches ``path_pattern`` with ``status``."""
        with self._lock:
            self._failures.append((method, path_pattern, status))

    # repo_type: "dataset(s)", "model(s)" or "space(s)". Missing repos/revisions raise KeyError.

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The tree at ``revision`` (default: head of main): ``{path: content}``."""
        with self._lock:
            tree = dict(self._lookup(repo_type, repo_id, revision)[1].tree)
        return {path: self._read_blob(oid) for path, oid in sorted(tree.items())}

    def commits(self, repo_type: str, repo_id: str, revision: str = "main") -> list[str]:
        """Commit oids reachable from ``revision``, newest first."""
        with self._lock:
            repo, commit = self._lookup(repo_type, repo_id, revision)
            return [c.oid for c in self._history(repo, commit)]

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool = False) -> None:
        """Seed a repo directly (no HTTP), e.g. to prepare input data for a job under test."""
        with self._lock:
            if (_TYPES[repo_type], repo_id) in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            self._new_repo(_TYPES[repo_type], repo_id, private)

    def put_files(self, repo_type: str, repo_id: str, files: Mapping[str, bytes], message: str = "seed") -> str:
        """Commit ``files`` directly to ``main`` (no HTTP). Returns the commit oid."""
        oids = {path: self._write_blob(data) for path, data in files.items()}
        with self._lock:
            repo, head = self._lookup(repo_type, repo_id, "main")
            return self._add_commit(repo, "main", {**head.tree, **oids}, message, "", head).oid

    def _lookup(self, repo_type: str, repo_id: str, revision: str) -> tuple[_Repo, _Commit]:
        try:
            repo = self._get_repo(_TYPES[repo_type], repo_id)
            return repo, repo.resolve(revision)
        except _HubError as err:
            raise KeyError(f"{repo_type} {repo_id}@{revision}: {err.message}") from None

    # ------------------------------------------------------------------ storage

    def _write_blob(self, data: bytes) -> str:
        oid = _git_blob_oid(data)
        path = self._blob_dir / oid
        if not path.exists():  # content-addressed: same oid, same bytes
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return oid

    def _read_blob(self, oid: str, start: int = 0, length: int = -1) -> bytes:
        with open(self._blob_dir / oid, "rb") as f:
            f.seek(start)
            return f.read(length)

    def _blob_size(self, oid: str) -> int:
        return (self._blob_dir / oid).stat().st_size

    def _new_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        if (repo_type, repo_id) in self._repos:
            # create_repo(exist_ok=True) turns a 409 into success, reading its "url".
            url = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"
            message = f"You already created this {repo_type} repo"
            raise _HubError(409, message, body={"url": url})
        repo = _Repo(repo_type, repo_id, private, _now())
        self._add_commit(repo, "main", {".gitattributes": self._write_blob(_GITATTRIBUTES)}, "initial commit", "", None)
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise _HubError(404, "Repository not found", "RepoNotFound") from None

    def _add_commit(
        self, repo: _Repo, branch: str, tree: dict[str, str], title: str, message: str, parent: _Commit | None
    ) -> _Commit:
        self._counter += 1
        old = parent.tree if parent else {}
        changed = frozenset(p for p in old.keys() | tree.keys() if old.get(p) != tree.get(p))
        seed = f"{parent.oid if parent else ''}|{sorted(tree.items())}|{title}|{time.time_ns()}|{self._counter}"
        commit = _Commit(
            hashlib.sha1(seed.encode()).hexdigest(), title, message, _now(), parent and parent.oid, tree, changed
        )
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    @staticmethod
    def _history(repo: _Repo, commit: _Commit) -> Iterator[_Commit]:
        while commit is not None:
            yield commit
            commit = repo.commits.get(commit.parent) if commit.parent else None

    # ------------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        # Record after answering so the status is known; the token itself is never kept.
        record = RecordedRequest(
            request.method, request.path, request.query_string, "Authorization" in request.headers, response.status
        )
        with self._lock:
            self._requests.append(record)
        logger.debug("%s %s -> %s (auth: %s)", record.method, record.path, record.status, record.has_auth)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check_token(request)
            self._check_failures(request)
            raw_path = request.rel_url.raw_path  # still percent-encoded: '%2F' in revisions/paths survives
            for methods, pattern, handler in _ROUTES:
                match = re.fullmatch(pattern, raw_path)
                if match and request.method in methods.split():
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    return await handler(self, request, **params)
            logger.warning("FakeHub: unsupported route %s %s", request.method, request.path)
            raise _HubError(404, "Sorry, we can't find the page you are looking for.")
        except _HubError as err:
            return err.response()
        except Exception:  # a bug in the fake: answer 500 (recorded) rather than drop the connection
            logger.exception("FakeHub: error in %s %s", request.method, request.path)
            return web.json_response({"error": "FakeHub internal error"}, status=500)

    def _check_token(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization")
        with self._lock:
            refused = auth is not None and self._accounts.get(_token_digest(auth.removeprefix("Bearer ")), "") is None
        if self._required_token is None and not refused:
            return
        if auth is None:
            raise _anonymous(request)
        if refused or auth != f"Bearer {self._required_token}":
            # The client maps exactly this message to "invalid token", not "no repo".
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _check_failures(self, request: web.Request) -> None:
        with self._lock:
            for failure in self._failures:
                method, pattern, status = failure
                if request.method == method and re.fullmatch(pattern, request.path):
                    self._failures.remove(failure)
                    raise _HubError(status, f"FakeHub: injected failure ({status})")

    def _account(self, request: web.Request) -> Account | None:
        """The account the request's token speaks for (None without one; refused tokens never get here)."""
        auth = request.headers.get("Authorization")
        if auth is None:
            return None
        with self._lock:
            return self._accounts.get(_token_digest(auth.removeprefix("Bearer ")), Account())

    def _require_auth(self, request: web.Request) -> Account:
        # The real Hub refuses anonymous writes: catches jobs that forgot HF_TOKEN.
        account = self._account(request)
        if account is None:
            raise _anonymous(request)
        return account

    def _require_write(self, request: web.Request, namespace: str, message: str | None = None) -> None:
        if not self._require_auth(request).may_write(namespace):
            raise _HubError(403, message or f"You don't have write access to repos under {namespace}")

    def _repo(self, request: web.Request, type: str, repo: str) -> _Repo:
        found = self._get_repo(_TYPES[type], repo)
        if found.private and "Authorization" not in request.headers:
            raise _anonymous(request)
        return found

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str) -> dict:
        for c in self._history(repo, commit):
            if any(p == path or p.startswith(path + "/") for p in c.changed):
                return {"id": c.oid, "title": c.title, "date": c.date}
        return {"id": commit.oid, "title": commit.title, "date": commit.date}

    def _entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict | None:
        """Tree/paths-info JSON for a file or a directory, or None if ``path`` is neither."""
        if path in commit.tree:
            oid = commit.tree[path]
            entry = {"type": "file", "oid": oid, "size": self._blob_size(oid), "path": path}
        else:
            below = sorted((p, o) for p, o in commit.tree.items() if p.startswith(path + "/"))
            if not below:
                return None
            tree_oid = hashlib.sha1(repr(below).encode()).hexdigest()
            entry = {"type": "directory", "oid": tree_oid, "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path)
        return entry

    # ------------------------------------------------------------------ handlers

    @_route("GET", r"/api/whoami-v2")
    async def _whoami(self, request: web.Request) -> web.Response:
        account = self._account(request)
        if account is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return web.json_response(
            {
                "type": "user",
                "id": "000000000000000000000001",
                "name": account.name,
                "fullname": "Fake User",
                "email": f"{account.name}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "orgs": [{"type": "org", "name": org, "roleInOrg": role} for org, role in account.orgs.items()],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": account.role}},
            }
        )

    @_route("GET", rf"/api/{_REPO}/auth-check(?P<write>/write)?")
    async def _auth_check(self, request: web.Request, type: str, repo: str, write: str = "") -> web.Response:
        with self._lock:
            self._repo(request, type, repo)  # 404 for a missing repo, 401 for a private one without a token
        if write:
            self._require_write(request, repo.split("/")[0])
        return web.json_response({})

    @_route("POST", r"/api/validate-yaml")
    async def _validate_yaml(self, request: web.Request) -> web.Response:
        # create_commit validates README.md front matter here before uploading anything.
        content = (await request.json()).get("content", "")
        match = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---", content, re.DOTALL)
        try:
            if match:
                yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return web.json_response({"errors": [{"message": str(exc)}], "warnings": []}, status=400)
        return web.json_response({"errors": [], "warnings": []})

    @_route("POST", r"/api/repos/create")
    async def _create_repo_route(self, request: web.Request) -> web.Response:
        account = self._require_auth(request)
        body = await request.json()
        namespace = body.get("organization") or account.name
        repo_id = f"{namespace}/{body['name']}"
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Invalid repo type: {repo_type}")
        private = body.get("visibility") == "private" or body.get("private") is True
        with self._lock:
            exists = (repo_type, repo_id) in self._repos
        if not exists:  # the Hub answers an existing repo with 409 (create_repo(exist_ok=True) reads it) first
            message = f"You don't have the rights to create a {repo_type} under {namespace}"
            self._require_write(request, namespace, message)
        with self._lock:
            repo = self._new_repo(repo_type, repo_id, private)
        return web.json_response({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    @_route("DELETE", r"/api/repos/delete")
    async def _delete_repo_route(self, request: web.Request) -> web.Response:
        account = self._require_auth(request)
        body = await request.json()
        namespace = body.get("organization") or account.name
        self._require_write(request, namespace)
        key = (body.get("type") or "model", f"{namespace}/{body['name']}")
        with self._lock:
            if self._repos.pop(key, None) is None:
                raise _HubError(404, "Repository not found", "RepoNotFound")
        return web.Response(text="")

    @_route("GET", rf"/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?")
    async def _repo_info(self, request: web.Request, type: str, repo: str, rev: str = "main") -> web.Response:
        with self._lock:
            found = self._repo(request, type, repo)
            commit = found.resolve(rev)
            readme = commit.tree.get("README.md")
            blobs = _truthy(request.query.get("blobs"))
            siblings = []
            for path, oid in sorted(commit.tree.items()):
                sibling = {"rfilename": path}
                if blobs:
                    sibling.update(size=self._blob_size(oid), blobId=oid)
                siblings.append(sibling)
            info = {
                "_id": hashlib.sha1(f"{found.repo_type}/{found.repo_id}".encode()).hexdigest()[:24],
                "id": found.repo_id,
                "author": found.repo_id.split("/")[0],
                "sha": commit.oid,
                "createdAt": found.created_at,
                "lastModified": commit.date,
                "private": found.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(self._blob_size(o) for o in set(commit.tree.values())),
            }
            card = _card_data(self._read_blob(readme)) if readme else None
        if card is not None:
            info["cardData"] = card
        if found.repo_type == "model":
            info["modelId"] = found.repo_id
        expand = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        if expand:  # like the Hub: only the requested fields (plus ids)
            info = {k: v for k, v in info.items() if k in ("_id", "id", *expand)}
        return web.json_response(info)

    @_route("GET", rf"/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?")
    async def _tree(self, request: web.Request, type: str, repo: str, rev: str, path: str = "") -> web.Response:
        path = path.strip("/")
        recursive, expand = _truthy(request.query.get("recursive")), _truthy(request.query.get("expand"))
        with self._lock:
            found = self._repo(request, type, repo)
            commit = found.resolve(rev)
            prefix = f"{path}/" if path else ""
            below = [p for p in commit.tree if p.startswith(prefix)]
            if path and not below:  # missing folder, or a file: the Hub says 404 for both
                raise _HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
            children = set()
            for p in below:
                parts = p[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                children.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
            entries = [self._entry(found, commit, p, expand) for p in sorted(children)]
        return web.json_response(entries)

    @_route("POST", rf"/api/{_REPO}/paths-info/(?P<rev>[^/]+)")
    async def _paths_info(self, request: web.Request, type: str, repo: str, rev: str) -> web.Response:
        form = await request.post()
        expand = _truthy(form.get("expand"))
        with self._lock:
            found = self._repo(request, type, repo)
            commit = found.resolve(rev)
            entries = [self._entry(found, commit, p.strip("/"), expand) for p in form.getall("paths", [])]
        return web.json_response([e for e in entries if e is not None])  # missing paths are skipped

    @_route("POST", rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)")
    async def _preupload(self, request: web.Request, type: str, repo: str, rev: str) -> web.Response:
        self._require_write(request, repo.split("/")[0])
        body = await request.json()
        with self._lock:
            commit = self._repo(request, type, repo).resolve(rev)
        files = [
            # "regular" for everything => inline base64 in the commit, never LFS/Xet.
            # "oid" of the current blob lets the client drop unchanged files from the commit.
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.tree.get(f["path"])}
            for f in body.get("files", [])
        ]
        return web.json_response({"files": files, "commitOid": commit.oid})

    @_route("POST", rf"/api/{_REPO}/commit/(?P<rev>[^/]+)")
    async def _commit(self, request: web.Request, type: str, repo: str, rev: str) -> web.Response:
        self._require_write(request, repo.split("/")[0])
        if _truthy(request.query.get("create_pr")):
            raise _HubError(400, "FakeHub does not support pull requests")
        lines = [json.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        additions: dict[str, str] = {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                raw = value["content"]
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                additions[value["path"]] = self._write_blob(data)
            elif key not in ("header", "deletedFile", "deletedFolder"):  # lfsFile: we never asked for LFS
                raise _HubError(400, f"FakeHub only supports inline regular files, got '{key}'")
        with self._lock:
            found = self._repo(request, type, repo)
            branch = rev.removeprefix("refs/heads/")
            if branch not in found.branches:
                raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            head = found.resolve(branch)
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(head.tree)
            # Operations apply in order, so "delete folder then re-add some files" works.
            for key, value in ((i["key"], i["value"]) for i in lines):
                if key == "file":
                    tree[value["path"]] = additions[value["path"]]
                elif key == "deletedFile":
                    if tree.pop(value["path"], None) is None:
                        raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].strip("/") + "/"
                    gone = [p for p in tree if p.startswith(folder)]
                    if not gone:
                        raise _HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for p in gone:
                        del tree[p]
            commit = self._add_commit(
                found, branch, tree, header.get("summary") or "commit", header.get("description", ""), head
            )
        return web.json_response(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(found)}/commit/{commit.oid}",
                "hookOutput": "",
            }
        )

    @_route("GET", rf"/api/{_REPO}/commits/(?P<rev>[^/]+)")
    async def _list_commits(self, request: web.Request, type: str, repo: str, rev: str) -> web.Response:
        with self._lock:
            found = self._repo(request, type, repo)
            history = [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": USERNAME, "avatar": ""}],
                    "date": c.date,
                }
                for c in self._history(found, found.resolve(rev))
            ]
        return web.json_response(history)

    @_route("GET", rf"/api/{_REPO}/refs")
    async def _refs(self, request: web.Request, type: str, repo: str) -> web.Response:
        with self._lock:
            found = self._repo(request, type, repo)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                for name, oid in sorted(found.branches.items())
            ]
        return web.json_response({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    @_route("POST DELETE", rf"/api/{_REPO}/branch/(?P<rev>[^/]+)")
    async def _branch(self, request: web.Request, type: str, repo: str, rev: str) -> web.Response:
        self._require_write(request, repo.split("/")[0])
        body = await request.json() if request.can_read_body else {}
        with self._lock:
            found = self._repo(request, type, repo)
            if request.method == "DELETE":
                if rev == "main" or found.branches.pop(rev, None) is None:
                    raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            elif rev in found.branches:
                raise _HubError(409, f"Reference already exists: refs/heads/{rev}")
            else:
                found.branches[rev] = found.resolve(body.get("startingPoint") or "main").oid
        return web.Response(text="")

    @_route("GET HEAD", r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
    async def _resolve(
        self, request: web.Request, repo: str, rev: str, path: str, type: str = "models"
    ) -> web.StreamResponse:
        with self._lock:
            commit = self._repo(request, type, repo).resolve(rev)
            oid = commit.tree.get(path)
            if oid is None:
                # X-Repo-Commit on a 404 lets hf_hub_download cache the file's absence.
                raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        size = self._blob_size(oid)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, end, status = 0, size - 1, 200
        range_header = request.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if not match or match.group(1) == match.group(2) == "":
                raise _HubError(416, "Invalid range", headers={"Content-Range": f"bytes */{size}"})
            if match.group(1) == "":  # suffix range: last N bytes
                start = max(0, size - int(match.group(2)))
            else:
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size or start > end:
                raise _HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1 if size else 0)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        body = self._read_blob(oid, start, end - start + 1) if size else b""
        return web.Response(status=status, headers=headers, body=body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--root", default=None, help="blob storage directory (default: a temp dir)")
    parser.add_argument("--required-token", default=None, help="reject requests without 'Bearer <token>'")
    args = parser.parse_args(argv)
    hub = FakeHub(args.root, host=args.host, port=args.port, required_token=args.required_token).start()
    print(hub.url, flush=True)  # first stdout line: callers read the URL from here
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    hub.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
