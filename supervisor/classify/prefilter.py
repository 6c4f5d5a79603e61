"""A CloudWatch Logs filter pattern derived from the loaded policies (server-side prefilter).

Most of what a healthy training job logs (per-step JSON lines, NCCL INFO chatter, progress bars)
matches no rule. `derive_filter_pattern` computes a `filterPattern` for FilterLogEvents that lets
through a **superset** of the lines the daemon needs, so CloudWatch sends only failure candidates:
fewer pages per poll (API calls), fewer bytes pulled, less memory.

What must pass, and so is keyed:
* every log rule that can yield a signal (quiet rules, ``ignore`` at severity ``info``, only keep
  other rules off a line: dropping their lines changes no signal, so they are not keyed);
* the traceback structure the `StreamClassifier` folds on (`STRUCTURE_KEYS`): a traceback header
  or frame line, Python's "Exception ignored in:", C++'s "terminate called ...", and the chain
  markers ("The above exception was the direct cause ...", "During handling ..."), whose loss would
  split one chained traceback into two signals;
* the engine's progress patterns for resume and checkpoint lines (`supervisor.config.ProgressPatterns`),
  and the step pattern only when asked (`include_step`): per-step lines are most of a healthy job's
  volume, so the daemon reads training progress from the ``step`` metric instead when the metrics
  source provides it (`supervisor.engine.Engine.progress_metric`).

How a pattern is keyed: each RE2 pattern is parsed (CPython's regex parser; RE2-only syntax such as
``\\p{..}``, ``\\Q..\\E`` or POSIX classes makes it unkeyable) into a set of literals of which every
match must contain at least one (a necessary set: a literal run of a concatenation, the union over
the branches of an alternation, nothing for an optional part). Case-insensitive letters become
classes (``[Ss]``; keyed on their ASCII forms only: RE2 also folds the Kelvin sign and the long s).
Two literal pieces of one concatenation separated by a part that can never match a line break
(``[\\d :.]*``, ``[^\\n]*``; not ``\\s``) also give a gapped literal ``A.*B``. Each literal is cut
to a run CloudWatch's regex syntax can express, with at least `MIN_LITERAL_ATOMS` characters other
than wildcards; where a pattern offers several necessary sets, the one that a built-in sample of
healthy lines (`HEALTHY_SAMPLE`) passes least is taken (this only tunes savings, never soundness).
A pattern without such a set (``\\d+ errors``, a single word shorter than 3 characters) is
**unkeyable**: the derivation says which and why, and returns no pattern (no server-side filter:
correctness over savings).

The pattern emitted is one standalone CloudWatch regex ``%lit1|lit2|...%`` (documented:
https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/FilterAndPatternSyntax.html, "Supported
regular expressions"): it matches an event when one literal occurs anywhere in the message (the
docs' own example: ``%AUTHORIZED%`` matches ``UNAUTHORIZED``), case-sensitively. Only characters the
docs allow are used: letters, digits, ``_ # = @ / ; , -``, the escaped dot ``\\.``, classes of
letters or digits, ``.`` for any other printable ASCII character of a literal (space, quote, colon,
parenthesis: the syntax has no way to write them, and any character is a superset) and ``.*`` for a
gap; never a multi-byte character. The whole pattern fits FilterLogEvents' 1,024-character limit:
the literals are chosen by a greedy set cover (a literal shared by many patterns, such as ``CUDA``
or ``Xid``, keys them all), each cut to its most selective window of a size that a binary search
shrinks (down to 3 characters) until the pattern fits; one that cannot fit is not emitted.
Short windows pass more healthy lines (``line``, ``with``): correct, less saving. Why not
``?"term1" ?"term2"``: the docs say terms are words or phrases and never state that a term matches
inside a word (``Error`` in ``KeyError``), which the rules need.

`cloudwatch_matches` implements these semantics in Python (tests prove the superset property with
it). moto's FilterLogEvents does not implement regex patterns and returns every event for them (a
superset: correct, no savings); no OR form exists that both moto and CloudWatch filter on.

Limits of the superset property, stated: CloudWatch matches the raw message while the rules see it
after `clean_text` (ANSI escapes and control characters removed), so an escape sequence *inside* a
keyed literal hides the line; and a dropped line that matches nothing can still change how the
`StreamClassifier` folds a traceback in two shapes (a line between "Exception ignored in:" and its
traceback; an indented failure line right after an exception line that no rule matches).
"""

from __future__ import annotations

import functools
import heapq
import importlib
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from supervisor.classify.matcher import STRUCTURE_PATTERNS, is_quiet
from supervisor.classify.policy import LogMatch, PolicySet, Rule

