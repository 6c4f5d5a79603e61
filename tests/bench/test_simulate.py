"""Invariants of the goodput simulator (bench/simulate.py) on small, fast configurations."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import simulate as sim

SMALL = sim.Params(days=5.0)
PARTS = sim.LEDGER_PARTS


@pytest.mark.parametrize("strategy", sim.STRATEGIES)
@pytest.mark.parametrize("nodes", [64, 512])
def test_ettr_in_unit_interval_and_parts_add_up(strategy: sim.Strategy, nodes: int) -> None:
    for seed in range(3):
        led = sim.simulate(strategy, nodes, SMALL, seed)
        assert 0.0 < led.ettr() <= 1.0
        assert math.isclose(led.wall(), SMALL.days * sim.DAY, rel_tol=1e-9)
        assert all(getattr(led, p) >= 0.0 for p in PARTS)


def test_zero_failure_rate_costs_only_checkpoints() -> None:
    p = replace(SMALL, failures_per_gpu_hour=0.0, checkpoint_interval_s=600.0)
    for strategy in sim.STRATEGIES:
        led = sim.simulate(strategy, 1024, p, seed=1)
        assert led.failures == 0 and led.lost == 0.0 and led.human == 0.0 and led.restart == 0.0
        assert math.isclose(led.ettr(), 1.0 - led.checkpoint / led.wall(), rel_tol=1e-12)
        assert led.ettr() == pytest.approx(600.0 / 606.0, abs=1e-4)


def test_faster_detection_never_does_worse() -> None:
    # Everything else equal: same seeds, same day/night (time-independent humans), no budgets.
    base = replace(
        SMALL,
        human_ack_night=SMALL.human_ack_day,
        limits=replace(SMALL.limits, restart_max=10**6, cordon_max_nodes=10**6, cordon_max_fraction=1.0),
        checkpoint_interval_s=600.0,
    )
    slow_lines = replace(base, ftsup_detect=base.ftsup_detect.scaled(20.0))
    slow_hangs = replace(base, hang_floor_s=30 * 60.0)
    for seed in range(4):
        fast = sim.simulate("ftsup", 512, base, seed)
        assert fast.ettr() >= sim.simulate("ftsup", 512, slow_lines, seed).ettr()
        assert fast.ettr() >= sim.simulate("ftsup", 512, slow_hangs, seed).ettr()
        quick_tr = sim.simulate("torchrun", 512, base, seed)
        assert (
            quick_tr.ettr()
            >= sim.simulate("torchrun", 512, replace(base, nccl_timeout_s=1800.0), seed).ettr()
        )


def test_seeded_runs_are_reproducible() -> None:
    a = sim.evaluate(256, SMALL, seed=7, replications=2)
    b = sim.evaluate(256, SMALL, seed=7, replications=2)
    assert a == b
    assert sim.simulate("none", 256, SMALL, 3) == sim.simulate("none", 256, SMALL, 3)


def test_failure_rate_scales_per_gpu() -> None:
    # 16,384 GPUs at the per-GPU rate give the Llama 3 run's 419 interruptions in 54 days.
    p = sim.Params()
    assert p.failures_per_gpu_hour * 16384 * 54 * 24 == pytest.approx(419)
    assert sum(p.mix.values()) == pytest.approx(1.0)


def test_daly_interval_is_near_young() -> None:
    c, m = 6.0, 3 * 3600.0
    young = math.sqrt(2 * c * m)
    assert abs(sim.daly_interval(c, m) - young) / young < 0.05
    assert sim.daly_interval(c, math.inf, 149.0) >= 149.0
