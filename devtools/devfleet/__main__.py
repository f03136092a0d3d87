"""Entry point of ``python -m devtools.devfleet`` (the CLI lives in ``devtools.devfleet.cli``)."""

from __future__ import annotations

import sys

from devtools.devfleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
