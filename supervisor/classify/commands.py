"""The policy tools behind ``ftsup policy check`` and ``ftsup policy explain`` (no daemon needed).

Both take policy paths (files or directories; none = the shipped ``policies/`` directory) and an
output stream, and return the process exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from supervisor.classify.matcher import LogClassifier, clean_text
from supervisor.classify.policy import PolicySet, Rule, load_policies
from supervisor.errors import ConfigError


def _paths(paths: Sequence[str | Path]) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    from supervisor.config import default_policy_dir

    return [default_policy_dir()]


def _load(paths: Sequence[str | Path], out: TextIO) -> PolicySet | None:
    try:
        return load_policies(_paths(paths))
    except ConfigError as exc:
        for p in exc.problems:
            print(str(p), file=out)
        n = len(exc.problems)
        print(f"{n} problem{'s' if n != 1 else ''}", file=out)
        return None


def policy_check(paths: Sequence[str | Path], out: TextIO) -> int:
    """Load the policies; print every problem (exit 1) or a one-line summary (exit 0)."""
    policy = _load(paths, out)
    if policy is None:
        return 1
    n_files = len(policy.files)
    print(
        f"ok: {len(policy.rules)} rules ({len(policy.log_rules)} log, {len(policy.metric_rules)} metric)"
        f" in {n_files} file{'s' if n_files != 1 else ''}",
        file=out,
    )
    return 0


def explain(line: str, paths: Sequence[str | Path], out: TextIO) -> int:
    """Show which rules match `line`, best first, and what the winner decides.

    Exit codes (grep-like): 0 a rule matches, 1 no rule matches, 2 the policies do not load.
    """
    policy = _load(paths, out)
    if policy is None:
        return 2
    classifier = LogClassifier(policy)
    cleaned = clean_text(line)
    matches = classifier.explain(cleaned)
    if not matches:
        print("no rule matches", file=out)
        return 1
    for i, rule in enumerate(matches):
        marker = "=>" if i == 0 else "  "
        print(
            f"{marker} {rule.name}  action={rule.action.value} scope={rule.scope.value}"
            f" class={rule.failure_class.value} role={rule.role.value} priority={rule.priority}"
            f"  ({rule.source})",
            file=out,
        )
    best = matches[0]
    print(f"wins: {_why_it_wins(best, matches)}", file=out)
    winner = classifier.classify("explain", cleaned, 0.0)
    if winner is not None:
        print(
            f"verdict: {winner.verdict.value} (signal {winner.signal}, severity {winner.severity.value})",
            file=out,
        )
        print(f"evidence: {winner.evidence}", file=out)
    else:
        print("verdict: none (a quiet rule: ignore at severity info yields no signal)", file=out)
    if best.description:
        print(f"why: {best.description}", file=out)
    if best.runbook:
        print(f"runbook: {best.runbook}", file=out)
    return 0


def _why_it_wins(best: Rule, matches: list[Rule]) -> str:
    """One sentence on why `best` (matches[0]) beats the other matching rules."""
    if len(matches) == 1:
        return "the only matching rule"
    runner_up = matches[1]
    if best.priority > runner_up.priority:
        return (
            f"highest priority ({best.priority}) of {len(matches)} matching rules"
            f" (next: {runner_up.name} at {runner_up.priority})"
        )
    return (
        f"declared first ({best.source}) among the rules at priority {best.priority}"
        f" (next: {runner_up.name}, {runner_up.source})"
    )
