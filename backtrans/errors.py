"""One line that says what went wrong, safe for logs: keys masked, Ray's wrappers looked through.

A stage actor that stops the run records why in the run's metrics actor before it raises (see
`stages.LLMStage.__call__`), so the driver reads the reason as data. What is left for this module
is every other error: the one line to print for it.
"""

from __future__ import annotations

import re

# Servers echo keys back in 401 bodies ("Incorrect API key provided: sk-..."). A key's tail has a
# digit or a capital; names such as the config path `score.api_key_env` have neither and stay readable.
KEY_LIKE = re.compile(r"\b(?i:sk|hf|api|key)[-_](?=[A-Za-z0-9*_-]*[0-9A-Z*])[A-Za-z0-9*_-]{6,}")


class Secret:
    """A key read on the driver and handed to the stage actors inside their constructor arguments,
    which Ray pickles into its object store: unlike a runtime_env or job metadata, those are never
    listed by `ray job list`, the dashboard or the state API. Its repr and str never show the key, so
    neither can a log line or an error message that prints it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def one_line(error: BaseException, secret: str | None = None) -> str:
    """A short message safe for logs and output: first line, keys masked."""
    lines = str(error).strip().splitlines()
    return mask(lines[0] if lines else type(error).__name__, secret)


def mask(text: str, secret: str | None = None) -> str:
    """`text` cut to 300 characters with `secret` and anything shaped like a key replaced by ***."""
    if secret:
        text = text.replace(secret, "***")
    return KEY_LIKE.sub("***", text)[:300]


def _innermost(error: BaseException) -> BaseException:
    # Ray keeps a worker's exception as RayTaskError.cause when it pickles; chained causes on our side.
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or getattr(error, "cause", None)
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


# A traceback's "module.Type: message" line; Ray's wrappers carry the worker's traceback as text.
EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exhausted|Down)): (?P<message>.+)$", re.M)


def root_failure(error: BaseException) -> tuple[str, str]:
    """(exception class name, one-line message) of the innermost failure reachable; keys masked."""
    import ray.exceptions

    error = _innermost(error)
    if isinstance(error, ray.exceptions.RayError):
        # The worker's exception did not survive pickling: its last traceback line that is not Ray's.
        ours = [match for match in EXCEPTION_LINE.finditer(str(error)) if not match.group("type").startswith("ray.")]
        if ours:
            return ours[-1].group("type").rsplit(".", 1)[-1], mask(ours[-1].group("message"))
    return type(error).__name__, one_line(error)
