"""worker/wfm.py's checks of its own settings."""

from __future__ import annotations

import pytest

from worker.wfm import config_warnings

EMPTY = (
    "WFM_WEBHOOK_SECRET is empty: deliveries are signed with an empty key, which anyone can "
    "forge; set a long random secret and give it to the receiver"
)


def test_nothing_to_say_without_a_webhook():
    assert config_warnings(None, "") == []


@pytest.mark.parametrize(
    "url",
    [
        "https://wfm.example.com/events",
        "http://127.0.0.1:8080/__wfm/events",
        "http://localhost/events",
        "http://[::1]:9000/events",
    ],
)
def test_https_or_loopback_with_a_secret_is_fine(url):
    assert config_warnings(url, "a-long-random-secret") == []


def test_an_empty_secret_is_one_line():
    assert config_warnings("https://wfm.example.com/events", "") == [EMPTY]


def test_plain_http_to_another_host_is_one_line_naming_the_host_not_the_url():
    [warning] = config_warnings("http://ops:pw@wfm.example.com:8080/events?token=t", "k")

    assert warning == (
        "WFM_WEBHOOK_URL is plain http:// to wfm.example.com: events travel unencrypted and can "
        "be read or replayed on the way; use https://"
    )
    assert "pw" not in warning
    assert "token" not in warning