if TYPE_CHECKING:
    from supervisor.config import ProgressPatterns

__all__ = [
    "GAP",
    "HEALTHY_SAMPLE",
    "MAX_PATTERN_CHARS",
    "MIN_LITERAL_ATOMS",
    "STRUCTURE_KEYS",
    "Derivation",
    "Key",
    "Unkeyable",
    "cloudwatch_matches",
    "derive_filter_pattern",
    "literal_regex",
    "necessary_literals",
]

MAX_PATTERN_CHARS = 1024
"""FilterLogEvents' limit on `filterPattern` (botocore's service model: max 1024)."""

MIN_LITERAL_ATOMS = 3
"""A literal shorter than this passes too much to be worth keying: the pattern is then unkeyable."""

_MAX_SET = 16  # literals in one necessary set (alternations beyond this are not expanded)
_MAX_SEQ = 48  # characters in one literal before a concatenation starts a new one
_CLASS_MAX = 6  # a character class of up to this many characters is kept as one position
_SIZES = (16, 12, 10, 8, 7, 6, 5, 4, 3)  # window sizes tried (positions) until the pattern fits

# Characters a CloudWatch regex may contain as themselves ("Supported symbol characters"), the
# ones emitted escaped, and those allowed inside a class.
_PLAIN = frozenset(string.ascii_letters + string.digits + "_#=@/;,-")
_ESCAPED = {".": r"\."}
_CLASSABLE = frozenset(string.ascii_letters + string.digits + "_")
# What `cloudwatch_matches` accepts in a regex: symbols and operators the docs list (':' included,
# as the current page does).
_REGEX_ALLOWED = frozenset(string.ascii_letters + string.digits + "_#=@/;,-:" + "^$?[]{}|\\*+.")

STRUCTURE_KEYS: tuple[tuple[str, str], ...] = (
    ("structure:traceback", STRUCTURE_PATTERNS[0]),
    ("structure:exception-ignored", STRUCTURE_PATTERNS[1]),
    ("structure:frame", STRUCTURE_PATTERNS[2]),
    ("structure:terminate", STRUCTURE_PATTERNS[3]),
    # units._CHAIN_RE: a chained exception continues the same traceback unit.
    (
        "structure:chain",
        r"^\s*(?:The above exception was the direct cause of the following exception:"
        r"|During handling of the above exception, another exception occurred:)\s*$",
    ),
)
"""Lines that change how `StreamClassifier` folds tracebacks, keyed like rules. Not keyed, on
purpose: rich traceback boxes (quoted source: never evidence, never open a unit), raise lines and
``what():`` lines (they change nothing unless a rule matches them), blank lines (they only keep a
unit open, as dropping them does), and exception lines no rule matches (unkeyable: any word)."""

