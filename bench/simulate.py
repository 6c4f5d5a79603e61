"""Goodput simulation: ETTR of a long pre-training job under ftsup, plain torchrun and no supervisor.

What is measured: the effective training time ratio (ETTR = time whose work a checkpoint kept /
wall time) of a 256 / 512 / 1,024 / 2,048-node job (8 GPUs per node) over 54 days, from a seeded,
deterministic discrete-event model. Nothing here is a measurement of a real cluster: every input is a
parameter printed with its source (``--json`` puts them under ``assumptions``), and the figures are
what those parameters imply.

The model, per strategy and replication:
* Failures arrive as a Poisson process while the job is up (starting or training) at the Llama 3 405B
  rate scaled per GPU; each failure draws a category from that run's mix. Node-local hardware faults
  leave their node bad: a launch that includes it fails again when it starts, until the node is
  cordoned (ftsup) or replaced by a human.
* Training runs in intervals of tau compute + C stall (an asynchronous checkpoint's stall); tau comes
  from Daly's formula for the strategy's MTBF (training time per failure that strikes training,
  measured by a pilot run of the same model). A failure loses the work since the last checkpoint.
* ftsup: decides seconds after the error line (a hang: max(3 x p99 step, 2 min) after progress stops),
  restarts or cordons the bad node and relaunches on a spare, within the shipped budgets
  (``supervisor.decide.decide.Limits``: 3 relaunches per hour with doubling backoff, 2 cordons per
  hour); software bugs and an exhausted budget halt and page a human, as the shipped policies do.
* torchrun ``--max-restarts=3``: sees a worker exit within seconds, waits out a hang until NCCL's
  watchdog timeout, relaunches everything on the same nodes; after 3 restarts the job exits and a
  human is paged, who relaunches (replacing a bad node).
* none: every failure ends the job (a hang after NCCL's timeout); the page fires at once; a human
  relaunches (replacing a bad node).
* The human: acknowledgement time lognormal, slower at night (local 20:00-08:00), then triage and
  relaunch time (longer for a bad node).

Time is split into productive, checkpoint (stalls), lost (work since the last checkpoint), detection,
restart (backoff + relaunch + start-up), human (page -> relaunch); the parts add up to the wall time.

    python bench/simulate.py [--replications N] [--seed S] [--nodes 256,512,...] [--json]

With --json the last line is one JSON object:
``{"goodput_sim": [{"nodes": N, "ftsup": {"ettr": x, ...}, "torchrun": {...}, "none": {...}}, ...],
"assumptions": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.decide.decide import Limits, backoff_delay, cordon_allowance

Strategy = Literal["ftsup", "torchrun", "none"]
STRATEGIES: tuple[Strategy, ...] = ("ftsup", "torchrun", "none")
CATEGORIES = ("node_hw", "fabric", "software", "hang")
LEDGER_PARTS = ("productive", "checkpoint", "lost", "detection", "restart", "human")
RESULTS_JSON = Path(__file__).resolve().parent / "results.json"
MIN = 60.0
HOUR = 3600.0
DAY = 86400.0

# Llama 3 405B: shares of the 419 unexpected interruptions (../shared/notes/cloudwatch-and-failures.md,
# from Meta's "The Llama 3 Herd of Models", 2024, table 5), mapped onto the model's categories.
LLAMA3_MIX: dict[str, tuple[float, str]] = {
    "faulty GPU": (30.1, "node_hw"),
    "GPU HBM3 memory": (17.2, "node_hw"),
    "software bug": (12.9, "software"),
    "network switch/cable": (8.4, "fabric"),
    "host maintenance": (7.6, "node_hw"),
    "GPU SRAM memory": (4.5, "node_hw"),
    "GPU system processor": (4.1, "node_hw"),
    "NIC": (1.7, "node_hw"),
    "NCCL watchdog timeout": (1.7, "hang"),
    "silent data corruption": (1.4, "node_hw"),
    "GPU thermal interface/sensor": (1.4, "node_hw"),
    "other (SSD, PSU, chassis, CPU, memory)": (3.9, "node_hw"),
}


@dataclass(frozen=True)
class Lognormal:
    """A lognormal distribution given by its median and its 90th or 99th percentile (seconds)."""

    p50_s: float
    tail_s: float
    tail_q: float = 0.99

    def sample(self, u: float) -> float:
        """The quantile at u in (0, 1): callers pass a uniform draw, so faster/slower share draws."""
        if self.tail_s <= self.p50_s:
            return self.p50_s
        z_tail = {0.9: 1.2815515655446004, 0.99: 2.3263478740408408}[self.tail_q]
        sigma = math.log(self.tail_s / self.p50_s) / z_tail
        return self.p50_s * math.exp(sigma * _norm_ppf(u))

    def scaled(self, k: float) -> Lognormal:
        return Lognormal(self.p50_s * k, self.tail_s * k, self.tail_q)


def _norm_ppf(u: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    u = min(max(u, 1e-12), 1 - 1e-12)
    a = (
        -39.69683028665376,
        220.9460984245205,
        -275.9285104469687,
        138.3577518672690,
        -30.66479806614716,
        2.506628277459239,
    )
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
    c = (
        -0.007784894002430293,
        -0.3223964580411365,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    )
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if u < 0.02425:
        q = math.sqrt(-2 * math.log(u))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if u > 1 - 0.02425:
        return -_norm_ppf(1 - u)
    q = u - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


@dataclass(frozen=True)
class Params:
    """Every input of the model. ``SOURCES`` says where each default comes from."""

    days: float = 54.0
    gpus_per_node: int = 8
    failures_per_gpu_hour: float = 419 / (54 * 24 * 16384)
    mix: dict[str, float] = field(default_factory=lambda: _category_mix())
    checkpoint_stall_s: float = 6.0
    checkpoint_min_interval_s: float = 149.0
    checkpoint_interval_s: float | None = None  # None: Daly's interval for the strategy's MTBF
    restart_s: float = 10 * MIN
    spare_available: bool = True
    # ftsup
    ftsup_detect: Lognormal = Lognormal(5.0, 30.0, 0.99)
    ftsup_detect_source: str = "default"
    step_p99_s: float = 10.0
    hang_floor_s: float = 120.0
    limits: Limits = field(default_factory=Limits)
    # torchrun
    torchrun_detect_s: float = 5.0
    torchrun_max_restarts: int = 3
    nccl_timeout_s: float = 10 * MIN
    # humans
    human_ack_day: Lognormal = Lognormal(10 * MIN, 30 * MIN, 0.9)
    human_ack_night: Lognormal = Lognormal(30 * MIN, 90 * MIN, 0.9)
    day_start_h: float = 8.0
    day_end_h: float = 20.0
    human_triage_s: float = 15 * MIN
    human_triage_node_s: float = 30 * MIN
    page_delay_s: float = 0.0

    def hang_detect_s(self) -> float:
        return max(3 * self.step_p99_s, self.hang_floor_s)


def _category_mix() -> dict[str, float]:
    """Shares of the model's categories, renormalised over the listed Llama 3 shares (94.9%)."""
    total = sum(share for share, _ in LLAMA3_MIX.values())
    mix = dict.fromkeys(CATEGORIES, 0.0)
    for share, cat in LLAMA3_MIX.values():
        mix[cat] += share / total
    return mix


