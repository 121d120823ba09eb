"""Every column the job adds or reads by name, with its Arrow type, and the job's one exception base.

Source columns (`instruction`, `generation`, ...) reach the stages by these names after
`source.rename`; the stages add their outputs under these names; the output keeps
`output.columns` of them. A module that needs a column's name or type imports it from here.
"""

from __future__ import annotations

import pyarrow as pa

# Row identity. `row_hash` is made by every read (file path + position) and is the id Ray Data's
# checkpoint records; `row_id` is a copy of it that stays with the row when an output is read again.
ROW_HASH = "row_hash"
ROW_ID = "row_id"
ROW_ID_TYPE = pa.uint64()

# The pair.
INSTRUCTION = "instruction"
GENERATION = "generation"

# Stage outputs.
GENERATION_MODEL = "generation_model"
INSTRUCTION_MODEL = "instruction_model"
SCORE = "score"
SCORE_EXPECTED = "score_expected"  # score.method logprobs: the probability-weighted mean of 1..5
SCORE_PROBS = "score_probs"  # ... and the five probabilities
REASON = "reason"
SCORING_MODEL = "scoring_model"
SCORE_PREV = "score_prev"  # a re-scoring run renames the earlier output's score to this

# Where a pair came from: the paper tags augmented (web) and seed pairs with different system
# prompts, and the tag must travel with the row, not be guessed from the run that reads it.
ORIGIN = "origin"
ORIGIN_WEB = "web"
ORIGIN_SEED = "seed"

# A failed row's record: which stage, what kind of failure, a one-line message, attempts made.
ERROR = "error"
ERROR_TYPE = pa.struct(
    [("stage", pa.string()), ("type", pa.string()), ("message", pa.string()), ("attempts", pa.int32())]
)

# The chat export TRL's SFT trainer reads: [system tag, user, assistant].
MESSAGES = "messages"
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)

OUTPUT_TYPES: dict[str, pa.DataType] = {
    ROW_HASH: ROW_ID_TYPE,
    ROW_ID: ROW_ID_TYPE,
    INSTRUCTION: pa.string(),
    GENERATION: pa.string(),
    GENERATION_MODEL: pa.string(),
    INSTRUCTION_MODEL: pa.string(),
    SCORE: pa.int64(),
    SCORE_EXPECTED: pa.float64(),
    SCORE_PROBS: pa.list_(pa.float64()),
    REASON: pa.string(),
    SCORING_MODEL: pa.string(),
    SCORE_PREV: pa.int64(),
    ORIGIN: pa.string(),
    ERROR: ERROR_TYPE,
    MESSAGES: MESSAGES_TYPE,
}


# Every chat request names its stage in this header, so a server (the simulator, a logging proxy)
# can tell a scoring request from a generation without reading the prompt.
STAGE_HEADER = "X-Backtrans-Stage"

# The reply cache's shards (cache.py): a request's key and its reply as JSON.
CACHE_KEY = "request_key"
CACHE_REPLY = "reply"


class BacktransError(Exception):
    """A failure the user can act on: its message is one line that names the key, column, row or
    URL at fault. `resumable` says whether running the same command again continues the run (a
    budget stop, a stage that went down) rather than failing the same way.

    The CLI prints the message of any BacktransError as its last line and exits non-zero; nothing
    is classified by the text of a class name.
    """

    resumable: bool = False
