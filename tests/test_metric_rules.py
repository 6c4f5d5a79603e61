"""Metric rules: thresholds, absence and stalls; blindness never reads as absence."""

from __future__ import annotations

from supervisor.classify.metric_rules import MetricWatch
from supervisor.classify.policy import MetricMatch, Rule
from supervisor.vocabulary import FailureClass, MetricSample, Scope, Severity, Verdict


def mrule(name: str, match: MetricMatch, order: int = 0, scope: Scope = Scope.JOB) -> Rule:
    return Rule(
        name,
        match,
        f"sig.{name}",
        FailureClass.RECOVERABLE,
        scope,
        Verdict.RESTART,
        Severity.WARNING,
        order=order,
    )


NAN_RULE = mrule("loss-not-finite", MetricMatch("loss_nonfinite", above=0), 0)
HEARTBEAT = mrule("no-heartbeat", MetricMatch("heartbeat", absent_for=60), 1, Scope.NODE)
STALL = mrule("no-step-progress", MetricMatch("step", stalled_for=120), 2)
SLOW = mrule("throughput-collapse", MetricMatch("tokens_per_s", below=10, for_s=60), 3)
NODES = ["node-0", "node-1"]


def sample(metric: str, ts: float, value: float, node: str = "node-0") -> MetricSample:
    return MetricSample(node, metric, ts, value)


def names(signals: list) -> list[tuple[str, str, float]]:  # type: ignore[type-arg]
    return [(s.rule, s.node, s.timestamp) for s in signals]


def test_immediate_threshold_fires_once_per_episode() -> None:
    w = MetricWatch([NAN_RULE])
    w.reset(0.0, NODES)
    assert w.observe(sample("loss_nonfinite", 1.0, 0.0)) == []
    assert names(w.observe(sample("loss_nonfinite", 2.0, 1.0))) == [("loss-not-finite", "node-0", 2.0)]
    assert w.observe(sample("loss_nonfinite", 3.0, 1.0)) == []  # same episode
    assert w.observe(sample("loss_nonfinite", 4.0, 0.0)) == []  # clears
    assert names(w.observe(sample("loss_nonfinite", 5.0, 1.0))) == [("loss-not-finite", "node-0", 5.0)]
    assert names(w.observe(sample("loss_nonfinite", 6.0, float("nan"), "node-1"))) == [
        ("loss-not-finite", "node-1", 6.0)
    ]


def test_threshold_held_for_t() -> None:
    w = MetricWatch([SLOW])
    w.reset(0.0, NODES)
    assert w.observe(sample("tokens_per_s", 10.0, 5.0)) == []
    assert w.evaluate(50.0, NODES, True) == []
    assert names(w.evaluate(70.0, NODES, True)) == [("throughput-collapse", "node-0", 70.0)]
    assert w.evaluate(80.0, NODES, True) == []
    w.observe(sample("tokens_per_s", 85.0, 500.0))  # recovers
    w.observe(sample("tokens_per_s", 90.0, 1.0))
    assert names(w.observe(sample("tokens_per_s", 150.0, 1.0))) == [("throughput-collapse", "node-0", 150.0)]


def test_absence_fires_after_t_with_startup_grace_and_clears_on_new_datapoint() -> None:
    w = MetricWatch([HEARTBEAT])
    w.reset(100.0, NODES)
    assert w.evaluate(150.0, NODES, True) == []  # grace from the launch
    got = w.evaluate(161.0, NODES, True)
    assert names(got) == [("no-heartbeat", "node-0", 160.0), ("no-heartbeat", "node-1", 160.0)]
    assert w.evaluate(300.0, NODES, True) == []  # once per episode
    w.observe(sample("heartbeat", 301.0, 1.0, "node-0"))
    assert w.evaluate(330.0, NODES, True) == []
    assert names(w.evaluate(361.0, NODES, True)) == [("no-heartbeat", "node-0", 361.0)]


def test_blindness_never_reads_as_absence() -> None:
    w = MetricWatch([HEARTBEAT, STALL])
    w.reset(0.0, NODES)
    for n in NODES:
        w.observe(sample("heartbeat", 10.0, 1.0, n))
        w.observe(sample("step", 10.0, 5.0, n))
    # the metrics source goes blind for ten minutes: nothing fires, however long
    for t in range(20, 620, 10):
        assert w.evaluate(float(t), NODES, False) == []
    assert w.blind
    # it comes back: every clock restarts now, so nothing fires at once ...
    assert w.evaluate(620.0, NODES, True) == []
    assert not w.blind
    assert w.evaluate(679.0, NODES, True) == []
    # ... only a real absence measured after the return does
    assert names(w.evaluate(680.0, NODES, True)) == [
        ("no-heartbeat", "node-0", 680.0),
        ("no-heartbeat", "node-1", 680.0),
    ]
    assert names(w.evaluate(740.0, NODES, True)) == [
        ("no-step-progress", "node-0", 740.0),
        ("no-step-progress", "node-1", 740.0),
    ]