SOURCES: dict[str, str] = {
    "days": "issue 7: the Llama 3 405B run's length (54 days)",
    "gpus_per_node": "issue 7 (8 GPUs per node, as p5 / DGX H100)",
    "failures_per_gpu_hour": "419 unexpected interruptions / (54 d x 24 h x 16,384 GPUs) (Llama 3 paper, "
    "../shared/notes/cloudwatch-and-failures.md); scaled linearly per GPU",
    "mix": "Llama 3 405B shares of the 419 (notes): node_hw = GPU (58.7%), host maintenance, NIC, SDC, "
    "other hardware; fabric = network switch/cable; software = software bug; hang = NCCL watchdog "
    "timeout; renormalised over the 94.9% the notes list",
    "checkpoint_stall_s": "PyTorch async distributed checkpointing: 7B model's training stall ~6 s (notes); "
    "per-GPU shard size assumed constant as the job grows (weak scaling)",
    "checkpoint_min_interval_s": "an async save must finish before the next: the same 7B save took ~149 s "
    "synchronously (notes)",
    "checkpoint_interval_s": "Daly (2006) higher-order optimum for the strategy's MTBF: "
    "sqrt(2 C M) (1 + sqrt(C/(2M))/3 + C/(18 M)) - C, at least checkpoint_min_interval_s",
    "restart_s": "relaunch + rendezvous + NCCL init + checkpoint load at scale: assumption 10 min, the same "
    "for every strategy (MegaScale/FFTrainer: checkpoint-restart MTTR 'tens of minutes' incl. detection; "
    "TrainMover: ~20 s only with standby machines pre-initialised)",
    "spare_available": "assumption: a warm spare is always free (at 2,048 nodes ~0.27 node faults/h, so "
    "a pool of ~7 covers a 24 h replenishment)",
    "ftsup_detect": "error line -> decision: bench/results.json latency.decision_p50_s/p99_s when measured "
    "there, else default p50 5 s / p99 30 s (CloudWatch agent flush 5 s + ingestion 1-3 s, notes)",
    "step_p99_s": "assumption: p99 step time 10 s (a large-model step), so hang detection = the 2 min floor",
    "hang_floor_s": "ftsup's stall rule (policies/training.yaml: step stalled_for 120s) = "
    "max(3 x p99 step, 2 min), issue 7",
    "limits": "the shipped budgets (policies/budgets.yaml, supervisor.decide.decide.Limits): "
    "restart 3 per 1 h, backoff 10 s doubling to 5 min, cordon 2 nodes per 1 h",
    "torchrun_detect_s": "assumption 5 s: a worker exit is seen by its agent (monitor interval 0.1 s in "
    "torch 2.13) and by the other agents through the rendezvous",
    "torchrun_max_restarts": "issue 7: torchrun --max-restarts=3 (the count never resets within a launch)",
    "nccl_timeout_s": "PyTorch NCCL collective timeout default 10 min (many stacks 30 min; notes)",
    "human_ack_day": "assumption: page -> engineer at the keyboard, day: lognormal p50 10 min, p90 30 min "
    "(Google SRE book 'Being On-Call': 30 min response target for non-user-facing systems)",
    "human_ack_night": "assumption: night (asleep): lognormal p50 30 min, p90 90 min; no public measurement",
    "day_start_h": "assumption: local day 08:00-20:00; the job starts at 00:00 local",
    "day_end_h": "see day_start_h",
    "human_triage_s": "assumption: read logs, decide, relaunch: 15 min",
    "human_triage_node_s": "assumption: find the bad node, drain it, swap in a spare: 30 min (OPT-175B "
    "logbook: node replacement 'can take hours')",
    "page_delay_s": "assumption: the page fires when the job exits (0 s); favourable to 'none'",
}


