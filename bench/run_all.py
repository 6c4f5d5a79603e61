"""`make bench`: run every benchmark that exists, each in its own process, into one results file.

Each part is a script under bench/ that prints one JSON object on its last line with --json; this
runner starts it with a timeout, takes that object, and writes
* bench/results.json (atomically: results.json.tmp, then rename): one key per part (``classify``,
  ``goodput_sim``, ...), ``machine`` (cores, python, torch, platform), and ``runs`` (per part: the
  command, its exit status and seconds, or why it produced nothing);
* bench/RESULTS.md: the same figures as markdown tables (the real goodput runs as ETTR and tokens
  per strategy, with ratios to ftsup), with every part of the issue's output
  contract that no benchmark has produced listed as "not yet measured" (never invented).

A part whose script does not exist yet is skipped and reported as not yet measured; adding
bench/latency.py, bench/scale.py or bench/goodput_real.py (printing ``{"latency": ...}``,
``{"scale": [...]}``, ``{"goodput_real": {...}}``) plugs it in with one entry in PARTS.

    python bench/run_all.py [--quick] [--only classify,simulate] [--out DIR]

--quick runs each part with small sizes (for tests): classify over 20,000 lines, 3 replications.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Part:
    """One benchmark script: how to run it and how its JSON object lands in results.json."""

    name: str
    script: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout_s: float
    key: str | None  # results.json key for the whole object; None: merge the object's keys


PARTS: tuple[Part, ...] = (
    # Part 1 (latency), 2 (scale) and 3a (real goodput) are other sessions' work: listed so that they
    # run as soon as their scripts exist.
    Part("latency", "latency.py", (), ("--quick",), 600, None),
    Part("scale", "scale.py", (), ("--quick",), 600, None),
    # Three real runs of 150 s each (ftsup, torchrun, none) plus start-up: ~8 min.
    Part("goodput_real", "goodput_real.py", (), ("--quick",), 720, None),
    Part("classify", "classify.py", (), ("--lines", "20000", "--baseline-lines", "5000"), 300, "classify"),
    Part("simulate", "simulate.py", (), ("--replications", "3"), 120, None),
)

CONTRACT = ("latency", "scale", "goodput_real", "goodput_sim", "classify")


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    try:
        import torch

        torch_version: str | None = torch.__version__
        cuda = bool(torch.cuda.is_available())
    except Exception:  # torch is optional for the runner itself
        torch_version, cuda = None, False
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch_version,
        "cuda": cuda,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def run_part(
    part: Part, quick: bool, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Run one part; (its JSON object or None, a record of the run)."""
    script = BENCH / part.script
    cmd = [sys.executable, str(script), *(part.quick_args if quick else part.args), *extra, "--json"]
    rec: dict[str, Any] = {"command": " ".join([Path(cmd[0]).name, *cmd[1:]]).replace(str(ROOT) + "/", "")}
    if not script.exists():
        rec["status"] = "not yet measured (no bench/" + part.script + ")"
        return None, rec
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=part.timeout_s)
    except subprocess.TimeoutExpired:
        rec.update(
            status=f"timed out after {part.timeout_s:g} s", seconds=round(time.perf_counter() - started, 1)
        )
        return None, rec
    rec["seconds"] = round(time.perf_counter() - started, 2)
    rec["returncode"] = proc.returncode
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    obj: Any = None
    if proc.returncode == 0 and lines:
        try:
            obj = json.loads(lines[-1])
        except ValueError:
            obj = None
    if not isinstance(obj, dict):
        rec["status"] = "failed: no JSON object on the last line"
        rec["stderr_tail"] = proc.stderr[-2000:]
        return None, rec
    rec["status"] = "ok"
    return obj, rec


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _pct(x: Any) -> str:
    return f"{x:.2%}" if isinstance(x, int | float) else "—"


