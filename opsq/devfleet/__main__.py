"""Entry point of ``python -m opsq.devfleet`` (the CLI lives in ``opsq.devfleet.cli``)."""

from __future__ import annotations

import sys

from opsq.devfleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
