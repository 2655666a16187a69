"""Helpers to find processes a test may have left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil


def lane_pids() -> set[int]:
    """Pids of flowpool's live lane workers (kept on purpose for reuse)."""
    from flowpool._executors import _process

    return _process._POOL.pids()


def stray_children(ignore_lanes: bool = True) -> list[psutil.Process]:
    """Live descendants of this process that are neither lanes nor loky's resource tracker."""
    keep = lane_pids() if ignore_lanes else set()
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in keep or child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue
        out.append(child)
    return out


def wait_until_gone(pids: list[int], within: float) -> list[int]:
    """Pids still alive after ``within`` seconds."""
    deadline = time.monotonic() + within
    alive = pids
    while time.monotonic() < deadline:
        alive = [pid for pid in alive if psutil.pid_exists(pid) and not _zombie(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def wait_for_file(path: Path, within: float = 30.0) -> str:
    """Poll for a marker file written by a step (another process); its text."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if text:
                return text
        time.sleep(0.01)
    raise TimeoutError(f"{path} did not appear within {within} s")


def pid_alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and not _zombie(pid) and pid != os.getpid()
