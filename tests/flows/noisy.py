"""A target that writes to standard output everywhere, as legacy code does: at import
(in the command and in every worker process that imports it), in a step, in a
compensation, from C level (``os.write``, ``printf``) and from a subprocess."""

from __future__ import annotations

import ctypes
import os
from typing import Any

from flowpool import Context, Flow

print(f"noisy: printed at import in {os.getpid()}")


def chatty(ctx: Context) -> str:
    print(f"noisy: print in {ctx.step}")
    os.write(1, f"noisy: descriptor 1 in {ctx.step}\n".encode())
    # C's printf: to a pipe it sits in the C library's buffer until flushed or exit.
    ctypes.CDLL(None).printf(f"noisy: printf in {ctx.step}\n".encode())
    os.system(f"echo noisy: subprocess in {ctx.step}")
    return ctx.step


def undo(ctx: Context, value: Any) -> None:
    print(f"noisy: compensating {ctx.step}")


def boom(ctx: Context) -> None:
    raise RuntimeError("boom after the noise")


flow = Flow("noisy").step("talk", chatty, compensate=undo).step("fail", boom)
