"""Shared loopback services for the tests: one local Ray, the endpoint simulator, the fake Hub and an
S3-compatible server (moto).

HF_ENDPOINT must be set before huggingface_hub is first imported (it reads the variable at import),
and HF_ENDPOINT and AWS_ENDPOINT_URL before ray.init (local Ray workers inherit the driver's
environment), so the fake Hub and the S3 server start here, at conftest import, ahead of every test
module.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

_HUB_HOME = tempfile.mkdtemp(prefix="backtrans-tests-")
os.environ["HF_HOME"] = os.path.join(_HUB_HOME, "hf-home")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"  # datasets would otherwise HEAD a non-loopback URL
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"

from backtrans.testing.fake_hub import FakeHub  # noqa: E402

FAKE_HUB = FakeHub(root_dir=os.path.join(_HUB_HOME, "hub")).__enter__()
os.environ["HF_ENDPOINT"] = FAKE_HUB.url
os.environ["HF_TOKEN"] = "hf_test_token_for_the_fake_hub"

import pyarrow.fs as pafs  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402

from backtrans.resources import keep_idle_workers  # noqa: E402
from tests.helpers import S3_BUCKET, S3_SECRET  # noqa: E402

keep_idle_workers()  # the tests' Rays (local, the test cluster's nodes, `ray start`) as `backtrans run`'s


def _start_s3_server() -> tuple[subprocess.Popen, pafs.S3FileSystem]:
    """moto's S3 server on loopback, reached the standard way (AWS_ENDPOINT_URL and AWS_* keys), with
    the tests' bucket made."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # This environment's moto, not whichever `moto_server` is first on PATH: pyarrow 26 rejects the
    # CompleteMultipartUpload body of moto 5.2.1 and retries it until it gives up.
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    filesystem = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    deadline = time.time() + 60
    while True:
        try:
            filesystem.create_dir(S3_BUCKET)
            return server, filesystem
        except OSError:  # not listening yet
            if time.time() > deadline:
                raise
            time.sleep(0.2)


S3_SERVER, S3_FILESYSTEM = _start_s3_server()


@pytest.fixture(scope="session")
def fake_hub():
    return FAKE_HUB


@pytest.fixture(scope="session")
def s3():
    """The loopback S3 server's filesystem; paths in it start with `S3_BUCKET`."""
    return S3_FILESYSTEM


@pytest.fixture
def local_ray():
    """A local Ray shared by the tests; (re)started on demand, since the `ray start` test stops it."""
    if not ray.is_initialized():
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        except Exception:  # "node timed out during startup" happens on a loaded 2-core machine; once more
            ray.shutdown()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def pytest_collection_modifyitems(items):
    # Tests that need a Ray are integration tests; `.ci/run`'s lowest-versions step runs the rest.
    for item in items:
        if "local_ray" in item.fixturenames:
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session, exitstatus):
    ray.shutdown()
    S3_SERVER.terminate()
    S3_SERVER.wait()