@dataclass
class Ledger:
    """Wall time split into parts (seconds) and event counts for one simulated run."""

    productive: float = 0.0
    checkpoint: float = 0.0
    lost: float = 0.0
    detection: float = 0.0
    restart: float = 0.0
    human: float = 0.0
    failures: int = 0
    failures_in_training: int = 0
    recurrences: int = 0
    pages: int = 0
    cordons: int = 0
    training_s: float = 0.0  # training time (compute + stalls, including work later lost)

    def wall(self) -> float:
        return sum(getattr(self, p) for p in LEDGER_PARTS)

    def ettr(self) -> float:
        w = self.wall()
        return self.productive / w if w > 0 else 1.0


def daly_interval(stall_s: float, mtbf_s: float, floor_s: float = 0.0) -> float:
    """Daly's higher-order optimal checkpoint interval (compute time between checkpoints)."""
    if not math.isfinite(mtbf_s) or mtbf_s <= 0:
        return max(floor_s, 7 * DAY)
    if stall_s >= 2 * mtbf_s:
        return max(floor_s, mtbf_s)
    x = stall_s / (2 * mtbf_s)
    tau = math.sqrt(2 * stall_s * mtbf_s) * (1 + math.sqrt(x) / 3 + x / 9) - stall_s
    return max(floor_s, tau)


