"""The console's signing key and login limiter, no services."""

from __future__ import annotations

import time

import pytest


def test_generated_cookie_key_is_kept_private(tmp_path):
    from opsq.settings import Settings
    from opsq.web.auth import signing_key

    path = tmp_path / "var" / "web-secret"
    first = signing_key(Settings(web_secret=None), path)
    assert len(first) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert signing_key(Settings(web_secret=None), path) == first
    given = "g" * 32
    assert signing_key(Settings(web_secret=given), path) == given


@pytest.mark.parametrize("key,where", [("", "OPSQ_WEB_SECRET"), ("short", "OPSQ_WEB_SECRET"),
                                       ("x" * 31, "OPSQ_WEB_SECRET")])
def test_a_short_or_empty_signing_key_is_refused(tmp_path, key, where):
    from opsq.errors import ConfigError
    from opsq.settings import Settings
    from opsq.web.auth import signing_key

    with pytest.raises(ConfigError, match="at least 32"):
        signing_key(Settings(web_secret=key), tmp_path / "unused")
    empty = tmp_path / "web-secret"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=str(empty)):
        signing_key(Settings(web_secret=None), empty)


def test_the_login_limiter_forgets(monkeypatch):
    from opsq.web.auth import LoginLimiter

    limiter = LoginLimiter(attempts=2, window=0.2, address_attempts=3, max_keys=10)
    for i in range(50):  # many names from many addresses: at most max_keys are kept
        limiter.attempt(f"user{i}", f"10.0.0.{i}")
    assert len(limiter) <= 10
    assert not limiter.attempt("x", "10.9.9.9") or limiter.attempt("x", "10.9.9.9")
    assert not limiter.attempt("x", "10.9.9.9")  # two attempts for one name: blocked
    assert limiter.attempt("y", "10.9.9.9")  # another name from that address: not yet
    time.sleep(0.25)
    limiter.attempt("z", "10.1.1.1")  # any later attempt drops what the window forgot
    assert len(limiter) == 2 and limiter.attempt("x", "10.9.9.9")
    # IPv6: a /64 is one address
    pair, addr = LoginLimiter.keys("n", "2001:db8::1")
    assert addr == LoginLimiter.keys("n", "2001:db8::ffff")[1]
