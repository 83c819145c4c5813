"""Real headless Chromium for page tests: `--dump-dom` after the page's scripts ran, and
screenshots. Skipped only where Chromium is not installed (failed with SELVA_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        reason = "headless Chromium not installed (Debian package `chromium`)"
        if os.environ.get("SELVA_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and SELVA_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run(
        [exe, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )
