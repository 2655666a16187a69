"""The timeline page in a real headless browser: one bar per attempt, and pixels."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
SAMPLE = Path(__file__).parent / "flows" / "sample.py"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip(
        "chromium is not installed (apt-get install chromium); required when CI is set", allow_module_level=True
    )


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None, "chromium is required in CI"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def _pixels(png: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct colours of an 8-bit RGB(A) PNG (no Pillow)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    position, data = 8, b""
    width = height = channels = 0
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        chunk = png[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
            channels = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            data += chunk
    raw = zlib.decompress(data)
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):  # undo the PNG row filter
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return width, height, colours


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A real run's timeline and how many attempts its events hold."""
    folder = tmp_path_factory.mktemp("browser")
    events, html = folder / "events.jsonl", folder / "timeline.html"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowpool",
            "run",
            f"{SAMPLE}:retry_flow",
            "--events",
            str(events),
            "--timeline",
            str(html),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    attempts = sum(1 for e in lines if e["kind"] in ("step_retrying", "step_finished") and e["started_at"] is not None)
    return html, attempts


@pytest.mark.timeout(120)
def test_the_browser_dom_holds_one_bar_per_attempt(page: tuple[Path, int], tmp_path: Path) -> None:
    html, attempts = page
    dom = _chromium(tmp_path, "--dump-dom", html.as_uri()).stdout
    assert "<svg" in dom
    found = re.findall(r'<rect class="bar attempt"[^>]*data-attempt="(\d+)"', dom)
    assert len(found) == attempts == 8


@pytest.mark.timeout(120)
def test_the_screenshot_is_not_blank(page: tuple[Path, int], tmp_path: Path) -> None:
    html, _ = page
    shot = tmp_path / "timeline.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,800", html.as_uri())
    width, height, colours = _pixels(shot.read_bytes())
    assert (width, height) == (1200, 800)
    assert len(colours) > 10
    assert bytes.fromhex("2e9d4f") in colours  # a completed attempt's green
    assert bytes.fromhex("e8912d") in colours  # the timed-out attempt's orange


@pytest.mark.timeout(120)
def test_a_maps_band_is_painted(tmp_path: Path) -> None:
    from test_timeline import _map_events

    from flowpool._timeline import STATUS_COLOURS, render_timeline

    html = tmp_path / "map.html"
    html.write_text(render_timeline(_map_events("rows", 5_000, running=8, failed_every=250)), encoding="utf-8")
    shot = tmp_path / "map.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,400", html.as_uri())
    _, _, colours = _pixels(shot.read_bytes())
    # The band's colour is painted by the band (and its legend entry, only shown with a
    # map); the failure marks share the legend's red, so test_timeline checks them in the DOM.
    assert bytes.fromhex(STATUS_COLOURS["running"][1:]) in colours
