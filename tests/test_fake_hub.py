"""The loopback fake Hub, driven by the real huggingface_hub and datasets clients.

Client code runs in a fresh interpreter whose environment points HF_ENDPOINT at the
fake: both libraries read it once, at import time, and other tests in this session may
already have imported them. That is also how Ray workers will see the fake.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backtrans.testing.fake_hub import Account, FakeHub

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_fake_token"
ROWS = [{"prompt": f"prompt {i}", "completion": f"completion {i}"} for i in range(5)]

CLIENT_PRELUDE = """
import json
import datasets
from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
api = HfApi()
fs = HfFileSystem()
out = {}
"""


@pytest.fixture
def hub(tmp_path):
    with FakeHub(root_dir=tmp_path / "hub") as hub:
        yield hub


def run_client(hub: FakeHub, cwd: Path, script: str, token: str | None = TOKEN) -> dict:
    """Run `script` in a fresh interpreter pointed at `hub`; return the `out` dict."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(hub.env(hf_home=cwd / "hf_home", token=token))
    code = CLIENT_PRELUDE + textwrap.dedent(script) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_clean_traffic(hub: FakeHub) -> None:
    """No fake-side bugs (5xx) and no Xet/LFS detour: regular uploads only."""
    assert hub.requests
    assert not [r for r in hub.requests if r.status >= 500]
    assert not [r for r in hub.requests if "xet" in r.path or "/info/lfs" in r.path]


def write_parquet(path: Path, tag: str, start: int, n: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"x": list(range(start, start + n)), "tag": [tag] * n})
    pq.write_table(table, path)


def test_single_jsonl_file_is_the_test_split(hub, tmp_path):
    # Same layout as HuggingFaceH4/instruction-dataset: one `step3-eval.jsonl` at the root.
    jsonl = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    (tmp_path / "step3-eval.jsonl").write_bytes(jsonl)
    repo = "fake-user/instruction-dataset"

    out = run_client(
        hub,
        tmp_path,
        f"""
        repo = {repo!r}
        out["whoami"] = api.whoami()["name"]
        out["url"] = str(api.create_repo(repo, repo_type="dataset", exist_ok=True))
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        try:
            api.create_repo(repo, repo_type="dataset")
        except HfHubHTTPError as err:
            out["conflict"] = err.response.status_code
        out["commit"] = api.upload_file(
            path_or_fileobj="step3-eval.jsonl",
            path_in_repo="step3-eval.jsonl",
            repo_id=repo,
            repo_type="dataset",
        ).oid

        files = datasets.load_dataset_builder(repo).config.data_files
        out["splits"] = {{str(k): [f.rsplit("/", 1)[-1] for f in v] for k, v in files.items()}}
        out["rows"] = datasets.load_dataset(repo, split="test").to_list()

        path = f"datasets/{{repo}}/step3-eval.jsonl"
        out["ls"] = fs.ls(f"datasets/{{repo}}", detail=False)
        out["size"] = fs.info(path)["size"]
        with fs.open(path, "rb") as f:  # buffered file: HTTP Range requests
            f.seek(2)
            out["ranged"] = f.read(6).decode()
        out["streamed"] = fs.open(path, "rb").read().decode()
        out["glob"] = fs.glob(f"datasets/{{repo}}/*.jsonl")
        out["downloaded"] = open(hf_hub_download(repo, "step3-eval.jsonl", repo_type="dataset")).read()

        info = api.dataset_info(repo)
        out["info"] = [info.sha, info.private, sorted(s.rfilename for s in info.siblings)]
        out["file_exists"] = [
            api.file_exists(repo, "step3-eval.jsonl", repo_type="dataset"),
            api.file_exists(repo, "missing.jsonl", repo_type="dataset"),
        ]
        out["repo_exists"] = [
            api.repo_exists(repo, repo_type="dataset"),
            api.repo_exists("fake-user/missing", repo_type="dataset"),
        ]
        """,
    )

    assert out["whoami"] == "fake-user"
    assert out["url"] == f"{hub.url}/datasets/{repo}"
    assert out["conflict"] == 409
    assert out["splits"] == {"test": ["step3-eval.jsonl"]}
    assert out["rows"] == ROWS
    assert out["ls"] == [f"datasets/{repo}/.gitattributes", f"datasets/{repo}/step3-eval.jsonl"]
    assert out["size"] == len(jsonl)
    assert out["ranged"] == jsonl[2:8].decode()
    assert out["streamed"] == out["downloaded"] == jsonl.decode()
    assert out["glob"] == [f"datasets/{repo}/step3-eval.jsonl"]
    assert out["info"] == [out["commit"], False, [".gitattributes", "step3-eval.jsonl"]]
    assert out["file_exists"] == [True, False]
    assert out["repo_exists"] == [True, False]

    assert hub.files("datasets", repo)["step3-eval.jsonl"] == jsonl
    assert hub.commits("datasets", repo)[0] == out["commit"]
    partial = [r for r in hub.requests if r.status == 206]
    assert partial and all("/resolve/" in r.path for r in partial)
    assert all(r.has_auth for r in hub.requests)  # HF_TOKEN reached every call
    assert_clean_traffic(hub)


