"""YAML loading that remembers where every value came from, and typed checks that report positions.

`load_yaml` parses a document with PyYAML's *safe* composer (no Python object tags) and builds
plain data (dict / list / str / int / float / bool / None) while recording, for every data path,
the 1-based (line, col) of the value and, for mapping entries, of the key. A path such as
``("rules", 3, "match", "log")`` then maps to a position with `Document.position`, falling back to
the nearest enclosing value when the path is absent (e.g. a missing key is reported at its mapping).

Rejected as `ConfigError` (with file and position): YAML syntax errors, duplicate keys in one
mapping, non-scalar mapping keys, unsupported tags, recursive aliases, documents nested too
deeply, documents that expand (through aliases) to more than `MAX_NODES` values, several
documents in one file.

`Checker` is the toolkit loaders build on: typed getters (string, integer, number, boolean,
choice, duration, list of strings, mapping with allowed / required keys) that record a `Problem`
and return None instead of raising, so a loader reports every problem of a file in one go.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisor.errors import ConfigError, PathPart, Problem, format_path

DataPath = tuple[PathPart, ...]
Mark = tuple[int, int]  # 1-based (line, col)

MAX_NODES = 200_000
"""Upper bound on values built from one document (guards against alias 'billion laughs')."""

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Document:
    """A loaded YAML document: its plain data plus the position of every value and key.

    `values[path]` is where the value at `path` starts; `keys[path]` is where the mapping key
    of the entry at `path` starts (for sequence items, the item itself).
    """

    file: str
    data: Any
    values: Mapping[DataPath, Mark] = field(default_factory=dict)
    keys: Mapping[DataPath, Mark] = field(default_factory=dict)

    def position(self, path: Sequence[PathPart], *, key: bool = False) -> Mark:
        """The (line, col) of `path` (of its key when `key`); the nearest ancestor's value if absent."""
        p = tuple(path)
        if key and p in self.keys:
            return self.keys[p]
        while True:
            if p in self.values:
                return self.values[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def problem(self, path: Sequence[PathPart], message: str, *, key: bool = False) -> Problem:
        """A `Problem` located at `path` in this document."""
        line, col = self.position(path, key=key)
        return Problem(self.file, line, col, format_path(path), message)


class _TooBig(Exception):
    pass


class _Builder:
    """Walks a composed node graph into plain data, recording positions and problems."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.values: dict[DataPath, Mark] = {}
        self.keys: dict[DataPath, Mark] = {}
        self.problems: list[Problem] = []
        self.budget = MAX_NODES
        self.active: set[int] = set()

    def _problem(self, node: Node, path: DataPath, message: str) -> None:
        m = node.start_mark
        self.problems.append(Problem(self.file, m.line + 1, m.column + 1, format_path(path), message))

    def build(self, node: Node, path: DataPath) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooBig
        self.values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, ScalarNode):
            try:
                return self.loader.construct_object(node)
            except Exception as exc:
                self._problem(node, path, _yaml_message(exc) or f"invalid value for tag {node.tag}")
                return None
        if id(node) in self.active:
            self._problem(node, path, "recursive alias")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self._problem(node, path, f"unsupported tag {node.tag}")
                    return None
                out: list[Any] = []
                for i, item in enumerate(node.value):
                    self.keys.setdefault((*path, i), (item.start_mark.line + 1, item.start_mark.column + 1))
                    out.append(self.build(item, (*path, i)))
                return out
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    self._problem(node, path, f"unsupported tag {node.tag}")
                    return None
                return self._mapping(node, path)
            self._problem(node, path, "unsupported YAML node")
            return None
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: MappingNode, path: DataPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        first_seen: dict[Any, Mark] = {}
        merges: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                merges.append((key_node, value_node))
                continue
            key = self._key(key_node, path)
            if key is _BAD_KEY:
                continue
            kmark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            part = _path_part(key)
            if key in first_seen:
                line, col = first_seen[key]
                self._problem(
                    key_node, (*path, part), f"duplicate key {key!r} (first at line {line}, col {col})"
                )
                continue
            first_seen[key] = kmark
            self.keys[(*path, part)] = kmark
            out[key] = self.build(value_node, (*path, part))
        # YAML merge keys (`<<: *base`): explicit keys win, then earlier merge sources.
        for key_node, value_node in merges:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for src in sources:
                if not isinstance(src, MappingNode):
                    self._problem(key_node, path, "a merge key ('<<') needs a mapping or a list of mappings")
                    continue
                merged = self.build(src, (*path, "<<"))
                if not isinstance(merged, dict):
                    continue
                for key, value in merged.items():
                    if key not in out:
                        out[key] = value
                        part = _path_part(key)
                        sub = (*path, "<<", part)
                        for table in (self.values, self.keys):
                            for p, m in list(table.items()):
                                if p[: len(sub)] == sub:
                                    table.setdefault((*path, part, *p[len(sub) :]), m)
        return out

    def _key(self, key_node: Node, path: DataPath) -> Any:
        if not isinstance(key_node, ScalarNode):
            self._problem(key_node, path, "mapping keys must be scalars")
            return _BAD_KEY
        try:
            key = self.loader.construct_object(key_node)
            hash(key)
        except Exception as exc:
            self._problem(key_node, path, _yaml_message(exc) or "invalid mapping key")
            return _BAD_KEY
        return key


_BAD_KEY = object()


def _path_part(key: Any) -> PathPart:
    return key if isinstance(key, str) else str(key)


def _yaml_message(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        return ", ".join(parts)
    return str(exc)


def load_yaml(text: str | bytes, file: str) -> Document:
    """Parse one YAML document (safe tags only) keeping positions; raise `ConfigError` on any problem.

    `file` is only used in problem reports. An empty document yields ``data=None``.
    """
    loader: yaml.SafeLoader | None = None
    try:
        try:
            loader = yaml.SafeLoader(text)
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            raise ConfigError(
                [Problem(file, line, col, "", f"YAML syntax error: {_yaml_message(exc)}")]
            ) from None
        except yaml.YAMLError as exc:  # ReaderError (bad characters / encoding) and friends
            line, col = 1, 1
            pos = getattr(exc, "position", None)
            if isinstance(pos, int) and isinstance(text, str):
                line = text.count("\n", 0, pos) + 1
                col = pos - (text.rfind("\n", 0, pos) + 1) + 1
            if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
                msg = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
            else:
                msg = " ".join(str(exc).split())
            raise ConfigError([Problem(file, line, col, "", f"YAML error: {msg}")]) from None
        except RecursionError:
            raise ConfigError([Problem(file, 1, 1, "", "document nested too deeply")]) from None
        if node is None:
            return Document(file, None, {(): (1, 1)}, {})
        builder = _Builder(loader, file)
        try:
            data = builder.build(node, ())
        except _TooBig:
            raise ConfigError(
                [Problem(file, 1, 1, "", f"document expands to more than {MAX_NODES} values (alias bomb?)")]
            ) from None
        except RecursionError:
            raise ConfigError([Problem(file, 1, 1, "", "document nested too deeply")]) from None
        if builder.problems:
            raise ConfigError(sorted(builder.problems, key=Problem.sort_key))
        return Document(file, data, builder.values, builder.keys)
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: Path, display: str | None = None) -> Document:
    """Read and parse `path` (UTF-8); unreadable files become a `ConfigError` naming `display`."""
    name = display if display is not None else str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(name, 0, 0, "", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([Problem(name, line, col, "", "not valid UTF-8")]) from None
    return load_yaml(text, name)


# ----------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(
    r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$"
)


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``5m``, ``1h``, ``1h30m``, ``250ms``, or a bare number of seconds.

    Raises ValueError (with a user-facing message) for anything else, negatives, NaN and booleans.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m, got {_type_name(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        s = value.strip()
        try:
            seconds = float(s)
        except ValueError:
            m = _DURATION_RE.match(s)
            if not s or m is None or not any(m.groups()):
                raise ValueError(f"invalid duration {value!r} (expected e.g. 30s, 5m, 1h30m)") from None
            h, mi, sec, ms = (float(g) if g else 0.0 for g in m.groups())
            seconds = h * 3600 + mi * 60 + sec + ms / 1000
    else:
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m, got {_type_name(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r} (must be a finite, non-negative time)")
    return seconds


# ----------------------------------------------------------------------------- checks


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Checker:
    """Typed, position-aware access to a `Document` that records problems instead of raising.

    Every getter takes the data path and the value found there, returns the checked value, or
    records one `Problem` (at the value's position) and returns None. Loaders call many getters
    and raise a single `ConfigError(checker.problems)` at the end.
    """

    def __init__(self, doc: Document, problems: list[Problem] | None = None) -> None:
        self.doc = doc
        self.problems: list[Problem] = problems if problems is not None else []

    def problem(self, path: Sequence[PathPart], message: str, *, key: bool = False) -> None:
        self.problems.append(self.doc.problem(path, message, key=key))

    def mapping(
        self,
        path: DataPath,
        value: object,
        *,
        allowed: Collection[str],
        required: Collection[str] = (),
    ) -> dict[str, Any] | None:
        """`value` as a mapping whose keys are all in `allowed` and include every `required` one.

        Unknown keys are reported at the key; missing keys at the mapping. Returns the mapping
        (even when it has problems, so nested checks still run) or None when it is not a mapping.
        """
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {_type_name(value)}")
            return None
        expected = ", ".join(sorted(allowed))
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                self.problem(
                    (*path, _path_part(k)), f"unknown key {k!r} (expected one of: {expected})", key=True
                )
        for r in required:
            if r not in value:
                self.problem(path, f"missing required key {r!r}")
        return {k: v for k, v in value.items() if isinstance(k, str)}

    def string(
        self, path: DataPath, value: object, *, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> str | None:
        """A non-empty string, matching `pattern` (fully) when given; `what` describes the pattern."""
        if not isinstance(value, str):
            self.problem(path, f"expected a string, got {_type_name(value)}")
            return None
        if not value:
            self.problem(path, "must not be empty")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(path, f"invalid {what or 'value'} {value!r} (must match {pattern.pattern})")
            return None
        return value

    def integer(
        self, path: DataPath, value: object, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """An integer (booleans rejected) within [minimum, maximum]."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"expected an integer, got {_type_name(value)}")
            return None
        if minimum is not None and value < minimum:
            self.problem(path, f"must be >= {minimum}, got {value}")
            return None
        if maximum is not None and value > maximum:
            self.problem(path, f"must be <= {maximum}, got {value}")
            return None
        return value

    def number(
        self,
        path: DataPath,
        value: object,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> float | None:
        """A finite number (int or float; booleans rejected), > 0 when `positive`, within bounds."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(path, f"expected a number, got {_type_name(value)}")
            return None
        f = float(value)
        if not math.isfinite(f):
            self.problem(path, f"must be a finite number, got {value}")
            return None
        if positive and f <= 0:
            self.problem(path, f"must be > 0, got {value}")
            return None
        if minimum is not None and f < minimum:
            self.problem(path, f"must be >= {minimum:g}, got {value}")
            return None
        if maximum is not None and f > maximum:
            self.problem(path, f"must be <= {maximum:g}, got {value}")
            return None
        return f

    def boolean(self, path: DataPath, value: object) -> bool | None:
        """A YAML boolean (true / false); strings like "yes" in quotes are rejected."""
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {_type_name(value)}")
            return None
        return value

    def choice(self, path: DataPath, value: object, options: Sequence[str]) -> str | None:
        """One of `options` (exact, case-sensitive)."""
        if not isinstance(value, str) or value not in options:
            shown = repr(value) if isinstance(value, str) else _type_name(value)
            self.problem(path, f"invalid value {shown} (expected one of: {' | '.join(options)})")
            return None
        return value

    def duration(self, path: DataPath, value: object, *, positive: bool = False) -> float | None:
        """A duration in seconds (see `parse_duration`), > 0 when `positive`."""
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return None
        if positive and seconds <= 0:
            self.problem(path, f"must be a positive duration, got {value!r}")
            return None
        return seconds

    def string_list(self, path: DataPath, value: object) -> list[str] | None:
        """A list of non-empty strings; every bad item is reported. None if any item is bad."""
        if not isinstance(value, list):
            self.problem(path, f"expected a list of strings, got {_type_name(value)}")
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(value):
            s = self.string((*path, i), item)
            if s is None:
                ok = False
            else:
                out.append(s)
        return out if ok else None


def type_name(value: object) -> str:
    """How problems name the type of a value ("an integer (3)", "a mapping", "null")."""
    return _type_name(value)
