"""`ftsup report --html`: the page's structure (golden outline), escaping, self-containment, the CLI.

Regenerate the outline after an intended change with
    FTSUP_REGEN_GOLDEN=1 .venv/bin/pytest tests/report/test_html.py
and review the diff.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

from supervisor.cli import main
from supervisor.journal import Journal
from supervisor.report.goodput import account
from supervisor.report.html import build_reports, parse_instant, render_html
from supervisor.vocabulary import (
    Decision,
    FailureClass,
    Incident,
    Mode,
    Role,
    Scope,
    Severity,
    Signal,
    Verdict,
)
from tests.test_timeline import T0, populate

GOLDEN = Path(__file__).parent / "golden" / "report_outline.txt"
REGEN = os.environ.get("FTSUP_REGEN_GOLDEN") == "1"
_KEEP = (
    "id",
    "class",
    "data-job",
    "data-node",
    "data-state",
    "data-category",
    "data-metric",
    "data-incident",
)


class Outline(HTMLParser):
    """Tags with their identifying attributes, indented by depth; the text and geometry left out."""

    VOID: ClassVar[frozenset[str]] = frozenset({"meta", "br"})

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.depth = 0
        self.values: dict[str, list[str]] = {}
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.attributes.update(a)
        keep = " ".join(f"{k}={a[k]}" for k in _KEEP if a.get(k) is not None)
        self.lines.append("  " * self.depth + tag + (f" [{keep}]" if keep else ""))
        if a.get("data-metric") is not None:
            self.values.setdefault(str(a["data-metric"]), []).append(a.get("data-value") or "")
        if tag not in self.VOID:
            self.depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.depth -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID:
            self.depth -= 1


def _outline(page: str) -> Outline:
    parser = Outline()
    parser.feed(page)
    return parser


def test_the_page_structure_matches_the_golden_outline(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    populate(j)
    page = render_html(build_reports(j), "journal.db")
    outline = "\n".join(_outline(page).lines) + "\n"
    if REGEN:
        GOLDEN.write_text(outline, encoding="utf-8")
    assert outline == GOLDEN.read_text(encoding="utf-8"), f"{GOLDEN} differs; regenerate and review"
    assert render_html(build_reports(j), "journal.db") == page  # deterministic: no clock, no randomness


def test_the_numbers_on_the_page_are_the_journal_s(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    populate(j)
    (report,) = build_reports(j, "llama")
    values = _outline(render_html([report], "j.db")).values
    g = account(j, "llama")
    assert values["ettr"] == [repr(g.ettr)]
    assert values["wall_s"] == [repr(g.wall_s)]
    for category, seconds in g.seconds:
        assert values[f"{category}_s"] == [repr(seconds)]
    assert values["mtbf_s"] == [repr(c.mtbf_s) for c in g.classes]


def test_evidence_from_logs_is_escaped_never_injected(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>\"' & \x1b[31m"
    s = Signal("r<b>", "x", 'node"><svg onload=alert(3)>', T0, FailureClass.RECOVERABLE, Scope.JOB,
               Verdict.RESTART, Severity.CRITICAL, Role.CAUSE, evil)  # fmt: skip
    j.add_attempt("job<i>", 0, ['node"><svg onload=alert(3)>'], T0 - 10, None)
    j.add_incident(Incident("inc-1", "job<i>", 0, T0, s, (s,)))
    j.add_decision(Decision("inc-1", Verdict.RESTART, "<u>why</u>", T0 + 1), Mode.OBSERVE)
    page = render_html(build_reports(j), "<journal>")
    assert "<script" not in page and "<img" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page and "<b>" not in page and "<u>" not in page
    parser = _outline(page)
    assert not [line for line in parser.lines if line.strip().split(" ")[0] in {"script", "img", "iframe"}]
    assert not [name for name in parser.attributes if name.startswith("on")]


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    populate(j)
    page = render_html(build_reports(j), "j.db")
    assert "src=" not in page and "href=" not in page and "@import" not in page and "url(" not in page
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http:") == 0
    assert "https:" not in page
    assert "default-src 'none'" in page


def test_the_cli_writes_the_report_and_refuses_bad_input(tmp_path: Path, capsys: object) -> None:
    db = tmp_path / "j.db"
    j = Journal(db)
    populate(j)
    j.close()
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--html", str(out), "--journal", str(db), "--job", "llama"]) == 0
    assert 'data-job="llama"' in out.read_text() and 'data-job="gpt"' not in out.read_text()
    args = ["report", "--html", str(out), "--journal", str(db), "--from", "2024-05-01T13:00:00Z"]
    assert main([*args, "--to", "2024-05-01T13:30:00Z"]) == 0
    assert main([*args, "--to", "yesterday"]) == 2
    assert main([*args, "--to", "2024-05-01T12:00:00Z"]) == 2  # before --from
    assert main(["report", "--html", str(out), "--journal", str(tmp_path / "none.db")]) == 2
    assert main(["report", "--html", str(out), "--journal", str(db), "--job", "nobody"]) == 2


def test_times_parse_as_iso_or_epoch() -> None:
    assert parse_instant("2024-05-01T12:00:00Z") == T0
    assert parse_instant("2024-05-01T14:00:00+02:00") == T0
    assert parse_instant("2024-05-01T12:00:00") == T0
    assert parse_instant(str(T0)) == T0
