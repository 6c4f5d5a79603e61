"""Configuration problems with a position, and the one exception that carries them all.

Every loader in ftsup (policies, daemon config) collects *all* problems it finds and raises a
single `ConfigError`, so a user fixes a file in one round instead of one error per run. Each
`Problem` names the file, the 1-based line and column, and the data path inside the document:

    policies/gpu.yaml:12:14 rules[3].match.log: missing ')'

This module holds data only (no I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int
"""One step of a data path: a mapping key or a sequence index."""


def format_path(path: Sequence[PathPart]) -> str:
    """Render a data path the way users read it: ``("rules", 3, "match", "log")`` -> ``rules[3].match.log``.

    Integers are sequence indexes (``[3]``); strings are mapping keys joined with dots. The empty
    path (the document root) renders as the empty string.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
        elif out:
            out.append(f".{part}")
        else:
            out.append(str(part))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one configuration file.

    `line` and `col` are 1-based; 0 means "no position" (e.g. the file cannot be read), in which
    case the position is left out of the rendering. `path` is the rendered data path
    (see `format_path`), empty for problems about the document as a whole.
    """

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        if self.path:
            return f"{where} {self.path}: {self.message}"
        return f"{where}: {self.message}"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        """Order problems by file, then position, for stable reports."""
        return (self.file, self.line, self.col, self.path, self.message)


class ConfigError(Exception):
    """One or more configuration problems, reported together.

    `problems` is never empty; `str(error)` is one problem per line, in the order given.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class StartupError(Exception):
    """The daemon cannot start for a reason a human must resolve (a halted job, unreadable state).

    The message says what is wrong and what to do; the CLI prints it and exits 2 without a traceback.
    """
