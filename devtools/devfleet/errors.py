"""The dev fleet's exceptions."""

from __future__ import annotations


class FleetError(RuntimeError):
    """The fleet cannot be set up, started or stopped; the message says why."""


class SshdNotInstalledError(FleetError):
    """The OpenSSH server (or ssh-keygen) is missing on this machine."""