def test_stall_fires_when_value_stops_increasing_and_clears_on_increase() -> None:
    w = MetricWatch([STALL])
    w.reset(0.0, ["node-0"])
    for t, v in [(5.0, 1), (10.0, 2), (20.0, 3), (30.0, 3), (100.0, 3)]:
        w.observe(sample("step", t, v))
    assert w.evaluate(139.0, ["node-0"], True) == []
    assert names(w.evaluate(140.0, ["node-0"], True)) == [("no-step-progress", "node-0", 140.0)]
    assert w.evaluate(500.0, ["node-0"], True) == []
    w.observe(sample("step", 501.0, 4))
    assert w.evaluate(620.0, ["node-0"], True) == []
    assert names(w.evaluate(621.0, ["node-0"], True)) == [("no-step-progress", "node-0", 621.0)]


def test_reset_restarts_clocks_drops_old_nodes_and_ignores_the_old_attempt() -> None:
    w = MetricWatch([NAN_RULE, STALL])
    w.reset(0.0, ["node-0", "node-1"])
    w.observe(sample("step", 10.0, 57))
    w.reset(200.0, ["node-0", "node-2"])  # node-1 was cordoned, node-2 is the spare
    # a late NaN of the previous attempt does not trigger a second restart
    assert w.observe(sample("loss_nonfinite", 150.0, 1.0)) == []
    # samples from a node no longer in the job are ignored
    assert w.observe(sample("loss_nonfinite", 250.0, 1.0, "node-1")) == []
    # the resumed step (lower than before the restart) counts as progress
    w.observe(sample("step", 210.0, 40))
    # node-2 never reported a step since the launch at 200; node-0 progressed at 210
    assert names(w.evaluate(320.0, ["node-0", "node-2"], True)) == [("no-step-progress", "node-2", 320.0)]
    assert names(w.evaluate(330.0, ["node-0", "node-2"], True)) == [("no-step-progress", "node-0", 330.0)]
    assert w.evaluate(1000.0, ["node-0", "node-2"], True) == []


def test_nodes_first_seen_in_evaluate_get_grace() -> None:
    w = MetricWatch([HEARTBEAT])
    assert w.evaluate(1000.0, ["node-9"], True) == []
    assert names(w.evaluate(1060.0, ["node-9"], True)) == [("no-heartbeat", "node-9", 1060.0)]


def test_signals_are_ordered_and_deterministic() -> None:
    def run() -> list[tuple[str, str, float]]:
        w = MetricWatch([STALL, HEARTBEAT])
        w.reset(0.0, ["b", "a"])
        return names(w.evaluate(500.0, ["b", "a"], True))

    assert (
        run()
        == run()
        == [
            ("no-heartbeat", "a", 60.0),
            ("no-heartbeat", "b", 60.0),
            ("no-step-progress", "a", 120.0),
            ("no-step-progress", "b", 120.0),
        ]
    )


SLOW_STALL = mrule("no-step-progress", MetricMatch("step", stalled_for=110, stalled_steps=3), 2)


def test_stalled_steps_stretches_the_window_to_three_slow_steps() -> None:
    # A job whose steps take 60 s (e.g. a huge model): a fixed 110 s window would call the
    # second step's wait a hang; with stalled_steps 3 the window is 3 x p99(60 s) = 180 s.
    w = MetricWatch([SLOW_STALL])
    w.reset(0.0, ["node-0"])
    for k in range(1, 6):
        w.observe(sample("step", 60.0 * k, k))
    assert w.stall_window("no-step-progress", SLOW_STALL.match) == 180.0  # type: ignore[arg-type]
    assert w.evaluate(300.0 + 179.0, ["node-0"], True) == []
    assert names(w.evaluate(300.0 + 180.0, ["node-0"], True)) == [("no-step-progress", "node-0", 480.0)]


def test_stalled_steps_keeps_the_floor_for_fast_steps_and_survives_a_relaunch() -> None:
    w = MetricWatch([SLOW_STALL])
    w.reset(0.0, ["node-0"])
    for k in range(1, 50):  # 0.2 s per step, published as a value every second (+5 per sample)
        w.observe(sample("step", float(k), 5.0 * k))
    assert w.stall_window("no-step-progress", SLOW_STALL.match) == 110.0  # type: ignore[arg-type]
    assert w.evaluate(49.0 + 109.0, ["node-0"], True) == []
    assert names(w.evaluate(49.0 + 110.0, ["node-0"], True)) == [("no-step-progress", "node-0", 159.0)]
    # The step that finally came took 210 s: now the p99, and the window follows it after a relaunch.
    w.observe(sample("step", 259.0, 246.0))
    w.reset(300.0, ["node-0"])
    assert w.stall_window("no-step-progress", SLOW_STALL.match) == 630.0  # type: ignore[arg-type]
