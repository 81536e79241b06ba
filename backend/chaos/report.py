"""The HTML report of a chaos run: one self-contained file, inline SVG, no external assets.
Pure: the verdict and the fault bands in, the page out.

It shows a timeline with each fault as a band, throughput (successful and failed calls
per second) and latency (p50 and p99 of the successful calls) under the same bands, the
faults in a table, every call that failed or timed out, and for each client whose
history is not linearizable the checker's explanation with the operations on its key
around the violation.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from backend.chaos.verdict import Verdict, Violation, describe, error_of
from backend.sim.linearizability import Operation

WIDTH = 960
LEFT, RIGHT = 70, 20
LANE = 22
PANEL = 140
COLOURS = {
    "kill": "#d62728",
    "pause": "#ff7f0e",
    "partition": "#9467bd",
    "netem": "#1f77b4",
    "disk": "#8c564b",
    "clock": "#17becf",
}
FAILED_SHOWN = 500
CHAR_WIDTH = 6.2  # pixels per character of an 11 px sans-serif label, about


@dataclass(frozen=True)
class Band:
    """A fault as the report draws it; times in seconds after the workload's start."""

    kind: str
    role: str
    target: str
    option: str
    start: float | None  # None: never injected (skipped)
    end: float | None
    notes: str

    @property
    def label(self) -> str:
        option = f" {self.option}" if self.option else ""
        return f"{self.kind} {self.target or self.role}{option}"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


class Scale:
    def __init__(self, duration: float) -> None:
        self.duration = max(duration, 1.0)

    def x(self, seconds: float) -> float:
        span = WIDTH - LEFT - RIGHT
        return round(LEFT + span * min(max(seconds, 0.0), self.duration) / self.duration, 1)


def lanes(bands: Sequence[Band]) -> list[int]:
    """A lane per band so that bands in one lane never overlap; bands in input order."""
    ends: list[float] = []
    chosen = []
    for band in bands:
        start, end = band.start or 0.0, band.end if band.end is not None else band.start or 0.0
        lane = next((i for i, e in enumerate(ends) if e <= start), len(ends))
        if lane == len(ends):
            ends.append(end)
        else:
            ends[lane] = end
        chosen.append(lane)
    return chosen


def timeline_svg(bands: Sequence[Band], duration: float) -> str:
    """The fault lanes: one rectangle per injected fault, labelled."""
    scale = Scale(duration)
    shown = [b for b in bands if b.start is not None]
    placed = lanes(shown)
    height = LANE * max(1, max(placed, default=0) + 1) + 24
    parts = [_axis(scale, height - 18)]
    for band, lane in zip(shown, placed, strict=True):
        x0 = scale.x(band.start or 0.0)
        x1 = max(scale.x(band.end if band.end is not None else duration), x0 + 2)
        y = 4 + lane * LANE
        colour = COLOURS.get(band.kind, "#7f7f7f")
        parts.append(
            f'<rect class="fault-band" data-kind="{esc(band.kind)}" x="{x0}" y="{y}" '
            f'width="{round(x1 - x0, 1)}" height="{LANE - 4}" fill="{colour}" opacity="0.75">'
            f"<title>{esc(band.label)}: {band.start:.2f}s to "
            f"{_seconds(band.end)}; {esc(band.notes)}</title></rect>"
        )
        parts.append(
            f'<text x="{x0 + 3}" y="{y + LANE - 9}" font-size="11" fill="#fff">'
            f"{esc(fitted(band.label, x1 - x0))}</text>"
        )
    return _svg(height, parts, "Timeline: each fault from injection to heal")


def fitted(label: str, width: float) -> str:
    """The label cut to what fits a band `width` pixels wide (the tooltip has it all)."""
    room = int((width - 6) / CHAR_WIDTH)
    if len(label) <= room:
        return label
    return label[: max(0, room - 1)] + "…" if room > 1 else ""


def _backdrop(bands: Sequence[Band], scale: Scale, duration: float, height: int) -> list[str]:
    """The faults as faint bands behind a chart, so what they did lines up."""
    parts = []
    for band in bands:
        if band.start is None:
            continue
        x0 = scale.x(band.start)
        x1 = max(scale.x(band.end if band.end is not None else duration), x0 + 1)
        colour = COLOURS.get(band.kind, "#7f7f7f")
        parts.append(
            f'<rect x="{x0}" y="0" width="{round(x1 - x0, 1)}" height="{height}" '
            f'fill="{colour}" opacity="0.12"/>'
        )
    return parts


def throughput_svg(verdict: Verdict, bands: Sequence[Band], duration: float) -> str:
    """Successful calls per second as a line, failed ones as red bars."""
    scale = Scale(duration)
    plot = PANEL - 24
    top = max([s.ok for s in verdict.seconds] + [s.errors for s in verdict.seconds] + [1])
    parts = _backdrop(bands, scale, duration, plot)
    parts.append(_axis(scale, plot))
    parts.append(_y_label(f"{top}/s", 10))
    step = scale.x(1.0) - scale.x(0.0)
    for s in verdict.seconds:
        if s.errors:
            h = round(plot * s.errors / top, 1)
            parts.append(
                f'<rect class="errors" x="{scale.x(s.at)}" y="{plot - h}" '
                f'width="{max(1.0, round(step - 1, 1))}" height="{h}" fill="#d62728">'
                f"<title>{s.at}s: {s.errors} failed</title></rect>"
            )
    points = " ".join(
        f"{scale.x(s.at + 0.5)},{round(plot - plot * s.ok / top, 1)}" for s in verdict.seconds
    )
    parts.append(f'<polyline points="{points}" fill="none" stroke="#2ca02c" stroke-width="2"/>')
    return _svg(PANEL, parts, "Calls per second: succeeded (green line), failed (red bars)")


