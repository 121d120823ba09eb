"""One-line messages: keys masked, config paths kept."""

import pytest

from backtrans.errors import mask


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "score.api_key_env: environment variable NOT_SET_VAR is not set",
            "score.api_key_env: environment variable NOT_SET_VAR is not set",
        ),
        ("Incorrect API key provided: sk-canary-7f3a9e21c4b8d6f0.", "Incorrect API key provided: ***."),
        ("token hf_AbCdEfGhIjKlMnOpQrStUv refused", "token *** refused"),
        ("bad key: key-9f8e7d6c5b4a", "bad key: ***"),
        ("hub.token_env: HF_TOKEN was refused", "hub.token_env: HF_TOKEN was refused"),
    ],
)
def test_keys_are_masked_and_config_paths_are_not(text, shown):
    assert mask(text) == shown


def test_the_secret_itself_is_masked_whatever_its_shape():
    assert mask("sent lowercaseonlysecret to the server", "lowercaseonlysecret") == "sent *** to the server"
