"""A canary key runs the whole job and appears nowhere: output, card, summary, logs, errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import write_pairs_jsonl

pytestmark = pytest.mark.integration  # runs the CLI, which starts a Ray

REPO = Path(__file__).resolve().parents[1]
CANARY = "sk-canary-7f3a9e21c4b8d6f0"


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_canary_key_appears_nowhere(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 30, long_rows=(4,))
    env = {**os.environ, "CANARY_KEY": CANARY}
    env.pop("RAY_ADDRESS", None)
    # Some requests fail (503s, a 400) so error records and messages are produced too.
    with Simulator(SimulatorConfig(api_key=CANARY, rate_503=0.3, max_context_chars=9000)) as sim:
        config = tmp_path / "job.yaml"
        config.write_text(
            f"source: {{uri: {source}}}\n"
            f"score: {{backend: openai, base_url: '{sim.url}', model: judge, api_key_env: CANARY_KEY, max_retries: 0,"
            f" failure_window: 1000}}\n"
            f"output: {{path: {tmp_path / 'out'}, columns: [instruction, score, reason, error]}}\n"
        )
        ok = subprocess.run([sys.executable, "-m", "backtrans", "run", str(config)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
        assert sim.stats()["authorized_requests"] > 0  # the key really was used
    with Simulator(SimulatorConfig(api_key="sk-other-key-000000")) as refusing:
        config.write_text(config.read_text().replace(sim.url, refusing.url).replace("/out,", "/out2,"))
        refused = subprocess.run([sys.executable, "-m", "backtrans", "run", str(config)], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=300)  # fmt: skip

    assert ok.returncode == 0, ok.stderr[-2000:]
    assert refused.returncode != 0 and "refused the key in CANARY_KEY" in refused.stderr
    written = _all_bytes(tmp_path / "out")
    assert b"http_503" in written or b"http_400" in written  # failure records were written
    for text in (ok.stdout, ok.stderr, refused.stdout, refused.stderr):
        assert CANARY not in text and CANARY[3:] not in text
    assert CANARY.encode() not in written and CANARY[3:].encode() not in written
    assert (tmp_path / "out" / "README.md").exists() and (tmp_path / "out" / "run_summary.json").exists()
