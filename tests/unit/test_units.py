"""Traceback folding: one unit, one signal, decided by the exception lines, never frame lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.classify.matcher import LogClassifier
from supervisor.classify.policy import load_policies
from supervisor.classify.units import StreamClassifier

POLICY = """
rules:
  - name: generic-exception
    match: {log: '^(?:\\[rank\\d+\\]:)?\\s*[A-Za-z_][\\w.]*(?:Error|Exception): '}
    signal: code.exception
    class: non_recoverable
    scope: code
    action: halt
    severity: critical
    priority: -10
    examples: {match: ['KeyError: x']}
  - name: cuda-oom
    match: {log: 'CUDA out of memory'}
    signal: code.cuda_oom
    class: non_recoverable
    scope: code
    action: halt
    severity: critical
    examples: {match: ['torch.OutOfMemoryError: CUDA out of memory.']}
  - name: nccl-error
    match: {log: 'NCCL error'}
    signal: collective.nccl_error
    class: recoverable
    scope: job
    action: restart
    severity: warning
    role: symptom
    priority: 5
    examples: {match: ['torch.distributed.DistBackendError: NCCL error in: x']}
  - name: child-failed
    match: {log: 'ChildFailedError:'}
    signal: launcher.summary
    class: recoverable
    scope: none
    action: ignore
    severity: info
    role: noise
    priority: 10
    examples: {match: ['torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ']}
"""


@pytest.fixture()
def stream(tmp_path: Path) -> StreamClassifier:
    (tmp_path / "p.yaml").write_text(POLICY)
    return StreamClassifier(LogClassifier(load_policies([tmp_path])))


def feed_all(stream: StreamClassifier, text: str, node: str = "n0") -> list[tuple[str, int | None]]:
    out = []
    for i, line in enumerate(text.splitlines()):
        out += stream.feed(node, line, float(i), line_index=i)
    out += stream.flush()
    return [(s.rule, s.line_index) for s in out]


def test_frame_and_source_lines_are_never_classified(stream: StreamClassifier) -> None:
    text = """Traceback (most recent call last):
  File "/opt/torch/cuda/memory.py", line 12, in alloc
    raise torch.OutOfMemoryError("CUDA out of memory")
  File "train.py", line 9, in step
    x = batch["labels"]
KeyError: 'labels'"""
    assert feed_all(stream, text) == [("generic-exception", 5)]


def test_chain_final_exception_decides_among_equals(stream: StreamClassifier) -> None:
    text = """Traceback (most recent call last):
  File "worker.py", line 3, in fetch
    return d[k]
KeyError: 'img'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "train.py", line 9, in <module>
    next(it)
RuntimeError: Caught KeyError in DataLoader worker process 0."""
    assert feed_all(stream, text) == [("generic-exception", 10)]


def test_chain_specific_cause_beats_generic_wrapper(stream: StreamClassifier) -> None:
    text = """[rank1]: Traceback (most recent call last):
[rank1]:   File "train.py", line 40, in step
[rank1]:     dist.all_reduce(t)
[rank1]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited
[rank1]:
[rank1]: During handling of the above exception, another exception occurred:
[rank1]:
[rank1]: Traceback (most recent call last):
[rank1]:   File "train.py", line 60, in main
[rank1]:     save()
[rank1]: ValueError: cannot save"""
    assert feed_all(stream, text) == [("nccl-error", 3)]


def test_interleaved_ranks_are_separate_units(stream: StreamClassifier) -> None:
    text = """[rank0]: Traceback (most recent call last):
