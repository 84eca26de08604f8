from __future__ import annotations

import pytest

from drainctl.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672//", "amqp://guest:***@localhost:5672//"),
        ("amqps://user:p%40ss@host/vh?cafile=x", "amqps://user:***@host/vh?cafile=x"),
        ("amqp://localhost//", "amqp://localhost//"),
        ("amqp://:onlypass@h/", "amqp://:***@h/"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = "cannot connect to amqp://a:secret@h1// nor amqps://b:other@h2:5671/v"
    assert redact_text(text) == "cannot connect to amqp://a:***@h1// nor amqps://b:***@h2:5671/v"
    assert "secret" not in redact_text(text)
