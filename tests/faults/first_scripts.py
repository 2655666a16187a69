"""Step functions for tests/test_first_scripts.py's process-mode file job
(importable by worker processes, which unpickle functions by reference)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from flowpool import Context

ROUNDS = 2_000


def digest_text(text: str) -> str:
    """A little CPU work over a file's text: an iterated SHA-256."""
    value = text.encode()
    for _ in range(ROUNDS):
        value = hashlib.sha256(value).digest()
    return value.hex()


def digest_file(ctx: Context) -> str:
    """Digest one file; a file that says ``hang`` sleeps through cancellation (only a kill
    stops it) after recording its worker's pid, one that says ``crash`` kills its worker."""
    path = Path(ctx.item)
    text = path.read_text()
    if text == "hang":
        path.with_suffix(".pid").write_text(str(os.getpid()))
        time.sleep(60)
    if text == "crash":
        os._exit(3)
    return digest_text(text)
