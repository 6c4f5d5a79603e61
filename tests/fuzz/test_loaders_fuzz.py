"""Hostile and broken input to the policy loader and the config loader.

Property: whatever the bytes of the file, `load_policies` / `load_config` return a valid result or
raise `ConfigError` whose every problem names the file, a line >= 0 and a field path (the empty
path only for the document as a whole): never another exception, never a hang (`bounded`).

Inputs are both near-valid documents (the shipped policy packs and the deploy/examples configs,
parsed, mutated as data: keys dropped, renamed, added, values swapped for wrong types, huge numbers,
deep nesting, unicode; then mutated as text: tabs, anchors, aliases, merge keys, duplicate keys,
foreign tags, truncation, binary garbage, very long lines) and raw bytes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import Config, load_config
from supervisor.errors import ConfigError
from tests.fuzz.support import bounded, fuzz_settings

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILES = sorted((ROOT / "policies").glob("*.yaml"))
CONFIG_FILES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
# Small shipped files keep each example cheap; the big ones are covered by test_shipped_policies.
POLICY_TEXTS = [p.read_text() for p in POLICY_FILES if p.stat().st_size < 16_000]
CONFIG_TEXTS = [p.read_text() for p in CONFIG_FILES]

HOSTILE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    10**100,
    -(10**30),
    1e308,
    float("inf"),
    float("nan"),
    "",
    " ",
    "x" * 5000,
    "30s",
    "-5m",
    "1e999",
    "((((((((((",
    "(?P<x",
    "\\",
    "a" * 70,
    "node-0; rm -rf / $(id) `id`",
    "--help",
    "ünïcödé ☃ 𝔘 \u202e",
    "\t",
    [],
    {},
    [1, "two", None],
    {"x": {"y": {"z": 1}}},
    {"<<": 1},
]


def _deep(depth: int) -> Any:
    out: Any = "leaf"
    for i in range(depth):
        out = [out] if i % 2 else {"k": out}
    return out


SNIPPETS = [
    "\t",
    "  ",
    "&a ",
    "*a",
    "*nope ",
    "<<: *a\n",
    "<<: [1, 2]\n",
    "!!python/object/apply:os.system ['id'] ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!custom ",
    "!!float ",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "? ",
    "? [a, b]\n: c\n",
    "{",
    "}",
    "[",
    "]",
    "'",
    '"',
    '"\\x',
    ": ",
    "- ",
    "#",
    "\x00",
    "\x07",
    "\ufeff",
    "\u2028",
    "\x85",
    "\ue000",
    "\U0001f600",
    "a" * 100_000,
    "- " * 2000,
    "[" * 3000,
    "{a: " * 3000,
    "0x" + "f" * 400,
    "1" * 5000,
    "1e400",
    ".nan",
    "-.inf",
    "~",
    "2001-12-14t21:59:43.10-05:00",
]

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)
RECURSIVE = "a: &a\n  b: *a\nrules: &r [*r]\n"


# ----------------------------------------------------------------------------- strategies


def _locations(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(data, dict):
        for k, v in data.items():
            out.extend(_locations(v, (*path, k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.extend(_locations(v, (*path, i)))
    return out


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated_data(draw: st.DrawFn, base: Any) -> Any:
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        locs = [p for p in _locations(data) if p]
        if not locs:
            return draw(st.sampled_from(HOSTILE_VALUES))
        path = draw(st.sampled_from(locs))
        parent = _parent(data, path)
        key = path[-1]
        how = draw(st.sampled_from(["drop", "retype", "text", "deep", "add", "rename", "dup"]))
        if how == "drop":
            del parent[key]
        elif how == "retype":
            parent[key] = draw(st.sampled_from(HOSTILE_VALUES))
        elif how == "text":
            parent[key] = draw(st.text(max_size=40))
        elif how == "deep":
            parent[key] = _deep(draw(st.sampled_from([5, 60, 400])))
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["zzz", "name", "match", "override", 7, "", "ü"]))] = draw(
                st.sampled_from(HOSTILE_VALUES)
            )
        elif how == "rename" and isinstance(parent, dict):
            parent[str(key).upper() + "x"] = parent.pop(key)
        elif how == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return data


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> str:
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["insert", "insert", "dupline", "truncate", "replace", "indent"]))
        pos = draw(st.integers(0, len(text)))
        if how == "insert":
            text = text[:pos] + draw(st.sampled_from(SNIPPETS) | st.text(max_size=8)) + text[pos:]
        elif how == "dupline":
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])  # a duplicate key, or a second list item
                text = "".join(lines)
        elif how == "truncate":
            text = text[:pos]
        elif how == "replace" and text:
            i = min(pos, len(text) - 1)
            text = text[:i] + draw(st.characters()) + text[i + 1 :]
        elif how == "indent":
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines[i] = draw(st.sampled_from(["\t", " ", "   "])) + lines[i]
                text = "".join(lines)
    return text


def _dump(data: Any) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=10_000)
    except (yaml.YAMLError, RecursionError):
        return "not: [valid"


def documents(texts: list[str]) -> st.SearchStrategy[bytes]:
    bases = [yaml.safe_load(t) for t in texts]
    near = st.sampled_from(bases).flatmap(mutated_data).map(_dump).flatmap(mutated_text)
    raw_text = st.sampled_from(texts).flatmap(mutated_text)
    special = st.sampled_from([BOMB, RECURSIVE, "", "\n", "---\n---\n", "[]", "null", "42", "'x'"])
    as_bytes = (near | raw_text | special).map(lambda t: t.encode("utf-8", "surrogatepass"))
    encoded = raw_text.flatmap(
        lambda t: st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"]).map(
            lambda enc: t.encode(enc, "replace")
        )
    )
    garbage = st.binary(max_size=2048)
    spliced = st.tuples(st.sampled_from(texts), st.binary(min_size=1, max_size=64), st.floats(0, 1)).map(
        lambda a: a[0].encode()[: int(len(a[0]) * a[2])] + a[1] + a[0].encode()[int(len(a[0]) * a[2]) :]
    )
    return st.one_of(as_bytes, as_bytes, as_bytes, encoded, garbage, spliced)


# ----------------------------------------------------------------------------- the property


def check_outcome(load: Callable[[], object], file: str, ok_type: type) -> None:
    """`load()` returns an `ok_type` or raises ConfigError naming `file`, a line >= 0 and a path."""
    try:
        with bounded():
            result = load()
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == file, p
            assert isinstance(p.line, int) and p.line >= 0, p
            assert isinstance(p.col, int) and p.col >= 0, p
            assert isinstance(p.path, str), p
            assert isinstance(p.message, str) and p.message.strip(), p
            assert "Traceback" not in p.message, p
        text = str(exc)
        assert text.startswith(file), text
        return
    assert isinstance(result, ok_type), type(result)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-policies") / "fuzzed.yaml"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config path laid out like deploy/examples/, so the examples' relative paths resolve."""
    root = tmp_path_factory.mktemp("fuzz-config")
    (root / "policies").symlink_to(ROOT / "policies")
    (root / "deploy").mkdir()
    (root / "deploy" / "slurm").symlink_to(ROOT / "deploy" / "slurm")
    (root / "deploy" / "examples").mkdir()
    return root / "deploy" / "examples" / "fuzzed.yaml"


@fuzz_settings(max_examples=400)
@given(doc=documents(POLICY_TEXTS))
def test_policy_loader_gives_a_policy_or_a_located_error(policy_file: Path, doc: bytes) -> None:
    policy_file.write_bytes(doc)
    check_outcome(lambda: load_policies([policy_file]), str(policy_file), PolicySet)


@fuzz_settings(max_examples=400)
@given(doc=documents(CONFIG_TEXTS))
def test_config_loader_gives_a_config_or_a_located_error(config_file: Path, doc: bytes) -> None:
    config_file.write_bytes(doc)
    check_outcome(lambda: load_config(config_file), str(config_file), Config)


def test_the_near_valid_generators_start_from_files_that_load(policy_file: Path, config_file: Path) -> None:
    """The mutations start from valid documents (else the fuzzers would only ever see errors)."""
    for text in POLICY_TEXTS:
        policy_file.write_text(text)
        assert isinstance(load_policies([policy_file]), PolicySet)
    for text in CONFIG_TEXTS:
        config_file.write_text(text)
        assert isinstance(load_config(config_file), Config)
