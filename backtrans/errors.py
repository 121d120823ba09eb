"""Turn whatever reached the driver into one line that says what went wrong.

Ray wraps an exception raised in a worker into a RayTaskError whose `cause` is a UserCodeException;
the original exception object does not survive, only its traceback text. The last exception line
in that text that is not Ray's own is the outermost error our code raised: the one that says what
went wrong (a StageDown raised while handling a 503, say, rather than the 503).
"""

from __future__ import annotations

import re

from backtrans.endpoints import one_line

EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exhausted|Down)): (?P<message>.+)$", re.M)


def root_failure(error: BaseException) -> tuple[str, str]:
    """(exception class name, one-line message) of the innermost failure; keys masked."""
    while error.__cause__ is not None:
        error = error.__cause__
    ours = [match for match in EXCEPTION_LINE.finditer(str(error)) if not match.group("type").startswith("ray.")]
    if ours:
        return ours[-1].group("type").rsplit(".", 1)[-1], one_line(ValueError(ours[-1].group("message")))
    return type(error).__name__, one_line(error)
