"""Shared loopback services for the tests: one local Ray, the endpoint simulator, the fake Hub.

HF_ENDPOINT must be set before huggingface_hub is first imported (it reads the variable at import)
and before ray.init (local Ray workers inherit the driver's environment), so the fake Hub starts
here, at conftest import, ahead of every test module.
"""

import os
import tempfile

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

import pytest  # noqa: E402
import ray  # noqa: E402


@pytest.fixture(scope="session")
def fake_hub():
    return FAKE_HUB


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