class _Run:
    """One strategy, one node count, one seed: a discrete-event walk through the horizon."""

    def __init__(self, strategy: Strategy, nodes: int, p: Params, seed: int, tau: float) -> None:
        self.s, self.n, self.p, self.tau = strategy, nodes, p, tau
        self.rate = p.failures_per_gpu_hour * nodes * p.gpus_per_node / HOUR
        self.horizon = p.days * DAY
        # Independent streams per purpose, so changing one delay leaves the other draws unchanged.
        self.r_fail = random.Random(f"{seed}:fail")
        self.r_cat = random.Random(f"{seed}:cat")
        self.r_det = random.Random(f"{seed}:detect")
        self.r_hum = random.Random(f"{seed}:human")
        self.t = 0.0
        self.led = Ledger()
        self.bad_node = False  # a node with a node-local fault is in the job
        self.restarts: list[float] = []  # ftsup: relaunch times (budget window)
        self.cordons: list[float] = []
        self.launch_restarts = 0  # torchrun: restarts used by this launch

    # ---- time accounting --------------------------------------------------------------------
    def spend(self, part: str, dt: float) -> bool:
        """Add dt to a part, clipped at the horizon; True when the horizon was reached."""
        dt = max(0.0, min(dt, self.horizon - self.t))
        setattr(self.led, part, getattr(self.led, part) + dt)
        self.t += dt
        return self.t >= self.horizon

    def train(self, dt: float, *, until_horizon: bool) -> None:
        """Train for dt (from a fresh checkpoint); split into kept work, stalls and lost work."""
        dt = max(0.0, min(dt, self.horizon - self.t))
        cycle = self.tau + self.p.checkpoint_stall_s
        k = math.floor(dt / cycle)
        rest = dt - k * cycle
        self.led.productive += k * self.tau
        self.led.checkpoint += k * self.p.checkpoint_stall_s
        self.led.training_s += dt
        if until_horizon:  # the job goes on past the horizon: nothing is lost
            self.led.productive += min(rest, self.tau)
            self.led.checkpoint += max(0.0, rest - self.tau)
        else:
            self.led.lost += rest
        self.t += dt

    def next_failure(self) -> float:
        return self.r_fail.expovariate(self.rate) if self.rate > 0 else math.inf

    def category(self) -> str:
        u, acc = self.r_cat.random(), 0.0
        for cat in CATEGORIES:
            acc += self.p.mix[cat]
            if u < acc:
                return cat
        return CATEGORIES[-1]

    # ---- people -----------------------------------------------------------------------------
    def human(self, node_fault: bool) -> bool:
        """Page -> acknowledgement (day/night) -> triage and relaunch decision. True at the horizon."""
        self.led.pages += 1
        hour = ((self.t + self.p.page_delay_s) % DAY) / HOUR
        day = self.p.day_start_h <= hour < self.p.day_end_h
        ack = (self.p.human_ack_day if day else self.p.human_ack_night).sample(self.r_hum.random())
        triage = self.p.human_triage_node_s if node_fault else self.p.human_triage_s
        if self.spend("human", self.p.page_delay_s + ack + triage):
            return True
        if node_fault or self.bad_node:
            self.bad_node = False  # the human swaps the bad node for a spare
        self.launch_restarts = 0
        return False

    # ---- the walk ---------------------------------------------------------------------------
    def run(self) -> Ledger:
        starting = False  # the job is up from t = 0, training from a checkpoint
        while self.t < self.horizon:
            gap = self.next_failure()
            if starting:
                start = self.p.restart_s
                if self.bad_node and gap >= start:  # the bad node fails the new launch at start-up
                    if self.spend("restart", start):
                        break
                    self.led.recurrences += 1
                    self.led.failures += 1
                    if self.after_failure("node_hw", recurrence=True):
                        break
                    continue
                if gap < start:  # a fresh failure during start-up
                    if self.spend("restart", gap):
                        break
                    self.led.failures += 1
                    if self.after_failure(self.category(), recurrence=False):
                        break
                    continue
                if self.spend("restart", start):
                    break
                gap -= start
            if self.t + gap >= self.horizon:
                self.train(self.horizon - self.t, until_horizon=True)
                break
            self.train(gap, until_horizon=False)
            self.led.failures += 1
            self.led.failures_in_training += 1
            if self.after_failure(self.category(), recurrence=False):
                break
            starting = True
        return self.led

    def after_failure(self, cat: str, *, recurrence: bool) -> bool:
        """Detection and the strategy's response; leaves the job about to start. True at the horizon."""
        p = self.p
        node_fault = cat == "node_hw"
        if node_fault:
            self.bad_node = True
        if self.s == "ftsup":
            det = p.hang_detect_s() if cat == "hang" else p.ftsup_detect.sample(self.r_det.random())
            if self.spend("detection", det):
                return True
            return self.ftsup_act(cat)
        if self.s == "torchrun":
            det = p.nccl_timeout_s if cat == "hang" else p.torchrun_detect_s
            if self.spend("detection", det):
                return True
            if self.launch_restarts < p.torchrun_max_restarts:
                self.launch_restarts += 1
                return False  # relaunch everything on the same nodes
            return self.human(node_fault or self.bad_node)
        det = p.nccl_timeout_s if cat == "hang" else 0.0  # the job exits; the page fires
        if self.spend("detection", det):
            return True
        return self.human(node_fault or self.bad_node)

    def ftsup_act(self, cat: str) -> bool:
        """The shipped decision logic: budgets, backoff, cordon allowance, halt on code bugs."""
        p, lim, now = self.p, self.p.limits, self.t
        if cat == "software":  # python-exception & co: non_recoverable (code) -> halt, page
            return self.human(self.bad_node)
        recent = sum(1 for t in self.restarts if now - t < lim.restart_within_s)
        if recent >= lim.restart_max:
            return self.human(self.bad_node)
        if cat == "node_hw":
            cordoned = sum(1 for t in self.cordons if now - t < lim.cordon_within_s)
            if cordoned >= cordon_allowance(self.n, lim) or not p.spare_available:
                return self.human(True)
            self.cordons.append(now)
            self.led.cordons += 1
            self.bad_node = False
        self.restarts.append(now)
        return self.spend("restart", backoff_delay(recent, lim))


