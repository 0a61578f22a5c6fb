"""The README's demo runs and shows the four decisions it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "demo" / "demo.py"


def test_demo_shows_each_action() -> None:
    """deliver, quarantine, bounce and defer appear in that order."""
    done = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, check=True
    )
    actions = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("action:")]
    assert actions == ["deliver", "quarantine", "bounce", "defer"]
