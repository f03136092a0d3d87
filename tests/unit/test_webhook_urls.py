"""Webhook URLs refused when given, no services: every non-global address form."""

from __future__ import annotations

import os

import pytest
from addresses import REFUSED

from opsq.jobs import webhooks
from opsq.settings import get_settings

SETTING = "OPSQ_WEBHOOK_ALLOWED_NETWORKS"


@pytest.fixture(autouse=True)
def no_allowed_networks():
    """No network allowed in this process (the run's own value is put back after)."""
    before = os.environ.get(SETTING)
    os.environ[SETTING] = ""
    get_settings.cache_clear()
    yield
    if before is None:
        os.environ.pop(SETTING, None)
    else:
        os.environ[SETTING] = before
    get_settings.cache_clear()


@pytest.mark.parametrize("host", REFUSED)
def test_a_refused_address_is_refused_when_the_url_is_given(host):
    url = f"http://{host}:8080/hook?token=s3cret"
    with pytest.raises(webhooks.AddressRefused) as refused:
        webhooks.check_urls(["https://hooks.example.com/fine", url])
    message = str(refused.value)
    assert message.startswith(f"--notify http://{host}:8080/...: "), message
    assert "address" in message and SETTING in message, message
    assert "s3cret" not in message  # the URL's token stays out of errors and logs


@pytest.mark.parametrize("host", ["8.8.8.8", "[2606:4700:4700::1111]",
                                  "[64:ff9b::808:808]", "webhooks.invalid"])
def test_global_addresses_and_names_that_do_not_resolve_yet_are_accepted(host):
    url = f"https://{host}/hook"
    assert webhooks.check_urls([url]) == [url]
