"""The report of a real journal, rendered by headless Chromium (Debian's ``chromium``).

The journal is the engine's own, written while it read real trainer fault logs (`realjournal`); the page
is written by the real CLI (`python -m supervisor report`). Chromium's rendered DOM must hold the swimlane
(a lane per node, node-1 cordoned), the goodput chart, and the very numbers `account()` computes from the
journal; a screenshot is taken and must be a real, non-blank PNG.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from supervisor.journal import Journal
from supervisor.report.goodput import CATEGORIES, account
from tests.report.realjournal import build_real_journal

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,1000"]


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a.get("class", "").split()]

    def metric(self, name: str) -> list[str]:
        return [a["data-value"] for _, a in self.elements if a.get("data-metric") == name]


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _png_is_not_blank(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decoded image data): a blank page has very few."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh)")
def test_the_report_of_a_real_journal_renders_in_chromium_with_the_journal_s_numbers(tmp_path: Path) -> None:
    db = build_real_journal(tmp_path / "ftsup.db")
    page = tmp_path / "report.html"
    subprocess.run(
        [sys.executable, "-m", "supervisor", "report", "--html", str(page), "--journal", str(db)],
        check=True,
        timeout=60,
        capture_output=True,
    )
    journal = Journal(db)
    g = account(journal, "job")
    journal.close()

    dom = _Dom()
    dom.feed(_chromium(["--dump-dom", page.as_uri()], tmp_path).stdout)
    (swimlane,) = dom.with_class("swimlane")
    assert swimlane["data-job"] == "job"
    lanes = {a["data-node"] for a in dom.with_class("lane")}
    assert lanes == {"node-0", "node-1", "node-2"}
    states = {(a["data-node"], a["data-state"]) for a in dom.with_class("seg")}
    assert ("node-1", "cordoned") in states and ("node-2", "training") in states
    assert {("node-0", s) for s in ("training", "down", "restarting")} <= states
    assert len(dom.with_class("incident-marker")) == 3
    (chart,) = dom.with_class("goodput-chart")
    assert chart["id"] == "goodput-chart-job"
    assert {a["data-category"] for a in dom.with_class("bar-fill")} == set(CATEGORIES)
    assert [float(a["data-value"]) for a in dom.with_class("stack")] == [g.of(c) for c in CATEGORIES]
    # The figures on the page are the journal's, exactly.
    assert dom.metric("ettr") == [repr(g.ettr)]
    assert dom.metric("wall_s") == [repr(g.wall_s)]
    for category, seconds in g.seconds:
        assert dom.metric(f"{category}_s") == [repr(seconds)]
    assert dom.metric("mtbf_s") == [repr(c.mtbf_s) for c in g.classes]
    assert dom.metric("mttr_s") == [repr(c.mttr_s) if c.mttr_s is not None else "" for c in g.classes]
    assert g.ettr is not None and 0 < g.ettr < 1

    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", page.as_uri()], tmp_path)
    width, height, distinct = _png_is_not_blank(shot.read_bytes())
    assert (width, height) == (1400, 1000)
    assert shot.stat().st_size > 20_000 and distinct > 50, (shot.stat().st_size, distinct)
