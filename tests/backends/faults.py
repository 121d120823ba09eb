"""What the backend tests share: a server that records requests, and each fault as the client meets it."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from backtrans.backends import backend_for
from backtrans.config import StageConfig
from backtrans.simulator import Simulator, SimulatorConfig

COMPLETION = {
    "choices": [{"message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3},
}
# Simulator fault -> (failure type, retryable), the same for every backend.
FAULTS = {
    "rate_429": ("http_429", True),
    "rate_503": ("http_503", True),
    "rate_500": ("http_500", True),
    "rate_drop": ("connection", True),
    "rate_garbage": ("malformed_body", True),
    "rate_hang": ("timeout", True),
}


class Recorder:
    """A loopback server answering every POST with COMPLETION; keeps each request's path, headers
    (lower-cased names), body."""

    def __init__(self):
        self.requests = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                payload = json.dumps(COMPLETION).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def stage(backend: str, **config) -> StageConfig:
    return StageConfig(backend=backend, model="m-1", timeout_s=1, **config)


def send(config: StageConfig, base_url: str, prompt: str = "Hi?"):
    """(reply, None) or (None, the FailedAttempt the client's exception classifies as)."""

    async def once():
        backend = backend_for(config)
        client = backend.connect("score", config, base_url, backend.api_key(config, "score"))
        try:
            return await client.send(prompt), None
        except Exception as error:
            return None, client.classify(error)
        finally:
            await client.close()

    return asyncio.run(once())


def fault(backend: str, rate: str, base_url_of=lambda sim: sim.url):
    """The FailedAttempt of one request to a simulator that always injects `rate`."""
    with Simulator(SimulatorConfig(**{rate: 1.0}, hang_s=5, retry_after_s=2)) as sim:
        reply, failed = send(stage(backend, base_url=base_url_of(sim)), base_url_of(sim))
    assert reply is None
    return failed
