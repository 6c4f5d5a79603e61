"""Links from an alert to the CloudWatch console: pure URL builders (no I/O, no clock).

- `log_stream_url(region, log_group, stream, start, end)`: the log stream's events in the console,
  opened at the window [start, end] (epoch seconds).
- `insights_url(region, log_groups, query, start, end)`: a Logs Insights query over the window,
  pre-filled and ready to run.
- `incident_query(streams)`: the Logs Insights query for an incident's node streams.

The console keeps its state in the URL fragment, escaped twice: path parts are percent-encoded,
then every ``%`` becomes ``$25`` (log groups) or the fragment's own ``%`` becomes ``$`` (the query
detail). The query detail is JSURL (``~(key~'value~...)``, where a value's characters outside
``[A-Za-z0-9_.-]`` are written ``*XX``, ``**XXXX`` above 0xff, and ``$`` as ``!``). China regions
use the ``amazonaws.cn`` console and GovCloud ``amazonaws-us-gov.com``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

from supervisor.report.timefmt import iso_utc

_PLAIN = re.compile(r"[A-Za-z0-9_.-]")


def console_base(region: str) -> str:
    """The CloudWatch console's home URL for `region` (query string included)."""
    if region.startswith("cn-"):
        host = f"{region}.console.amazonaws.cn"
    elif region.startswith("us-gov-"):
        host = f"{region}.console.amazonaws-us-gov.com"
    else:
        host = f"{region}.console.aws.amazon.com"
    return f"https://{host}/cloudwatch/home?region={region}"


def _console_path(part: str) -> str:
    """A path part of the console fragment: percent-encoded, then each ``%`` written ``$25``."""
    return quote(part, safe="").replace("%", "$25")


def _jsurl_string(value: str) -> str:
    out = ["'"]
    for ch in value:
        if _PLAIN.fullmatch(ch):
            out.append(ch)
        elif ch == "$":
            out.append("!")
        elif ord(ch) < 0x100:
            out.append(f"*{ord(ch):02x}")
        else:
            out.append(f"**{ord(ch):04x}")
    return "".join(out)


def log_stream_url(region: str, log_group: str, stream: str, start: float, end: float) -> str:
    """The console page of one log stream, showing events from `start` to `end` (epoch seconds)."""
    window = f"?start={int(start * 1000)}&end={int(end * 1000)}"
    return (
        f"{console_base(region)}#logsV2:log-groups/log-group/{_console_path(log_group)}"
        f"/log-events/{_console_path(stream)}{quote(window, safe='').replace('%', '$')}"
    )


def incident_query(streams: Sequence[str], limit: int = 1000) -> str:
    """Logs Insights query: every line of `streams` (all streams when empty), oldest first."""
    lines = ["fields @timestamp, @logStream, @message"]
    if streams:
        names = ", ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in streams)
        lines.append(f"| filter @logStream in [{names}]")
    lines += ["| sort @timestamp asc", f"| limit {limit}"]
    return "\n".join(lines)


def insights_url(region: str, log_groups: Sequence[str], query: str, start: float, end: float) -> str:
    """The Logs Insights console with `query` over `log_groups` for [start, end] (absolute, UTC)."""
    sources = "".join("~" + _jsurl_string(g) for g in log_groups)
    detail = (
        f"~(end~{_jsurl_string(iso_utc(end))}~start~{_jsurl_string(iso_utc(start))}"
        f"~timeType~'ABSOLUTE~tz~'UTC~editorString~{_jsurl_string(query)}"
        f"~isLiveTail~false~source~({sources}))"
    )
    fragment = quote("?queryDetail=" + detail, safe="~()'*!-_.").replace("%", "$")
    return f"{console_base(region)}#logsV2:logs-insights{fragment}"