def latency_svg(verdict: Verdict, bands: Sequence[Band], duration: float) -> str:
    """p50 and p99 latency of the successful calls, per second."""
    scale = Scale(duration)
    plot = PANEL - 24
    values = [v for s in verdict.seconds for v in (s.p50, s.p99) if v is not None]
    top = max([*values, 0.001])
    parts = _backdrop(bands, scale, duration, plot)
    parts.append(_axis(scale, plot))
    parts.append(_y_label(f"{top * 1000:.0f} ms", 10))
    for name, colour in (("p50", "#1f77b4"), ("p99", "#ff7f0e")):
        points = " ".join(
            f"{scale.x(s.at + 0.5)},{round(plot - plot * value / top, 1)}"
            for s in verdict.seconds
            if (value := getattr(s, name)) is not None
        )
        if points:
            parts.append(
                f'<polyline class="{name}" points="{points}" fill="none" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
    return _svg(PANEL, parts, "Latency of successful calls: p50 (blue), p99 (orange)")


def _axis(scale: Scale, y: float) -> str:
    ticks = []
    step = max(1, round(scale.duration / 10))
    for second in range(0, int(scale.duration) + 1, step):
        x = scale.x(second)
        ticks.append(
            f'<line x1="{x}" y1="{y}" x2="{x}" y2="{y + 4}" stroke="#555"/>'
            f'<text x="{x}" y="{y + 15}" font-size="10" text-anchor="middle">{second}s</text>'
        )
    line = f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="#555"/>'
    return line + "".join(ticks)


def _y_label(text: str, y: float) -> str:
    return f'<text x="{LEFT - 6}" y="{y}" font-size="10" text-anchor="end">{esc(text)}</text>'


def _svg(height: int, parts: list[str], title: str) -> str:
    body = "".join(parts)
    return (
        f"<h2>{esc(title)}</h2>\n"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">{body}</svg>\n'
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def faults_table(bands: Sequence[Band]) -> str:
    rows = [
        f"<tr><td>{esc(b.kind)}</td><td>{esc(b.role)}</td><td>{esc(b.target or '-')}</td>"
        f"<td>{esc(b.option or '-')}</td><td>{_seconds(b.start)}</td><td>{_seconds(b.end)}</td>"
        f"<td>{esc(b.notes)}</td></tr>"
        for b in bands
    ]
    head = "<tr><th>fault</th><th>role</th><th>target</th><th>variant</th><th>injected</th>"
    head += "<th>healed</th><th>notes</th></tr>"
    return f"<h2>Faults</h2>\n<table>{head}{''.join(rows)}</table>\n"


def operations_table(ops: Sequence[Operation], caption: str, limit: int) -> str:
    if not ops:
        return f"<h2>{esc(caption)}</h2>\n<p>None.</p>\n"
    rows = []
    for op in list(ops)[:limit]:
        d = describe(op)
        rows.append(
            f"<tr><td>p{d['process']}</td><td>{d['call']:.3f}</td><td>{_seconds(d['ret'])}</td>"
            f"<td>{esc(d['cid'])}</td><td>{esc(d['op'])}</td><td>{esc(d['outcome'])}</td></tr>"
        )
    more = f"<p>... and {len(ops) - limit} more.</p>" if len(ops) > limit else ""
    head = "<tr><th>client</th><th>called</th><th>returned</th><th>CID</th><th>call</th>"
    head += "<th>outcome</th></tr>"
    return f"<h2>{esc(caption)} ({len(ops)})</h2>\n<table>{head}{''.join(rows)}</table>{more}\n"


def failure_counts(ops: Sequence[Operation]) -> str:
    counts: dict[str, int] = {}
    for op in ops:
        counts[error_of(op)] = counts.get(error_of(op), 0) + 1
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"


def violation_section(found: Violation) -> str:
    table = operations_table(
        found.window, f"Operations on CID {found.cid} around the violation", 200
    )
    return (
        f'<div class="violation"><h2>Violation: CID {esc(found.cid)} is {esc(found.verdict)}'
        f"</h2>\n<pre>{esc(found.explanation)}</pre>\n{table}</div>\n"
    )


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 1em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }
.pass { color: #2ca02c; } .fail { color: #d62728; }
"""


def render(
    verdict: Verdict, bands: Sequence[Band], duration: float, facts: Sequence[str] = ()
) -> str:
    """The whole page."""
    outcome = "pass" if verdict.passed else "fail"
    facts_list = "".join(f"<li>{esc(f)}</li>" for f in facts)
    lost = (
        operations_table(verdict.lost_writes, "Acknowledged writes lost", FAILED_SHOWN)
        if verdict.lost_writes
        else ""
    )
    problems = "".join(f"<li>{esc(p)}</li>" for p in verdict.problems)
    problems_html = (
        f"<h2>Answers no correct system gives</h2><ul>{problems}</ul>" if problems else ""
    )
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            "<title>taskring chaos report</title>",
            f"<style>{STYLE}</style></head><body>\n",
            "<h1>taskring chaos report</h1>\n",
            f'<p class="verdict {outcome}"><strong>{esc(verdict.line())}</strong></p>\n',
            f"<ul>{facts_list}<li>failed calls: {esc(failure_counts(verdict.failed))}</li></ul>\n",
            timeline_svg(bands, duration),
            throughput_svg(verdict, bands, duration),
            latency_svg(verdict, bands, duration),
            faults_table(bands),
            problems_html,
            lost,
            "".join(violation_section(v) for v in verdict.violations),
            operations_table(verdict.failed, "Calls that failed or timed out", FAILED_SHOWN),
            "</body></html>\n",
        ]
    )