def test_upload_folder_twice_with_delete_patterns_leaves_no_duplicates(hub, tmp_path):
    for i in range(3):
        write_parquet(tmp_path / f"run1/data/train-{i:05d}-of-00003.parquet", "v1", 10 * i)
    for i in range(2):
        write_parquet(tmp_path / f"run2/data/train-{i:05d}-of-00002.parquet", "v2", 10 * i)
    repo = "fake-user/shards"

    out = run_client(
        hub,
        tmp_path,
        f"""
        repo = {repo!r}
        api.create_repo(repo, repo_type="dataset", private=True)
        api.upload_folder(folder_path="run1", repo_id=repo, repo_type="dataset")
        out["first"] = api.list_repo_files(repo, repo_type="dataset")
        api.upload_folder(
            folder_path="run2",
            repo_id=repo,
            repo_type="dataset",
            delete_patterns="data/*.parquet",
        )
        # Unchanged content: the client drops every file, no new commit.
        api.upload_folder(folder_path="run2", repo_id=repo, repo_type="dataset")
        out["titles"] = [c.title for c in api.list_repo_commits(repo, repo_type="dataset")]

        ds = datasets.load_dataset(repo, split="train")
        out["rows"] = [ds.num_rows, sorted(set(ds["tag"]))]
        out["tree"] = [e.path for e in api.list_repo_tree(repo, repo_type="dataset")]
        out["tree_recursive"] = [
            [type(e).__name__, e.path, e.last_commit.title]
            for e in api.list_repo_tree(repo, repo_type="dataset", recursive=True, expand=True)
        ]
        paths = ["data", "data/train-00001-of-00002.parquet", "data/train-00002-of-00003.parquet"]
        out["paths_info"] = [
            type(e).__name__ for e in api.get_paths_info(repo, paths, repo_type="dataset")
        ]
        out["find"] = fs.find(f"datasets/{{repo}}/data")
        out["anonymous"] = HfApi(token=False).repo_exists(repo, repo_type="dataset")
        """,
    )

    assert out["first"] == [".gitattributes"] + [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    upload = "Upload folder using huggingface_hub"
    assert out["titles"] == [upload, upload, "initial commit"]
    assert out["rows"] == [20, ["v2"]]  # only the second run's shards
    assert out["tree"] == [".gitattributes", "data"]
    assert out["tree_recursive"] == [
        ["RepoFile", ".gitattributes", "initial commit"],
        ["RepoFolder", "data", upload],
        ["RepoFile", "data/train-00000-of-00002.parquet", upload],
        ["RepoFile", "data/train-00001-of-00002.parquet", upload],
    ]
    assert out["paths_info"] == ["RepoFolder", "RepoFile"]  # missing paths are skipped
    assert out["find"] == [f"datasets/{repo}/data/train-0000{i}-of-00002.parquet" for i in range(2)]
    assert out["anonymous"] is False  # private repo: 401 without a token

    files = hub.files("datasets", repo)
    assert sorted(files) == [".gitattributes", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet"):
        assert files[f"data/{name}"] == (tmp_path / "run2/data" / name).read_bytes()
    assert_clean_traffic(hub)


def test_readme_configs_select_named_config(hub, tmp_path):
    readme = textwrap.dedent(
        """\
        ---
        configs:
        - config_name: a5
          data_files:
          - split: train
            path: a5/*.parquet
        - config_name: b3
          data_files:
          - split: train
            path: b3/train-*.parquet
          - split: test
            path: b3/test-*.parquet
        ---
        # Backtranslation outputs
        """
    )
    write_parquet(tmp_path / "a5.parquet", "a5", 0, n=5)
    write_parquet(tmp_path / "b3.parquet", "b3", 0, n=3)
    repo = "fake-user/configs"

    out = run_client(
        hub,
        tmp_path,
        f"""
        repo = {repo!r}
        api.create_repo(repo, repo_type="dataset")
        api.upload_file(path_or_fileobj=b"old", path_in_repo="stale.txt", repo_id=repo, repo_type="dataset")
        api.create_commit(
            repo,
            [
                CommitOperationAdd("README.md", {readme.encode()!r}),
                CommitOperationAdd("a5/part-0.parquet", "a5.parquet"),
                CommitOperationAdd("b3/train-0.parquet", "b3.parquet"),
                CommitOperationAdd("b3/test-0.parquet", "b3.parquet"),
                CommitOperationDelete("stale.txt"),
            ],
            commit_message="Add configs",
            repo_type="dataset",
        )
        card = api.dataset_info(repo).card_data
        out["card_configs"] = [c["config_name"] for c in card["configs"]]
        out["config_names"] = datasets.get_dataset_config_names(repo)
        ds = datasets.load_dataset(repo, "a5", split="train")
        out["a5"] = [ds.num_rows, sorted(set(ds["tag"]))]
        files = datasets.load_dataset_builder(repo, "b3").config.data_files
        out["b3_files"] = {{str(k): [f.rsplit("/", 1)[-1] for f in v] for k, v in files.items()}}
        """,
    )

    assert out["card_configs"] == out["config_names"] == ["a5", "b3"]
    assert out["a5"] == [5, ["a5"]]
    assert out["b3_files"] == {"train": ["train-0.parquet"], "test": ["test-0.parquet"]}
    assert "stale.txt" not in hub.files("datasets", repo)
    assert hub.files("datasets", repo)["README.md"] == readme.encode()
    assert_clean_traffic(hub)


def test_required_token_gives_401_without_it(tmp_path):
    secret = "hf_s3cret_value"
    with FakeHub(root_dir=tmp_path / "hub", required_token=secret) as hub:
        (tmp_path / "step3-eval.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
        out = run_client(
            hub,
            tmp_path,
            """
            repo = "fake-user/locked"
            api.create_repo(repo, repo_type="dataset")
            api.upload_file(
                path_or_fileobj="step3-eval.jsonl",
                path_in_repo="step3-eval.jsonl",
                repo_id=repo,
                repo_type="dataset",
            )
            out["rows"] = datasets.load_dataset(repo, split="test").num_rows
            for name, token in [("wrong", "not-the-token"), ("none", False)]:
                try:
                    HfApi(token=token).dataset_info(repo)
                except HfHubHTTPError as err:
                    out[name] = [type(err).__name__, err.response.status_code]
            """,
            token=secret,
        )

    assert out["rows"] == 1
    assert out["wrong"] == ["HfHubHTTPError", 401]
    assert out["none"] == ["RepositoryNotFoundError", 401]
    denied = [r for r in hub.requests if r.status == 401]
    assert len(denied) == 2
    assert sum(not r.has_auth for r in denied) == 1
    assert secret not in repr(hub.requests)  # only the presence of a token is recorded
    assert_clean_traffic(hub)


def test_in_process_client_with_explicit_endpoint(hub):
    # In-process use is fine when the endpoint is passed per instance.
    from huggingface_hub import HfApi, HfFileSystem

    api = HfApi(endpoint=hub.url, token=TOKEN)
    fs = HfFileSystem(endpoint=hub.url, token=TOKEN)
    repo = "fake-user/inproc"
    api.create_repo(repo, repo_type="dataset")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="a/b.txt", repo_id=repo, repo_type="dataset").oid
    api.upload_file(path_or_fileobj=b"v2!", path_in_repo="a/b.txt", repo_id=repo, repo_type="dataset")
    assert fs.cat(f"datasets/{repo}@{first}/a/b.txt") == b"v1"  # older commits stay readable
    assert fs.cat(f"datasets/{repo}/a/b.txt") == b"v2!"

    api.create_branch(repo, branch="dev", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"d", path_in_repo="dev.txt", repo_id=repo, repo_type="dataset", revision="dev")
    assert "dev.txt" in api.list_repo_files(repo, repo_type="dataset", revision="dev")
    assert "dev.txt" not in hub.files("dataset", repo)

    url = f"{hub.url}/datasets/{repo}/resolve/main/a/b.txt"
    head = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(head) as resp:
        assert resp.headers["Content-Length"] == "3"
        assert resp.headers["X-Repo-Commit"] == hub.commits("datasets", repo)[0]
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=-2"})) as resp:
        assert (resp.status, resp.headers["Content-Range"], resp.read()) == (206, "bytes 1-2/3", b"2!")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=3-"}))
    assert (err.value.code, err.value.headers["Content-Range"]) == (416, "bytes */3")
    assert_clean_traffic(hub)


def test_seeding_without_http(hub):
    # Input data for a job under test can be put in place directly.
    from huggingface_hub import HfApi

    hub.create_repo("datasets", "fake-user/seeded", private=True)
    oid = hub.put_files("datasets", "fake-user/seeded", {"step3-eval.jsonl": b"{}\n"})
    assert hub.commits("datasets", "fake-user/seeded")[0] == oid
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.list_repo_files("fake-user/seeded", repo_type="dataset") == [".gitattributes", "step3-eval.jsonl"]
    assert api.dataset_info("fake-user/seeded").private is True
    with pytest.raises(KeyError):
        hub.files("datasets", "fake-user/never-created")
    with pytest.raises(KeyError):
        hub.files("datasets", "fake-user/seeded", revision="no-such-branch")


def test_accounts_refused_tokens_write_rights_and_injected_failures(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub.set_token("hf_bob", Account(name="bob", orgs={"lab": "admin", "club": "read"}))
    hub.set_token("hf_revoked", None)
    bob = HfApi(endpoint=hub.url, token="hf_bob")
    assert bob.whoami()["name"] == "bob"
    assert [(org["name"], org["roleInOrg"]) for org in bob.whoami()["orgs"]] == [("lab", "admin"), ("club", "read")]
    assert str(bob.create_repo("lab/data", repo_type="dataset")) == f"{hub.url}/datasets/lab/data"
    bob.auth_check("lab/data", repo_type="dataset", write=True)
    hub.create_repo("datasets", "club/data")
    for forbidden in (
        lambda: bob.create_repo("club/new", repo_type="dataset"),
        lambda: bob.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="club/data", repo_type="dataset"),
        lambda: bob.auth_check("club/data", repo_type="dataset", write=True),
    ):
        with pytest.raises(HfHubHTTPError) as refused:
            forbidden()
        assert refused.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as revoked:
        HfApi(endpoint=hub.url, token="hf_revoked").list_repo_files("lab/data", repo_type="dataset")
    assert revoked.value.response.status_code == 401

    hub.fail_next("POST", r"/api/datasets/lab/data/commit/main", status=503)
    upload = {"path_or_fileobj": b"x", "path_in_repo": "x", "repo_id": "lab/data", "repo_type": "dataset"}
    with pytest.raises(HfHubHTTPError) as failed:
        bob.upload_file(**upload)
    assert failed.value.response.status_code == 503
    bob.upload_file(**upload)  # once only
    assert hub.files("datasets", "lab/data")["x"] == b"x"


def test_command_line_prints_url_and_serves(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "backtrans.testing.fake_hub", "--port", "0", "--root", str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()))
        reader.start()
        reader.join(timeout=30)
        url = lines[0].strip() if lines else ""
        assert url.startswith("http://127.0.0.1:"), url
        request = urllib.request.Request(f"{url}/api/whoami-v2", headers={"Authorization": "Bearer x"})
        with urllib.request.urlopen(request) as resp:
            assert json.load(resp)["name"] == "fake-user"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