def simulate(strategy: Strategy, nodes: int, p: Params, seed: int, tau: float | None = None) -> Ledger:
    """One run; tau (compute between checkpoints) defaults to Daly's interval for the base MTBF."""
    if tau is None:
        tau = p.checkpoint_interval_s
    if tau is None:
        rate = p.failures_per_gpu_hour * nodes * p.gpus_per_node / HOUR
        tau = daly_interval(
            p.checkpoint_stall_s, 1 / rate if rate > 0 else math.inf, p.checkpoint_min_interval_s
        )
    return _Run(strategy, nodes, p, seed, tau).run()


def strategy_interval(strategy: Strategy, nodes: int, p: Params, seed: int) -> tuple[float, float]:
    """(MTBF, tau) for a strategy: MTBF = training time per failure striking training, from a pilot."""
    if p.checkpoint_interval_s is not None:
        return math.inf, p.checkpoint_interval_s
    pilot = simulate(strategy, nodes, p, seed + 1_000_003)
    mtbf = pilot.training_s / pilot.failures_in_training if pilot.failures_in_training else math.inf
    return mtbf, daly_interval(p.checkpoint_stall_s, mtbf, p.checkpoint_min_interval_s)


def evaluate(nodes: int, p: Params, seed: int, replications: int) -> dict[str, Any]:
    """Mean ETTR (and spread, parts, counts) of each strategy over `replications` seeded runs."""
    row: dict[str, Any] = {"nodes": nodes, "gpus": nodes * p.gpus_per_node}
    rate_h = p.failures_per_gpu_hour * nodes * p.gpus_per_node
    row["failures_per_day"] = round(rate_h * 24, 3)
    row["mtbf_h"] = round(1 / rate_h, 2)
    for s in STRATEGIES:
        mtbf, tau = strategy_interval(s, nodes, p, seed)
        runs = [simulate(s, nodes, p, seed + i, tau) for i in range(replications)]
        ettrs = sorted(r.ettr() for r in runs)
        wall = sum(r.wall() for r in runs)
        row[s] = {
            "ettr": round(sum(ettrs) / len(ettrs), 4),
            "ettr_min": round(ettrs[0], 4),
            "ettr_max": round(ettrs[-1], 4),
            "mtbf_h": round(mtbf / HOUR, 2) if math.isfinite(mtbf) else None,
            "checkpoint_interval_s": round(tau, 1),
            "share": {part: round(sum(getattr(r, part) for r in runs) / wall, 4) for part in LEDGER_PARTS},
            "failures": round(sum(r.failures for r in runs) / len(runs), 1),
            "recurrences": round(sum(r.recurrences for r in runs) / len(runs), 1),
            "pages": round(sum(r.pages for r in runs) / len(runs), 1),
            "cordons": round(sum(r.cordons for r in runs) / len(runs), 1),
        }
    return row


