"""The date our test messages' topmost Received field carries: now, fixed once per test run.

The filter measures a message's age from that field (``defer_max_age``): a fixed date in the
test data turns a deferral into a decision once the date is more than four hours old. One value
per run keeps the bytes of a message the same across the calls of one test (retries must match).
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

RECEIVED_DATE = email.utils.format_datetime(datetime.now(UTC)).encode()
