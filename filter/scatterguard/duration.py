"""Durations in the configuration: seconds as a number, or ``"30s"``, ``"5m"``, ``"4h"``, ``"2d"``.

Standard library only, and light: the filter's hand-over fast path reads ``timeout`` with it
before anything heavier is imported.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse(value: object) -> float:
    """Seconds from a number or a duration string; TypeError or ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a duration, got {type(value).__name__}")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f'expected a duration such as "30s", "5m" or "4h", got {value!r}')
    return float(match.group(1)) * _UNITS[match.group(2)]
