import uuid

import pytest
import ray

from backtrans.metrics import start_metrics


@pytest.fixture
def metrics(local_ray):
    """A run's metrics actor, for the filter counts."""
    actor = start_metrics(f"backtrans-test-metrics-{uuid.uuid4().hex[:8]}")
    yield actor
    ray.kill(actor)