def markdown(results: dict[str, Any]) -> str:
    """The README-linked table: measured figures, and what is not yet measured."""
    m = results["machine"]
    out = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` (`python bench/run_all.py{' --quick' if results.get('quick') else ''}`) "
        f"on {results['generated_at']}: {m['cores']} cores, Python {m['python']}, torch {m['torch']}, "
        f"{m['platform']}. Raw figures: [`results.json`](results.json).",
        "",
    ]
    if results.get("quick"):
        out += ["**Quick run (small sizes, for tests): not the figures to quote.**", ""]
    missing = [k for k in CONTRACT if k not in results]
    sim = results.get("goodput_sim")
    if sim:
        reps = results.get("goodput_sim_meta", {}).get("replications")
        out += [
            "## Goodput: simulation (`bench/simulate.py`)",
            "",
            f"ETTR (mean of {reps} seeded 54-day runs per point) from a discrete-event model with the "
            "Llama 3 405B failure rate (per GPU) and mix; every assumption, with its source, is in "
            "`results.json` under `goodput_sim_meta.assumptions` and printed by `python bench/simulate.py`. "
            "Modelled, not measured on a cluster.",
            "",
            "| nodes | GPUs | MTBF (h) | ftsup | torchrun --max-restarts=3 | no supervisor | ftsup target |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in sim:
            f = r["ftsup"]
            tgt = f.get("target")
            t = "—" if tgt is None else f">= {tgt:.0%}: {'met' if f['ettr'] >= tgt else '**not met**'}"
            out.append(
                f"| {r['nodes']:,} | {r['gpus']:,} | {r['mtbf_h']} | {_pct(f['ettr'])} | "
                f"{_pct(r['torchrun']['ettr'])} | {_pct(r['none']['ettr'])} | {t} |"
            )
        out.append("")
    c = results.get("classify")
    if c:
        out += [
            "## Classification throughput (`bench/classify.py`)",
            "",
            "| lines | rules | ftsup (lines/s, one core) | `re.search` loop (lines/s) | speed-up |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {c['lines']:,} | {c['rules']} | {c['lines_per_s']:,.0f} | {c['baseline_lines_per_s']:,.0f} | "
            f"{c['speedup']}x |",
            "",
        ]
    out += goodput_real_md(results)
    for key in ("latency", "scale"):
        if key in results:
            out += [f"## {key}", "", "```json", json.dumps(results[key], indent=2), "```", ""]
    out += ["## Not yet measured", ""]
    out += [f"- `{k}`" for k in missing] or ["- nothing: every part of the output contract is measured"]
    out += ["", "## Runs", "", "| part | status | seconds | command |", "| --- | --- | ---: | --- |"]
    for name, rec in results["runs"].items():
        out.append(f"| {name} | {rec['status']} | {rec.get('seconds', '—')} | `{rec['command']}` |")
    return "\n".join(out) + "\n"


def _g(x: Any) -> str:
    return f"{x:g}" if isinstance(x, int | float) else "—"


def _ratio(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "—"


def goodput_real_md(results: dict[str, Any]) -> list[str]:
    """The real runs' table (bench/goodput_real.py): ETTR and tokens per strategy, as ratios to ftsup."""
    real = results.get("goodput_real")
    if not real:
        return []
    meta = results.get("goodput_real_meta", {})
    sc = meta.get("scaled", {})
    scale = meta.get("time_scale")
    window = meta.get("window_s")
    names = {
        "ftsup": "ftsup",
        "torchrun": "torchrun --max-restarts=3",
        "none": "no supervisor",
    }
    out = [
        "## Goodput: real runs (`bench/goodput_real.py`)",
        "",
        f"The same seeded fault schedule ({', '.join(f['kind'] for f in meta.get('schedule', []))}, at "
        "the same points of each job's training) played "
        f"for real against the FSDP trainer (2 nodes on this machine) for {_g(window)} s per strategy, "
        f"time scaled by {'—' if not scale else f'1/{1 / scale:.0f}'}: collective timeout "
        f"{_g(sc.get('collective_timeout_s'))} s, human reaction {_g(sc.get('human_s'))} s "
        f"({_g(sc.get('human_node_s'))} s for a bad node), ftsup's budgets scaled alike, its hang floor "
        f"{_g(sc.get('stall_floor_s'))} s. ETTR and tokens count the steps a committed checkpoint kept, "
        "from the trainer's own step lines; an outage runs from the last step before a failure to the "
        "first step after it. Every assumption is in `results.json` under "
        "`goodput_real_meta.assumptions`. One run on a shared machine: not a distribution.",
        "",
        "| strategy | ETTR | tokens | ETTR / ftsup | tokens / ftsup | faults struck | faults not reached "
        "| training processes | outages (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, r in real.items():
        outages = ", ".join(f"{x:.1f}" for x in r.get("outages_s", []))
        out.append(
            f"| {names.get(key, key)} | {_pct(r.get('ettr'))} | {r.get('tokens', 0):,} | "
            f"{_ratio(r.get('ettr_vs_ftsup'))} | {_ratio(r.get('tokens_vs_ftsup'))} | "
            f"{r.get('faults_struck', '—')} | {r.get('faults_not_reached', '—')} | "
            f"{r.get('processes', '—')} | {outages or '—'} |"
        )
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (tests)")
    ap.add_argument("--only", default="", help="comma-separated part names (default: all)")
    ap.add_argument("--out", type=Path, default=BENCH, help="directory for results.json and RESULTS.md")
    args = ap.parse_args(argv)

    only = {s for s in args.only.split(",") if s}
    results: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "machine": machine(),
        "runs": {},
    }
    failed = False
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    write_json_atomic(results_path, results)  # no stale figures from an earlier run survive
    for part in PARTS:
        if only and part.name not in only:
            continue
        print(f"[bench] {part.name}: bench/{part.script}", flush=True)
        # The simulation uses the decision latency part 1 measured in this run, when it did.
        extra = ("--latency-from", str(results_path)) if part.name == "simulate" else ()
        obj, rec = run_part(part, args.quick, extra)
        results["runs"][part.name] = rec
        print(f"[bench] {part.name}: {rec['status']} ({rec.get('seconds', 0)} s)", flush=True)
        if obj is None:
            failed = failed or not rec["status"].startswith("not yet")
            continue
        if part.key is not None:
            results[part.key] = obj
        elif part.name == "simulate":
            results["goodput_sim"] = obj.pop("goodput_sim")
            results["goodput_sim_meta"] = obj
        else:
            results.update(obj)
        write_json_atomic(results_path, results)
    md = markdown(results)
    tmp = args.out / "RESULTS.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, args.out / "RESULTS.md")
    print(md)
    print(f"[bench] wrote {args.out / 'results.json'} and {args.out / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