HEALTHY_SAMPLE: tuple[str, ...] = (
    '{"ts": 1795840000.123, "job": "llm-70b", "node": "node-3", "rank": 27, "local_rank": 3, '
    '"attempt": 0, "event": "step", "step": 1041, "loss": 2.3141, "step_time_s": 1.042, '
    '"tokens_per_s": 31874.4}',
    '{"ts": 1795840001.5, "job": "llm-70b", "node": "node-0", "rank": 0, "event": "checkpoint_started", '
    '"step": 1000, "path": "/fsx/ckpt/step_1000"}',
    '{"ts": 1795840002.0, "job": "llm-70b", "node": "node-0", "rank": 0, "event": "start", '
    '"world_size": 512, "backend": "nccl", "device": "cuda:0", "pid": 4242}',
    "node-3:4242:4242 [3] NCCL INFO Channel 07/32 :    0   1   2   3   4   5   6   7",
    "node-3:4242:4242 [3] NCCL INFO NCCL_IB_TIMEOUT set by environment to 22.",
    "node-3:4242:4242 [3] NCCL INFO NET/OFI Selected Provider is efa (found 4 nics)",
    "node-3:4242:4242 [3] NCCL INFO comm 0x55559f2c rank 27 nRanks 512 nNodes 64 localRanks 8 localRank 3",
    "node-3:4242:4242 [3] NCCL INFO Connected all rings, use ring PXN 0 GDR 1",
    "node-3:4242:4242 [3] NCCL INFO ncclCommInitRank comm 0x55559f2c rank 27 nranks 512 - Init COMPLETE",
    "node-3:4242:4242 [3] NCCL INFO Using network Libfabric",
    "[rank27]:[W1128 04:10:11.123456 4242 torch/distributed/fsdp/_state_dict_utils.py:827] Warning: "
    "FSDP.state_dict_type() and FSDP.set_state_dict_type() are being deprecated.",
    "/opt/conda/lib/python3.11/site-packages/torch/utils/checkpoint.py:464: UserWarning: "
    "torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly.",
    "2026-11-28 04:10:11,123 - INFO - megatron.training - iteration 1041/ 100000 | consumed samples: "
    "532992 | elapsed time per iteration (ms): 1042.2 | learning rate: 2.9E-04 | lm loss: 2.314100E+00 | "
    "loss scale: 1.0 | grad norm: 0.412 | number of skipped iterations: 0 |",
    "[2026-11-28 04:10:11,123] [INFO] [logging.py:96:log_dist] [Rank 0] step=1041, skipped=0, "
    "lr=[0.0003], mom=[(0.9, 0.95)]",
    "I1128 04:10:11.123456 4242 torch/distributed/elastic/agent/server/api.py:525] [default] "
    "Rendezvous complete for workers. Result:",
    "INFO:torch.distributed.elastic.agent.server.api:[default] Starting worker group",
    " 45%|████▌     | 1041/100000 [1:02:03<1:15:00, 1.04s/it]",
    "[2026-11-28 04:10:11] checkpoint saved to /fsx/ckpt/step_1000 in 41.212s",
    "Epoch 3/10: train_loss=2.3141 val_loss=2.4012 lr=2.9e-04 throughput=31874 tokens/s",
    "wandb: Syncing run llm-70b-run-17",
    "Loading checkpoint shards: 100%|██████████| 30/30 [00:12<00:00,  2.45it/s]",
    "Using /root/.cache/torch_extensions/py311_cu121 as PyTorch extensions root...",
    "[INFO] Memory: allocated 61.2 GiB, reserved 70.4 GiB, max allocated 66.0 GiB",
    "dataloader: 16 workers, prefetch_factor 2, pin_memory True",
    "Starting training loop at step 1000 (resumed from /fsx/ckpt/step_1000)",
    "srun: job 123456 queued and waiting for resources",
    "srun: job 123456 has been allocated resources",
    "[2026-11-28T04:10:11Z] heartbeat node-3 ok",
    "[W socket.cpp:663] [c10d] The client socket has failed to connect to [node-0]:29500 "
    "(errno: 99 - Cannot assign requested address).",
    "[W1128 04:10:11.123456 4242 torch/distributed/elastic/multiprocessing/redirects.py:27] NOTE: "
    "Redirects are currently not supported in Windows or MacOs.",
    "node-3:4242:4242 [3] NCCL INFO NET/Plugin: Failed to find ncclNetPlugin_v8 symbol.",
    "Processed 1280 samples in 12.0 s (106.7 samples/s); total 532992, errors 0, retries 0",
)
"""Typical healthy lines, used only to choose among sound literal sets (the least-passed wins)."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Key:
    """What one rule / structure / progress pattern was keyed on (CloudWatch regex pieces)."""

    name: str
    literals: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Derivation:
    """The outcome of `derive_filter_pattern`.

    pattern: the `filterPattern` to send, or None for no server-side filter (some pattern is
        unkeyable, or the keys do not fit the length limit): then `unkeyable` says why.
    keys: what each keyed pattern contributes. skipped: (name, why) of rules not keyed on purpose.
    includes_step: whether per-step progress lines pass (False: read progress from the step metric).
    """

    pattern: str | None
    keys: tuple[Key, ...] = ()
    unkeyable: tuple[tuple[str, str], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    includes_step: bool = True
    literals: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """One line for a log or a CLI."""
        if self.pattern is None:
            why = "; ".join(f"{n}: {w}" for n, w in self.unkeyable[:5]) or "not derived"
            return f"no server-side filter ({why})"
        return (
            f"{len(self.literals)} literals from {len(self.keys)} patterns, {len(self.pattern)} chars"
            f"{'' if self.includes_step else ', step lines filtered out'}: {self.pattern}"
        )


# ----------------------------------------------------------------------------- literal sets

# A literal is a str: ordinary characters stand for themselves, a character class (a position that
# may hold any of a few characters: [EF], a case-insensitive letter) is one code point of Unicode's
# private use area, registered in _CLASSES. So containment of literals is mostly `in`.
Seq = str
_CLASSES: dict[frozenset[str], str] = {}
_CLASS_CHARS: dict[str, frozenset[str]] = {}
_PRIVATE = 0xF0000  # supplementary private use area: no log text is matched against these codes

_IGNORECASE = int(re.IGNORECASE)


def _class_code(chars: frozenset[str]) -> str:
    if len(chars) == 1:
        return next(iter(chars))
    code = _CLASSES.get(chars)
    if code is None:
        code = chr(_PRIVATE + len(_CLASSES))
        _CLASSES[chars] = code
        _CLASS_CHARS[code] = chars
    return code


class Unkeyable(ValueError):
    """A pattern that no literal set can key (the message says why)."""


@dataclass(frozen=True, slots=True)
class _Info:
    exact: frozenset[Seq] | None  # every string the node can match, when few and known
    req: frozenset[Seq] | None  # every match contains one of these; None: nothing known


_NOTHING = _Info(None, None)
_EMPTY = _Info(frozenset({""}), None)


def _parser() -> Any:
    return importlib.import_module("re._parser")


def _chars(ch: str, flags: int) -> frozenset[str]:
    if flags & _IGNORECASE and ch.isascii() and ch.isalpha():
        return frozenset({ch.lower(), ch.upper()})
    return frozenset({ch})


GAP = chr(_PRIVATE - 1)
"""A position standing for any text without a line break (written ``.*``)."""

_NEWLINE_CATEGORIES = frozenset({"CATEGORY_SPACE", "CATEGORY_NOT_DIGIT", "CATEGORY_NOT_WORD"})


def _no_newline(op: str, av: Any, flags: int) -> bool:
    """Whether the parsed node `op`/`av` can never match a line break (so ``.*`` spans it)."""
    if op == "LITERAL":
        return bool(av != 10)
    if op == "NOT_LITERAL":
        return bool(av == 10)
    if op == "ANY":
        return not flags & int(re.DOTALL)
    if op in ("AT", "ASSERT", "ASSERT_NOT"):
        return True
    if op == "IN":
        negate, has = False, False
        for iop, iav in av:
            name = str(iop)
            if name == "NEGATE":
                negate = True
            elif name == "LITERAL":
                has = has or iav == 10
            elif name == "RANGE":
                has = has or iav[0] <= 10 <= iav[1]
            elif name == "CATEGORY":
                has = has or str(iav) in _NEWLINE_CATEGORIES
            else:
                return False
        return has if negate else not has
    if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        return all(_no_newline(str(o), a, flags) for o, a in av[2])
    if op == "SUBPATTERN":
        _group, add, remove, sub = av
        return all(_no_newline(str(o), a, (flags | add) & ~remove) for o, a in sub)
    if op == "ATOMIC_GROUP":
        return all(_no_newline(str(o), a, flags) for o, a in av)
    if op == "BRANCH":
        return all(_no_newline(str(o), a, flags) for alt in av[1] for o, a in alt)
    return False


@functools.lru_cache(maxsize=1 << 16)
def _emit_pos(code: str) -> str | None:
    """How one position is written in a CloudWatch regex; None where it cannot be.

    Printable ASCII the syntax does not allow (space, quotes, ':', parentheses ...) is written as
    ``.`` (any character): weaker, still a superset."""
    if code == GAP:
        return ".*"
    chars = _CLASS_CHARS.get(code)
    if chars is not None:
        return "[" + "".join(sorted(chars)) + "]" if all(c in _CLASSABLE for c in chars) else None
    if code in _PLAIN:
        return code
    if code in _ESCAPED:
        return _ESCAPED[code]
    if code == "\t" or " " <= code <= "~":
        return "."
    return None


def _is_wild(code: str) -> bool:
    return _emit_pos(code) in (".", ".*")


@functools.lru_cache(maxsize=1 << 16)
def _emit(seq: Seq) -> str:
    parts = [_emit_pos(c) for c in seq]
    if any(p is None for p in parts):  # pragma: no cover - callers pass emittable runs only
        raise ValueError("not an emittable literal")
    return "".join(p for p in parts if p is not None)


def _solid(seq: Seq) -> int:
    """Positions of `seq` that are not wildcards."""
    return sum(1 for c in seq if not _is_wild(c))


def _common(seq: Seq) -> int:
    """How likely a literal is in ordinary text: 2 digits only, 1 lowercase letters (or letter
    classes) only, 0 with capitals, symbols or a mix (a tie-breaker after the sample's verdict)."""
    solid = [c for c in seq if not _is_wild(c)]
    if all(c.isdigit() for c in solid):
        return 2
    if all(c.islower() or c in _CLASS_CHARS for c in solid):
        return 1
    return 0


def _runs(seq: Seq) -> list[Seq]:
    """The maximal emittable runs of `seq` (without wildcards at either end) that have at least
    MIN_LITERAL_ATOMS non-wildcard positions."""
    out: list[Seq] = []
    for part in re.split("|".join(map(re.escape, {c for c in seq if _emit_pos(c) is None})) or "$^", seq):
        lo, hi = 0, len(part)
        while lo < hi and _is_wild(part[lo]):
            lo += 1
        while hi > lo and _is_wild(part[hi - 1]):
            hi -= 1
        run = part[lo:hi]
        if _solid(run) >= MIN_LITERAL_ATOMS:
            out.append(run)
    return out


class _Scorer:
    """Counts the sample lines a literal passes (cached)."""

    def __init__(self, sample: Sequence[str]) -> None:
        self.sample = tuple(sample)
        self._hits: dict[Seq, frozenset[int]] = {}

    def hits(self, seq: Seq) -> frozenset[int]:
        got = self._hits.get(seq)
        if got is None:
            rx = re.compile(_emit(seq))
            got = frozenset(i for i, line in enumerate(self.sample) if rx.search(line))
            self._hits[seq] = got
        return got

    def best_run(self, seq: Seq) -> Seq | None:
        runs = _runs(seq)
        if not runs:
            return None
        return min(runs, key=lambda r: (len(self.hits(r)), _common(r), -_solid(r), r))

    def score(self, cand: frozenset[Seq]) -> tuple[int, int, int, int] | None:
        """Lower is better; None when some literal has no emittable run (or the set is empty)."""
        if not cand or "" in cand:
            return None
        chosen: list[Seq] = []
        for s in cand:
            run = self.best_run(s)
            if run is None:
                return None
            chosen.append(run)
        passed: set[int] = set()
        for r in chosen:
            passed |= self.hits(r)
        return (
            len(passed),
            sum(_common(r) for r in set(chosen)),
            len(set(chosen)),
            -min(map(_solid, chosen)),
        )

    def best(self, cands: Iterable[frozenset[Seq] | None]) -> frozenset[Seq] | None:
        """The best-scoring usable candidate set (ties: the first in sorted literal order)."""
        chosen: frozenset[Seq] | None = None
        chosen_key: tuple[tuple[int, int, int, int], list[str]] | None = None
        for cand in cands:
            if cand is None:
                continue
            score = self.score(cand)
            if score is None:
                continue
            key = (score, sorted(cand))
            if chosen_key is None or key < chosen_key:
                chosen, chosen_key = cand, key
        return chosen


class _Walker:
    """Computes `_Info` over CPython's parse tree of a pattern (see the module docstring)."""

    def __init__(self, scorer: _Scorer) -> None:
        self.scorer = scorer

    def concat(self, items: Iterable[tuple[Any, Any]], flags: int) -> _Info:
        run: set[Seq] = {""}
        exact_ok = True
        cands: list[frozenset[Seq] | None] = []
        # Literal pieces in order, and whether what lies between two neighbours can never hold a
        # line break: then "A, anything, B" is necessary too, written A.*B (more selective than A).
        pieces: list[frozenset[Seq]] = []
        links: list[bool] = []
        link = True
        for op, av in items:
            info = self.node(str(op), av, flags)
            ex = info.exact
            if (
                ex is not None
                and len(run) * len(ex) <= _MAX_SET
                and max(map(len, run)) + max(map(len, ex)) <= _MAX_SEQ
            ):
                run = {a + b for a in run for b in ex}
                continue
            exact_ok = False
            cands.append(frozenset(run))
            cands.append(info.req)
            if run != {""}:
                if pieces:
                    links.append(link)
                pieces.append(frozenset(run))
                link = True
            if ex is None:
                link = link and _no_newline(str(op), av, flags)
            run = set(ex) if ex is not None and len(ex) <= _MAX_SET else {""}
        cands.append(frozenset(run))
        if run != {""} and pieces:
            links.append(link)
            pieces.append(frozenset(run))
        for k, ok in enumerate(links):
            a, b = pieces[k], pieces[k + 1]
            if ok and len(a) * len(b) <= _MAX_SET:
                cands.append(frozenset(x + GAP + y for x in a for y in b))
        return _Info(frozenset(run) if exact_ok else None, self.scorer.best(cands))

    def node(self, op: str, av: Any, flags: int) -> _Info:
        if op == "LITERAL":
            return _Info(frozenset({_class_code(_chars(chr(av), flags))}), None)
        if op in ("AT", "ASSERT", "ASSERT_NOT"):
            return _EMPTY  # zero width (a lookaround's constraint is ignored: still sound)
        if op == "IN":
            chars = self._class(av, flags)
            return _NOTHING if chars is None else _Info(frozenset({_class_code(chars)}), None)
        if op == "SUBPATTERN":
            _group, add, remove, sub = av
            return self.concat(sub, (flags | add) & ~remove)
        if op == "ATOMIC_GROUP":
            return self.concat(av, flags)
        if op == "BRANCH":
            return self.branch(av[1], flags)
        if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = av
            if lo == 0:
                if hi != 1:
                    return _NOTHING
                opt = self.concat(sub, flags)  # x? : the empty string or x
                if opt.exact is None or len(opt.exact) >= _MAX_SET:
                    return _NOTHING
                return _Info(opt.exact | {""}, None)
            info = self.concat(sub, flags)
            exact = None
            if info.exact is not None and lo == hi and len(info.exact) ** lo <= _MAX_SET:
                seqs: set[Seq] = {""}
                for _ in range(lo):
                    seqs = {a + b for a in seqs for b in info.exact}
                if all(len(s) <= _MAX_SEQ for s in seqs):
                    exact = frozenset(seqs)
            return _Info(exact, self.scorer.best([info.exact, info.req]))
        if op in ("GROUPREF", "GROUPREF_EXISTS"):
            raise Unkeyable("backreferences are not supported")
        return _NOTHING  # ANY, NOT_LITERAL, CATEGORY, ...: matches something unknown

    def branch(self, alternatives: Sequence[Any], flags: int) -> _Info:
        infos = [self.concat(alt, flags) for alt in alternatives]
        exact: frozenset[Seq] | None = None
        if all(i.exact is not None for i in infos):
            union = frozenset(s for i in infos if i.exact is not None for s in i.exact)
            exact = union if len(union) <= _MAX_SET else None
        reqs = [self.scorer.best([i.exact, i.req]) for i in infos]
        req = None
        if all(r is not None for r in reqs):
            req = frozenset(s for r in reqs if r is not None for s in r)
        return _Info(exact, self.scorer.best([exact, req]))

    def _class(self, items: Sequence[tuple[Any, Any]], flags: int) -> frozenset[str] | None:
        chars: set[str] = set()
        for op, av in items:
            name = str(op)
            if name == "LITERAL":
                chars |= _chars(chr(av), flags)
            elif name == "RANGE":
                lo, hi = av
                if hi - lo >= _CLASS_MAX:
                    return None
                for c in range(lo, hi + 1):
                    chars |= _chars(chr(c), flags)
            else:  # NEGATE, CATEGORY (\d, \w ...): too many characters
                return None
            if len(chars) > _CLASS_MAX:
                return None
        return frozenset(chars) if chars else None


_POSIX_CLASS_RE = re.compile(r"\[:[a-z]+:\]")


def necessary_literals(pattern: str, scorer: _Scorer | None = None) -> frozenset[Seq]:
    """A set of literals of which every match of the RE2 `pattern` contains one, each an emittable
    run with at least MIN_LITERAL_ATOMS non-wildcard positions. Raises Unkeyable (with the reason)
    otherwise. Literals are encoded (see `Seq`); `literal_regex` writes one as CloudWatch regex."""
    scorer = scorer or _Scorer(HEALTHY_SAMPLE)
    if _POSIX_CLASS_RE.search(pattern):
        raise Unkeyable("POSIX character classes ([[:alpha:]]) are RE2 syntax this parser reads differently")
    try:
        parsed = _parser().parse(pattern)
    except re.error as exc:
        raise Unkeyable(f"pattern outside the syntax the derivation parses ({exc})") from None
    except Exception as exc:  # the private parser may change between Python versions: be safe
        raise Unkeyable(f"pattern parser failed ({exc!r})") from None
    info = _Walker(scorer).concat(list(parsed), int(parsed.state.flags))
    cand = scorer.best([info.exact, info.req])
    if cand is None:
        raise Unkeyable(
            f"no literal with at least {MIN_LITERAL_ATOMS} characters CloudWatch regex can express "
            "(letters, digits, _#=@/;,-.) occurs in every match"
        )
    runs = {scorer.best_run(s) for s in cand}
    return frozenset(_minimal(r for r in runs if r is not None))


def literal_regex(seq: Seq) -> str:
    """A literal from `necessary_literals` as CloudWatch regex."""
    return _emit(seq)


# ----------------------------------------------------------------------------- assembly


@functools.lru_cache(maxsize=1 << 16)
def _cover_rx(a: Seq) -> re.Pattern[str] | None:
    """For a literal with classes or gaps: a regex finding it in another literal (None: plain, use
    `in`). Conservative: may say "not covered" when it is (only a literal too many is kept then)."""
    if not any(c in _CLASS_CHARS or c == GAP for c in a):
        return None
    parts = []
    for c in a:
        chars = _CLASS_CHARS.get(c)
        if c == GAP:
            parts.append(".*")
        elif chars is None:
            parts.append(re.escape(c))
        else:  # the same class, or one of its characters
            parts.append("[" + "".join(re.escape(x) for x in sorted({*chars, c})) + "]")
    return re.compile("".join(parts))


def _covers(a: Seq, b: Seq) -> bool:
    """Whether every line containing literal `b` contains literal `a`."""
    rx = _cover_rx(a)
    return a in b if rx is None else rx.search(b) is not None


def _minimal(seqs: Iterable[Seq]) -> list[Seq]:
    """`seqs` without those another one covers (a line passing the covered one passes the other)."""
    uniq = sorted(set(seqs), key=lambda s: (len(s), s))
    kept: list[Seq] = []
    for s in uniq:
        if not any(_covers(k, s) for k in kept):
            kept.append(s)
    return kept


def _windows(run: Seq, size: int) -> list[Seq]:
    """`run`'s windows with `size` non-wildcard positions, trimmed of wildcards at both ends."""
    if _solid(run) <= size:
        return [run]
    out = []
    for i in range(len(run)):
        if _is_wild(run[i]):
            continue
        n, j = 0, i
        while j < len(run) and n < size:
            n += 0 if _is_wild(run[j]) else 1
            j += 1
        if n == size:
            out.append(run[i:j])
    return out


def _covered_by(c: Seq, runs: Sequence[Seq]) -> frozenset[int]:
    rx = _cover_rx(c)
    if rx is None:
        return frozenset(i for i, run in enumerate(runs) if c in run)
    return frozenset(i for i, run in enumerate(runs) if rx.search(run) is not None)


def _assemble(runs: Sequence[Seq], size: int, scorer: _Scorer) -> list[Seq]:
    """Windows such that every run contains one (a greedy set cover).

    Candidates are the windows of `size` non-wildcard positions of every run (a shorter run is its
    own only candidate); the least passed on the sample win, then the most runs covered per emitted
    character. A window that ends up keying one run alone is then grown back towards its run (more
    selective) while the pattern stays within MAX_PATTERN_CHARS.
    """
    pending = _minimal(runs)
    cands = sorted({w for run in pending for w in _windows(run, size)})
    covers = {c: _covered_by(c, pending) for c in cands}
    cost = {c: len(_emit(c)) + 1 for c in cands}
    uncovered = set(range(len(pending)))
    chosen: list[Seq] = []
    # Lazy greedy: a candidate's gain only shrinks as runs get covered.
    heap = [(len(scorer.hits(c)), -len(covers[c]) / cost[c], c) for c in cands]
    heapq.heapify(heap)
    while uncovered and heap:
        hits, _gain, c = heapq.heappop(heap)
        gain = len(covers[c] & uncovered)
        if not gain:
            continue
        fresh = (hits, -gain / cost[c], c)
        if heap and fresh > heap[0]:
            heapq.heappush(heap, fresh)
            continue
        chosen.append(c)
        uncovered -= covers[c]
    # Grow windows that key one run alone back towards that run, cheapest first, within the limit.
    total = 1 + sum(cost[c] for c in chosen)
    out: list[Seq] = []
    for c in sorted(chosen, key=lambda c: (cost[c], c)):
        mine = [pending[i] for i in covers[c]]
        if len(mine) == 1 and len(mine[0]) > len(c):
            run = mine[0]
            lo = run.find(c)
            hi = lo + len(c)
            grown = c
            while lo >= 0 and (lo > 0 or hi < len(run)):
                nlo, nhi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
                nxt = run[nlo:nhi]
                if _is_wild(nxt[0]) or _is_wild(nxt[-1]):
                    lo, hi = nlo, nhi  # carry on through a wildcard; never end on one
                    continue
                extra = len(_emit(nxt)) - len(_emit(grown))
                if total + extra > MAX_PATTERN_CHARS or len(scorer.hits(nxt)) > len(scorer.hits(grown)):
                    break
                total += extra
                grown, lo, hi = nxt, nlo, nhi
            c = grown
        out.append(c)
    return _minimal(out)


def derive_filter_pattern(
    policy: PolicySet | Iterable[Rule],
    progress: ProgressPatterns | None = None,
    *,
    include_step: bool = True,
    sample: Sequence[str] = HEALTHY_SAMPLE,
) -> Derivation:
    """The CloudWatch filter pattern that passes every line the daemon needs (see module docstring).

    progress: the job's progress patterns (None: the defaults). include_step: key the step pattern
    too (False when training progress is read from the ``step`` metric).
    """
    from supervisor.config import ProgressPatterns

    rules = policy.rules if isinstance(policy, PolicySet) else tuple(policy)
    patterns = progress or ProgressPatterns()
    wanted: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for rule in rules:
        if not isinstance(rule.match, LogMatch):
            continue
        if is_quiet(rule):
            skipped.append((f"rule:{rule.name}", "quiet rule (ignore at info): its lines yield no signal"))
            continue
        wanted.append((f"rule:{rule.name}", rule.match.pattern))
    wanted.extend(STRUCTURE_KEYS)
    for name, pat in (
        ("progress:resume", patterns.resume),
        ("progress:checkpoint", patterns.checkpoint),
        ("progress:step", patterns.step if include_step else None),
    ):
        if pat:
            wanted.append((name, pat))
    if not include_step and patterns.step:
        skipped.append(("progress:step", "training progress is read from the step metric"))

    pattern, keys, unkeyable, literals = _derive(tuple(wanted), tuple(sample))
    if pattern is None:
        return Derivation(None, (), unkeyable, tuple(skipped), includes_step=True)
    return Derivation(pattern, keys, (), tuple(skipped), includes_step=include_step, literals=literals)


@functools.lru_cache(maxsize=16)
def _derive(
    wanted: tuple[tuple[str, str], ...], sample: tuple[str, ...]
) -> tuple[str | None, tuple[Key, ...], tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(pattern, keys, unkeyable, literals) for (name, RE2 pattern) pairs; cached (a daemon, its
    tests and benchmarks derive the same policies again and again)."""
    scorer = _Scorer(sample)
    keyed: list[tuple[str, frozenset[Seq]]] = []
    unkeyable: list[tuple[str, str]] = []
    for name, pat in wanted:
        try:
            keyed.append((name, necessary_literals(pat, scorer)))
        except Unkeyable as exc:
            unkeyable.append((name, str(exc)))
    if unkeyable:
        return None, (), tuple(unkeyable), ()
    all_runs = sorted({r for _, runs in keyed for r in runs})

    def attempt(size: int) -> tuple[list[Seq], str]:
        literals = _assemble(all_runs, size, scorer)
        return literals, "%" + "|".join(sorted(_emit(s) for s in literals)) + "%"

    # The largest window size whose pattern fits (binary search: smaller windows, shorter pattern).
    lo, hi, found = 0, len(_SIZES) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        literals, pattern = attempt(_SIZES[mid])
        if len(pattern) <= MAX_PATTERN_CHARS:
            found, hi = (literals, pattern), mid - 1
        else:
            lo = mid + 1
    if found is None:
        why = f"the keys do not fit {MAX_PATTERN_CHARS} characters even cut to {_SIZES[-1]} characters each"
        return None, (), (("pattern", why),), ()
    literals, pattern = found
    keys = tuple(
        Key(name, tuple(sorted({_emit(c) for c in literals if any(_covers(c, r) for r in runs)})))
        for name, runs in keyed
    )
    return pattern, keys, (), tuple(sorted(_emit(s) for s in literals))


# ----------------------------------------------------------------------------- CloudWatch semantics


def cloudwatch_matches(pattern: str, message: str) -> bool:
    """Whether CloudWatch Logs returns an event with `message` for `filterPattern` `pattern`.

    Implemented forms: empty (everything); a standalone regex ``%...%`` (searched anywhere in the
    message, case-sensitive; ValueError for characters the docs do not allow); unstructured terms
    (space-separated; ``"quoted phrases"``; ``?term`` OR when no plain term is given; ``-term``
    excludes), matched as case-sensitive substrings (what emulators implement; CloudWatch's docs do
    not say whether a term matches inside a word, which is why `derive_filter_pattern` emits regex).
    JSON (``{...}``) and space-delimited (``[...]``) patterns raise ValueError.
    """
    p = pattern.strip()
    if not p:
        return True
    if len(p) >= 2 and p[0] == "%" and p[-1] == "%":
        body = p[1:-1]
        bad = sorted({c for c in body if c not in _REGEX_ALLOWED})
        if bad or not body:
            raise ValueError(f"CloudWatch rejects regex characters {bad!r} in {pattern!r}")
        return re.search(body, message) is not None
    if p[0] in "{[":
        raise ValueError("JSON and space-delimited filter patterns are not implemented")
    plain: list[str] = []
    optional: list[str] = []
    excluded: list[str] = []
    for token in re.findall(r'[?-]?"[^"]*"|\S+', p):
        kind = token[0] if token[0] in "?-" else ""
        term = token[1:] if kind else token
        if len(term) >= 2 and term[0] == term[-1] == '"':
            term = term[1:-1]
        {"": plain, "?": optional, "-": excluded}[kind].append(term)
    if any(t in message for t in excluded):
        return False
    if plain:  # '?' terms combined with other terms are ignored (documented)
        return all(t in message for t in plain)
    return any(t in message for t in optional) if optional else True
