"""The `ftsup` command line.

    ftsup run -c CONFIG [--mode observe|act] [--clear-halt]
                                                 supervise a job (real AWS or any endpoint)
    ftsup demo [--workdir DIR]                   the whole product locally, on embedded defaults
    ftsup classify --jsonl IN [-p POLICIES]      offline classification, one JSON verdict per window
    ftsup policy check PATH...                   validate policy files; every problem, file:line:col
    ftsup policy explain LINE [-p POLICIES]      which rules match a line, and which wins
    ftsup policy test FILE... [-p POLICIES]      run policy unit tests (log lines, metric series,
                                                 expected incidents and decisions)
    ftsup config check CONFIG                    validate a daemon config file
    ftsup timeline [--json] (-c CONFIG | --journal DB) [--job NAME]
    ftsup report --html OUT (-c CONFIG | --journal DB) [--job NAME] [--from T] [--to T]
                                                 one self-contained HTML page: node swimlanes,
                                                 goodput, ETTR, MTBF/MTTR (T: ISO 8601 or epoch s)
    ftsup replay -c CONFIG --from T1 --to T2 [--policies PATH...] [--json]
                                                 what ftsup would have done over a past window
                                                 (observe mode; T: ISO 8601 UTC, -2h, -30m, now)

Exit codes: 0 ok, 1 a check failed, 2 bad input (config, policy, arguments), 3 the job halted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from supervisor.errors import ConfigError, StartupError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftsup", description="Fault-tolerant training supervisor.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="supervise a job described by a config file")
    run.add_argument("-c", "--config", required=True, type=Path)
    run.add_argument("--mode", choices=["observe", "act"], help="override the config's mode")
    run.add_argument(
        "--clear-halt", action="store_true", help="a human has inspected the halted job: launch it again"
    )

    demo = sub.add_parser("demo", help="run the local end-to-end demo (no AWS account needed)")
    demo.add_argument("--workdir", type=Path, help="where to keep the run (default demo-run/<time>)")

    classify = sub.add_parser("classify", help="classify saved log windows offline")
    classify.add_argument("--jsonl", required=True, help="input file of {id, lines} objects, or - for stdin")
    classify.add_argument(
        "-p", "--policies", action="append", type=Path, help="policy file or dir (repeatable)"
    )

    policy = sub.add_parser("policy", help="policy tooling")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate policy files or directories")
    check.add_argument("paths", nargs="+", type=Path)
    explain = psub.add_parser("explain", help="show which rules match a log line")
    explain.add_argument("line")
    explain.add_argument("-p", "--policies", action="append", type=Path)
    ptest = psub.add_parser("test", help="run policy unit tests (promtool-style test files)")
    ptest.add_argument("files", nargs="+", type=Path)
    ptest.add_argument(
        "-p", "--policies", action="append", type=Path, help="policies for files that name none"
    )

    config = sub.add_parser("config", help="config tooling")
    csub = config.add_subparsers(dest="config_command", required=True)
    ccheck = csub.add_parser("check", help="validate a daemon config file (and the policies it names)")
    ccheck.add_argument("config", type=Path)

    timeline = sub.add_parser("timeline", help="print the job's incidents in order")
    where = timeline.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", type=Path)
    where.add_argument("--journal", type=Path)
    timeline.add_argument("--job")
    timeline.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="write the job's failures and goodput as one HTML file")
    report.add_argument("--html", required=True, type=Path, help="the file to write")
    rwhere = report.add_mutually_exclusive_group(required=True)
    rwhere.add_argument("-c", "--config", type=Path)
    rwhere.add_argument("--journal", type=Path)
    report.add_argument("--job", help="one job (default: the config's job, else every job)")
    report.add_argument("--from", dest="start", help="window start (ISO 8601 or epoch seconds)")
    report.add_argument("--to", dest="end", help="window end (ISO 8601 or epoch seconds)")

    rp = sub.add_parser(
        "replay", help="run the policies over a past window of the job's CloudWatch data (observe mode)"
    )
    rp.add_argument("-c", "--config", required=True, type=Path)
    rp.add_argument("--from", dest="start", required=True, help="ISO 8601 UTC, or relative: -2h, -30m, now")
    rp.add_argument("--to", dest="end", default="now", help="ISO 8601 UTC, or relative (default: now)")
    rp.add_argument(
        "-p", "--policies", nargs="+", type=Path, help="policy files or dirs replacing the config's"
    )
    rp.add_argument("--endpoint-url", help="override aws.endpoint_url")
    rp.add_argument("--json", action="store_true")
    return p


def _policy_paths(given: list[Path] | None) -> list[Path]:
    from supervisor.config import default_policy_dir

    return given or [default_policy_dir()]


def _glue_times(argv: list[str]) -> list[str]:
    """`--from -2h` reads to argparse as an option: glue a time that starts with "-" to its flag."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--from", "--to") and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_glue_times(sys.argv[1:] if argv is None else argv))
    try:
        return _dispatch(args)
    except (ConfigError, StartupError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ftsup timeline | head`): not a failure. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    from supervisor.logs import configure_logging

    if args.command == "classify":
        from supervisor.classify.offline import classify_jsonl
        from supervisor.classify.policy import load_policies

        policy = load_policies(_policy_paths(args.policies))
        if args.jsonl == "-":
            return classify_jsonl(sys.stdin, sys.stdout, policy)
        with open(args.jsonl, encoding="utf-8", errors="replace") as inp:
            return classify_jsonl(inp, sys.stdout, policy)

    if args.command == "policy":
        from supervisor.classify import commands

        if args.policy_command == "check":
            return commands.policy_check([str(p) for p in args.paths], sys.stdout)
        if args.policy_command == "test":
            from supervisor.classify.policytest import policy_test

            return policy_test(args.files, sys.stdout, args.policies or ())
        return commands.explain(args.line, [str(p) for p in _policy_paths(args.policies)], sys.stdout)

    if args.command == "config":
        from supervisor.classify.policy import load_policies
        from supervisor.config import load_config

        cfg = load_config(args.config)
        policy = load_policies([Path(p) for p in cfg.policies])
        print(f"ok: {args.config} (job {cfg.job.name}, mode {cfg.mode}, {len(policy.rules)} rules)")
        return 0

    if args.command == "timeline":
        from supervisor.journal import Journal
        from supervisor.report.timeline import build_timeline, render_json, render_text

        path, job = _journal_and_job(args)
        if not path.exists():
            print(f"{path}: no journal here", file=sys.stderr)
            return 2
        journal = Journal(path)
        try:
            entries = build_timeline(journal, job)
        finally:
            journal.close()
        print(render_json(entries) if args.json else render_text(entries))
        return 0

    if args.command == "replay":
        return _replay(args)

    if args.command == "report":
        return _report(args)

    if args.command == "demo":
        from supervisor.demo import run_demo

        return run_demo(workdir=args.workdir)

    if args.command == "run":
        from supervisor.config import load_config
        from supervisor.daemon import build, run_forever
        from supervisor.vocabulary import Mode

        cfg = load_config(args.config)  # a bad config exits 2 here, before anything starts
        configure_logging(cfg.logging.format, cfg.logging.level)
        daemon = build(cfg, mode=Mode(args.mode) if args.mode else None)
        if args.clear_halt:
            daemon.clear_halt()
        return run_forever(daemon)
    raise AssertionError(f"unhandled command {args.command}")


def _replay(args: argparse.Namespace) -> int:
    """`ftsup replay`: 0 done (whatever it found), 1 the window could not be read, 2 bad input."""
    import time

    from supervisor.config import load_config
    from supervisor.logs import configure_logging
    from supervisor.replay import ReplayError, parse_when, render_text, replay, report_json

    now = time.time()
    try:
        start, end = parse_when(args.start, now), parse_when(args.end, now)
    except ValueError as exc:
        print(f"ftsup replay: {exc}", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    configure_logging(cfg.logging.format, "warning")  # the engine's info lines would drown the report
    try:
        report = replay(cfg, start, end, policies=args.policies, endpoint_override=args.endpoint_url)
    except ValueError as exc:
        print(f"ftsup replay: {exc}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        print(f"ftsup replay: {exc}", file=sys.stderr)
        return 1
    print(report_json(report) if args.json else render_text(report))
    return 0


def _journal_and_job(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The journal and job a `-c CONFIG | --journal DB [--job NAME]` command reads (--job wins)."""
    if args.config is None:
        return Path(args.journal), args.job
    from supervisor.config import load_config

    cfg = load_config(args.config)
    return Path(cfg.journal.path), args.job or cfg.job.name


def _report(args: argparse.Namespace) -> int:
    """`ftsup report --html OUT`: 0 written, 2 bad input (no journal, bad time, unknown job)."""
    from supervisor.journal import Journal
    from supervisor.report.html import build_reports, parse_instant, render_html

    path, job = _journal_and_job(args)
    try:
        start = parse_instant(args.start) if args.start else None
        end = parse_instant(args.end) if args.end else None
    except ValueError as exc:
        print(f"ftsup report: {exc}", file=sys.stderr)
        return 2
    if start is not None and end is not None and end < start:
        print("ftsup report: --to is before --from", file=sys.stderr)
        return 2
    if not path.exists():
        print(f"{path}: no journal here", file=sys.stderr)
        return 2
    journal = Journal(path)
    try:
        reports = build_reports(journal, job, start, end)
    finally:
        journal.close()
    if job is not None and all(not r.goodput.segments and not r.entries for r in reports):
        print(f"ftsup report: the journal {path} holds nothing for job {job!r}", file=sys.stderr)
        return 2
    out = Path(args.html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(reports, str(path)), encoding="utf-8")
    print(f"wrote {out} ({', '.join(r.goodput.job for r in reports) or 'no job'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