[rank1]: Traceback (most recent call last):
[rank0]:   File "a.py", line 1, in f
[rank1]:   File "a.py", line 1, in f
[rank0]:     raise ValueError("CUDA out of memory in a string")
[rank1]:     g()
[rank0]: ValueError: x
[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"""
    assert sorted(feed_all(stream, text)) == [("cuda-oom", 7), ("generic-exception", 6)]


def test_unit_closes_on_next_line_and_lines_after_are_classified(stream: StreamClassifier) -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "a.py", line 1, in f',
        "ValueError: boom",
        "torch.distributed.DistBackendError: NCCL error in: x",
    ]
    got = []
    for i, line in enumerate(lines):
        got.append([s.rule for s in stream.feed("n0", line, float(i), line_index=i)])
    assert got == [[], [], [], ["generic-exception", "nccl-error"]]
    assert stream.open_units() == 0


def test_open_unit_is_held_until_flushed_after_idle(stream: StreamClassifier) -> None:
    stream.feed("n0", "Traceback (most recent call last):", 1.0, now=100.0)
    stream.feed("n0", '  File "a.py", line 1, in f', 1.0, now=100.0)
    assert stream.feed("n0", "ValueError: boom", 1.0, now=100.1) == []
    assert stream.holding() and stream.open_units() == 1
    assert stream.flush(now=100.3, idle_s=0.5) == []
    [sig] = stream.flush(now=100.7, idle_s=0.5)
    assert sig.rule == "generic-exception" and not stream.holding()


def test_traceback_cut_short_yields_nothing(stream: StreamClassifier) -> None:
    text = """Traceback (most recent call last):
  File "a.py", line 1, in f
    raise RuntimeError("NCCL error in the source line")"""
    assert feed_all(stream, text) == []


def test_foreign_line_inside_frames_ends_the_unit_and_is_classified(stream: StreamClassifier) -> None:
    text = """Traceback (most recent call last):
  File "a.py", line 1, in f
W1128 04:26:01.123 NCCL error in: ProcessGroupNCCL.cpp: remote process exited"""
    assert feed_all(stream, text) == [("nccl-error", 2)]


def test_teardown_traceback_is_quiet(stream: StreamClassifier) -> None:
    text = """Traceback (most recent call last):
  File "/usr/bin/torchrun", line 8, in <module>
    sys.exit(main())
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: boom
============================================================"""
    assert feed_all(stream, text) == []  # an ignore rule at severity info only keeps others off


def test_multi_line_event_is_fed_line_by_line(stream: StreamClassifier) -> None:
    event = (
        'Traceback (most recent call last):\n  File "a.py", line 1\n'
        '    oom("CUDA out of memory")\nKeyError: 1'
    )
    assert [s.rule for s in stream.feed("n0", event, 0.0)] + [s.rule for s in stream.flush()] == [
        "generic-exception"
    ]


def test_dataloader_original_traceback_continues_the_unit(stream: StreamClassifier) -> None:
    text = """Traceback (most recent call last):
  File "train.py", line 30, in <module>
    for batch in loader:
KeyError: Caught KeyError in DataLoader worker process 0.
Original Traceback (most recent call last):
  File "/opt/torch/utils/data/_utils/worker.py", line 308, in _worker_loop
    data = fetcher.fetch(index)  # CUDA out of memory would not count here
KeyError: 0"""
    assert feed_all(stream, text) == [("generic-exception", 7)]


LINE_POOL = (
    "step 12 loss 2.31",
    "NCCL INFO NCCL_IB_TIMEOUT set by environment to 22",
    "Traceback (most recent call last):",
    '  File "train.py", line 9, in step',
    '    raise RuntimeError("NCCL error in the source")',
    "KeyError: 'labels'",
    "",
    "The above exception was the direct cause of the following exception:",
    "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "[rank1]: Traceback (most recent call last):",
    '[rank1]:   File "a.py", line 1, in f',
    "[rank1]: ValueError: x",
    "\x1b[31mValueError: coloured\x1b[0m",
    "progress 45%|████▌     | 12/100\r 46%|████▋     | 13/100",
    "two\nlines: ValueError: inside",
    "Original Traceback (most recent call last):",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: boom",
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("n0", "n1")), st.sampled_from(LINE_POOL)), max_size=400))
def test_feed_many_equals_feeding_line_by_line(tmp_path_factory: pytest.TempPathFactory, items: list) -> None:
    path = tmp_path_factory.mktemp("p") / "p.yaml"
    path.write_text(POLICY)
    classifier = LogClassifier(load_policies([path]))
    one, many = StreamClassifier(classifier), StreamClassifier(classifier)
    expected = []
    for i, (node, line) in enumerate(items):
        expected += one.feed(node, line, float(i), line_index=i)
    expected += one.flush()
    got = many.feed_many([(node, line, float(i), None, i) for i, (node, line) in enumerate(items)])
    got += many.flush()
    assert got == expected


def test_exception_ignored_by_python_is_not_a_failure(stream: StreamClassifier) -> None:
    text = """Exception ignored in: <function _MultiProcessingDataLoaderIter.__del__ at 0x7f3c1c2b0ee0>
Traceback (most recent call last):
  File "/opt/torch/utils/data/dataloader.py", line 1479, in __del__
    self._shutdown_workers()
AttributeError: 'NoneType' object has no attribute 'python_exit_status'
KeyError: 'a later real failure'"""
    assert feed_all(stream, text) == [("generic-exception", 5)]


def test_stacked_launcher_prefixes_key_the_stream(stream: StreamClassifier) -> None:
    text = """15: [rank15]: Traceback (most recent call last):
15: [rank15]:   File "pretrain.py", line 9, in <module>
15: [rank15]:     raise ValueError("CUDA out of memory")
15: [rank15]: AssertionError: num_layers should be divisible by pipeline_model_parallel_size"""
    # one unit (the source line is not evidence); "^" in the rule also matches after the prefixes
    assert feed_all(stream, text) == [("generic-exception", 3)]


def test_cpp_terminate_what_line_decides(stream: StreamClassifier) -> None:
    text = """terminate called after throwing an instance of 'c10::DistBackendError'
  what():  [Rank 6] NCCL error in: ProcessGroupNCCL.cpp:1970, watchdog timeout
Fatal Python error: Aborted"""
    assert feed_all(stream, text) == [("nccl-error", 1)]


def test_frames_without_their_header_are_still_a_unit(stream: StreamClassifier) -> None:
    text = """  File "/opt/torch/nn/modules/module.py", line 1518, in _call_impl
    raise torch.OutOfMemoryError("CUDA out of memory")
ValueError: bad shape"""
    assert feed_all(stream, text) == [("generic-exception", 2)]


def test_quoted_raise_and_rich_box_lines_are_not_evidence(stream: StreamClassifier) -> None:
    text = """    raise RuntimeError('NCCL error in: {}'.format(x))
│   2585 │   │   raise torch.OutOfMemoryError("CUDA out of memory")                    │
╰──────────────────────────────────────────────────────────────────────────────────────╯
KeyError: 'decoder.weight'"""
    assert feed_all(stream, text) == [("generic-exception", 3)]