TARGETS = {256: 0.97, 512: 0.96, 1024: 0.93, 2048: 0.90}


def measured_detection(path: Path = RESULTS_JSON) -> tuple[Lognormal, str] | None:
    """ftsup's decision latency from part 1 of the benchmark (bench/results.json), when measured."""
    try:
        lat = json.loads(path.read_text()).get("latency") or {}
        p50, p99 = float(lat["decision_p50_s"]), float(lat["decision_p99_s"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Lognormal(p50, max(p99, p50), 0.99), f"measured: {path.name} latency (n={lat.get('n')})"


def assumptions(p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in asdict(p).items():
        if k in ("ftsup_detect_source",):
            continue
        src = SOURCES.get(k, "")
        if k == "ftsup_detect":
            src = f"{src}; used: {p.ftsup_detect_source}"
        if k == "limits":
            v = asdict(p.limits)
        out[k] = {"value": v, "source": src}
    out["hang_detect_s"] = {"value": p.hang_detect_s(), "source": "max(3 x step_p99_s, hang_floor_s)"}
    out["llama3_mix_percent"] = {"value": {k: v[0] for k, v in LLAMA3_MIX.items()}, "source": SOURCES["mix"]}
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="256,512,1024,2048", help="comma-separated node counts")
    ap.add_argument("--replications", type=int, default=40, help="seeded runs per point (default 40)")
    ap.add_argument("--seed", type=int, default=20240723)
    ap.add_argument("--days", type=float, default=54.0)
    ap.add_argument("--no-measured", action="store_true", help="ignore a measured latency")
    ap.add_argument(
        "--latency-from", type=Path, default=RESULTS_JSON, help="results.json holding part 1's latency"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args(argv)

    p = Params(days=args.days)
    measured = None if args.no_measured else measured_detection(args.latency_from)
    if measured is not None:
        p = replace(p, ftsup_detect=measured[0], ftsup_detect_source=measured[1])
    started = time.perf_counter()
    rows = [evaluate(int(n), p, args.seed, args.replications) for n in args.nodes.split(",")]
    elapsed = time.perf_counter() - started

    print("assumptions (value | source):")
    for k, a in assumptions(p).items():
        print(f"  {k:<26} {_fmt(a['value'])}\n  {'':<26}   <- {a['source']}")
    print(f"\nETTR, mean of {args.replications} seeded runs of {p.days:g} days each (min-max):")
    print(f"  {'nodes':>6} {'MTBF h':>7} {'ftsup':>22} {'torchrun':>22} {'none':>22}  ftsup target")
    for r in rows:
        cells = [f"{r[s]['ettr']:.2%} ({r[s]['ettr_min']:.1%}-{r[s]['ettr_max']:.1%})" for s in STRATEGIES]
        tgt = TARGETS.get(r["nodes"])
        verdict = "" if tgt is None else f">= {tgt:.0%}: {'met' if r['ftsup']['ettr'] >= tgt else 'NOT met'}"
        print(f"  {r['nodes']:>6} {r['mtbf_h']:>7} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}  {verdict}")
    print("\nwhere the time went (share of wall time, all runs):")
    for r in rows:
        for s in STRATEGIES:
            sh = r[s]["share"]
            parts = " ".join(f"{k}={v:.2%}" for k, v in sh.items())
            print(
                f"  {r['nodes']:>5} {s:<9} {parts}  | tau={r[s]['checkpoint_interval_s']:.0f}s "
                f"failures={r[s]['failures']} recur={r[s]['recurrences']} pages={r[s]['pages']}"
            )
    print(f"\nsimulated in {elapsed:.1f} s")
    if args.json:
        for r in rows:
            tgt = TARGETS.get(r["nodes"])
            r["ftsup"]["target"] = tgt
            r["ftsup"]["target_met"] = None if tgt is None else r["ftsup"]["ettr"] >= tgt
        out = {
            "goodput_sim": rows,
            "assumptions": assumptions(p),
            "replications": args.replications,
            "seed": args.seed,
            "elapsed_s": round(elapsed, 2),
        }
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
