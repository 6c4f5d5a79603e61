"""Problems render as file:line:col path: message; YAML loading keeps every position."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.errors import ConfigError, Problem, format_path
from supervisor.yamlpos import Checker, load_yaml, load_yaml_file, parse_duration


def test_problem_renders_file_line_col_path_message() -> None:
    p = Problem("policies/gpu.yaml", 12, 14, "rules[3].match.log", "missing ')'")
    assert str(p) == "policies/gpu.yaml:12:14 rules[3].match.log: missing ')'"


def test_problem_without_position_or_path() -> None:
    assert str(Problem("x.yaml", 0, 0, "", "cannot read")) == "x.yaml: cannot read"
    assert str(Problem("x.yaml", 2, 1, "", "bad")) == "x.yaml:2:1: bad"


def test_config_error_is_one_problem_per_line() -> None:
    err = ConfigError([Problem("a", 1, 1, "x", "one"), Problem("b", 2, 3, "y[0]", "two")])
    assert str(err) == "a:1:1 x: one\nb:2:3 y[0]: two"
    assert len(err.problems) == 2
    with pytest.raises(ValueError):
        ConfigError([])


def test_format_path() -> None:
    assert format_path(("rules", 3, "match", "log")) == "rules[3].match.log"
    assert format_path((0, "a")) == "[0].a"
    assert format_path(()) == ""


DOC = """\
rules:
  - name: a
    match: {log: 'x'}
  - name: b
    examples:
      match: [one, two]
"""


def test_positions_of_keys_values_and_items() -> None:
    doc = load_yaml(DOC, "f.yaml")
    assert doc.data["rules"][1]["examples"]["match"] == ["one", "two"]
    assert doc.position(("rules", 0, "match", "log")) == (3, 18)
    assert doc.position(("rules", 0, "match", "log"), key=True) == (3, 13)
    assert doc.position(("rules", 1)) == (4, 5)
    assert doc.position(("rules", 1, "examples", "match", 1)) == (6, 20)
    # absent paths fall back to the nearest enclosing value
    assert doc.position(("rules", 1, "signal")) == (4, 5)
    assert str(doc.problem(("rules", 0, "match", "log"), "bad")) == "f.yaml:3:18 rules[0].match.log: bad"


def test_duplicate_keys_are_an_error_at_the_second_key() -> None:
    with pytest.raises(ConfigError) as ei:
        load_yaml("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert [str(p) for p in ei.value.problems] == ["f.yaml:3:1 a: duplicate key 'a' (first at line 1, col 1)"]


def test_syntax_error_has_position() -> None:
    with pytest.raises(ConfigError) as ei:
        load_yaml("a: [1, 2\nb: 3\n", "f.yaml")
    (p,) = ei.value.problems
    assert p.file == "f.yaml" and p.line >= 1 and "YAML syntax error" in p.message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("--- 1\n--- 2\n", "single document"),
        ("a: !!python/object:os.system x\n", "constructor"),
        ("a: !custom {b: 1}\n", "unsupported tag"),
        ("a: &x [*x]\n", "recursive alias"),
        ("? [a]\n: 1\n", "mapping keys must be scalars"),
        ("a: \x00\n", "unacceptable character"),
        ("[" * 3000, "nested too deeply"),
    ],
)
def test_rejected_documents(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_yaml(text, "f.yaml")
    assert needle in str(ei.value)


def test_alias_bomb_is_refused() -> None:
    lines = ["a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(ConfigError, match="alias bomb"):
        load_yaml("\n".join(lines), "f.yaml")


def test_merge_keys_and_empty_documents() -> None:
    doc = load_yaml("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n", "f.yaml")
    assert doc.data["m"] == {"x": 1, "y": 3}
    assert load_yaml("", "f.yaml").data is None
    assert load_yaml("# just a comment\n", "f.yaml").data is None


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: \xff\xfe\n")
    with pytest.raises(ConfigError) as ei:
        load_yaml_file(bad, "bad.yaml")
    assert str(ei.value) == "bad.yaml:2:4: not valid UTF-8"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("250ms", 0.25),
        (45, 45),
        (1.5, 1.5),
        ("90", 90),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5x", "-3s", -1, True, None, [1], "m", "1.5.2s", float("nan")])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_checker_collects_problems_instead_of_raising() -> None:
    doc = load_yaml("m: {a: 1, b: x, zz: 0}\n", "f.yaml")
    ck = Checker(doc)
    m = ck.mapping(("m",), doc.data["m"], allowed=("a", "b", "c"), required=("c",))
    assert m is not None
    assert ck.integer(("m", "a"), m["a"], minimum=2) is None
    assert ck.integer(("m", "b"), m["b"]) is None
    assert [str(p) for p in ck.problems] == [
        "f.yaml:1:17 m.zz: unknown key 'zz' (expected one of: a, b, c)",
        "f.yaml:1:4 m: missing required key 'c'",
        "f.yaml:1:8 m.a: must be >= 2, got 1",
        "f.yaml:1:14 m.b: expected an integer, got a string ('x')",
    ]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_loader_only_ever_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        load_yaml(text, "fuzz.yaml")
