"""report.html from a job's summary: one self-contained page (inline CSS and SVG, no script, no network)."""
from __future__ import annotations

import html
import json

from tide.jobs.storage import Location

REPORT_NAME = "report.html"
WIDTH, HEIGHT, PAD = 640, 230, 44
TOP, BOTTOM = 36, 24  # plot area: below the title and legend row, above the x labels
PLOT_H = HEIGHT - TOP - BOTTOM
COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
MARKS = {"p50": "#16a34a", "p90": "#ea580c", "p99": "#dc2626"}

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1360px;color:#111;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}.muted{color:#666}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:16px}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 12px;background:#fff}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}.kpi{border:1px solid #ddd;border-radius:8px;
padding:8px 14px;min-width:150px}.kpi b{display:block;font-size:20px}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}svg text{font:11px system-ui,sans-serif;fill:#444}"""


def write_report(prefix: Location, summary: dict) -> Location:
    """Write report.html beside summary.json; returns where it went."""
    location = prefix.child(REPORT_NAME)
    location.write_bytes(render_report(summary).encode())
    return location


def render_report(summary: dict) -> str:
    title = f"Tide job {summary['job_id']}"
    body = [f"<h1>{_e(title)}</h1>",
            f"<div class=muted>{_e(summary['model'])} &middot; {_e(summary['status'])} &middot; "
            f"{summary['num_shards']} shards &middot; wall time {summary['wall_time_s']:.1f} s</div>",
            _kpis(summary), "<h2>Throughput and engine over time</h2>",
            "<p class=muted>x: seconds since the job started</p>", _time_charts(summary.get("series")),
            "<h2>Latency</h2>", _latency_charts(summary), "<h2>Workers</h2>", _workers(summary),
            "<h2>Cost</h2>", _cost(summary.get("cost"))]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}<script type=application/json id=summary>"
            f"{_script_json({k: v for k, v in summary.items() if k not in ('series', 'histograms')})}"
            "</script></body></html>")


def _kpis(summary: dict) -> str:
    counts, usage, cost = summary["request_counts"], summary["usage"], summary.get("cost") or {}
    hit = summary.get("job_prefix_cache_hit_rate")
    items = [("requests", f"{counts['completed']} / {counts['total']}", f"{counts['failed']} failed"),
             ("output tokens/s", f"{summary['output_tokens_per_s']:.1f}",
              f"{summary['total_tokens_per_s']:.1f} total tokens/s"),
             ("tokens", f"{usage['completion_tokens']:,}", f"{usage['prompt_tokens']:,} prompt"),
             ("preemptions", str(summary.get("preemptions", 0)), "engine totals at job end"),
             ("prefix-cache hit rate", _pct(hit), f"engine {_pct(summary.get('prefix_cache_hit_rate'))}"),
             ("cost", _money(cost.get("cost")) if cost.get("price_per_worker_hour") else "not priced",
              f"{_money(cost.get('cost_per_1m_output_tokens'))} per 1M output" if cost.get("price_per_worker_hour")
              else f"{cost.get('worker_seconds', 0):.1f} worker-seconds")]
    return "<div class=kpis>" + "".join(f"<div class=kpi>{_e(name)}<b>{_e(value)}</b><span class=muted>"
                                        f"{_e(note)}</span></div>" for name, value, note in items) + "</div>"


def _time_charts(series: dict | None) -> str:
    if not series:
        return "<p class=muted>No time series were recorded for this job.</p>"
    t, workers = series["t"], series["workers"]
    charts = [line_chart("Throughput (tokens/s)", t, {"output": series["output_tokens_per_s"],
                                                      "total": series["total_tokens_per_s"]}),
              line_chart("Batch occupancy (running / max_num_seqs)",
                         t, {w: f["batch_occupancy"] for w, f in workers.items()}, percent=True),
              line_chart("KV cache in use", t, {w: f["kv_cache_usage"] for w, f in workers.items()}, percent=True),
              line_chart("Preemptions since the job started", t, {w: f["preemptions"] for w, f in workers.items()})]
    return "<div class=grid>" + "".join(f"<div class=card>{c}</div>" for c in charts) + "</div>"


def _latency_charts(summary: dict) -> str:
    histograms, latency = summary.get("histograms") or {}, summary["latency_s"]
    names = {"ttft": "Time to first token", "tpot": "Time per output token", "latency": "End-to-end latency"}
    cards = []
    for key, name in names.items():
        if histograms.get(key):
            cards.append(histogram_chart(name, histograms[key], latency.get(key) or {}))
        else:
            cards.append(f"<b>{_e(name)}</b><p class=muted>no finished requests</p>")
    return "<div class=grid>" + "".join(f"<div class=card>{c}</div>" for c in cards) + "</div>"


def _workers(summary: dict) -> str:
    workers, seconds = summary["workers"], (summary.get("cost") or {}).get("per_worker_seconds", {})
    if not workers:
        return "<p class=muted>No worker ran a shard.</p>"
    rows = "".join(f"<tr><td>{_e(name)}</td><td>{f['shards']}</td><td>{f['completed']}</td><td>{f['failed']}</td>"
                   f"<td>{f['completion_tokens']:,}</td><td>{seconds.get(name, 0):.1f}</td>"
                   f"<td>{_pct(f['mean_batch_occupancy'])}</td><td>{_pct(f['prefix_cache_hit_rate'])}</td></tr>"
                   for name, f in workers.items())
    table = ("<table><tr><th>worker</th><th>shards</th><th>completed</th><th>failed</th><th>output tokens</th>"
             "<th>worker-s</th><th>batch occupancy</th><th>prefix-cache hits</th></tr>" + rows + "</table>")
    share = bar_chart("Output tokens per worker", {n: f["completion_tokens"] for n, f in workers.items()})
    return f"<div class=grid><div class=card>{table}</div><div class=card>{share}</div></div>"


def _cost(cost: dict | None) -> str:
    if not cost:
        return "<p class=muted>No cost figures in this summary.</p>"
    if not cost["price_per_worker_hour"]:
        note = " (no price set: TIDE_PRICE_PER_WORKER_HOUR)"
    else:
        note = ""
    return (f"<p>{cost['worker_seconds']:.1f} worker-seconds &times; {cost['price_per_worker_hour']:g} per "
            f"worker-hour{_e(note)} = <b>{_money(cost['cost'])}</b>; {_money(cost['cost_per_1m_output_tokens'])} "
            "per 1M output tokens.</p>")


# ---- SVG ---------------------------------------------------------------------------------------------------------

def line_chart(title: str, x: list[float], lines: dict[str, list[float | None]], percent: bool = False) -> str:
    values = [v for ys in lines.values() for v in ys if v is not None]
    if not x or not values:
        return f"<b>{_e(title)}</b><p class=muted>not recorded</p>"
    top = 1.0 if percent else _nice(max(values))
    x_max = max(x) or 1.0
    sx = lambda v: PAD + (WIDTH - PAD - 10) * v / x_max  # noqa: E731
    sy = lambda v: HEIGHT - BOTTOM - PLOT_H * v / (top or 1)  # noqa: E731
    parts = [_axes(title, top, x_max, percent)]
    for i, (name, ys) in enumerate(lines.items()):
        color = COLORS[i % len(COLORS)]
        for run in _runs(x, ys):
            points = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in run)
            parts.append(f'<polyline fill=none stroke="{color}" stroke-width=1.8 points="{points}"/>' if len(run) > 1
                         else f'<circle r=2.5 fill="{color}" cx="{sx(run[0][0]):.1f}" cy="{sy(run[0][1]):.1f}"/>')
        parts.append(f'<text x="{PAD + 150 * i}" y=27 style="fill:{color}">&#9632; {_e(name[:28])}</text>')
    return _svg(parts)


def histogram_chart(title: str, hist: dict, marks: dict) -> str:
    edges, counts = hist["edges"], hist["counts"]
    top, x_max = max(counts) or 1, edges[-1] or 1e-6
    sx = lambda v: PAD + (WIDTH - PAD - 10) * v / x_max  # noqa: E731
    sy = lambda v: HEIGHT - BOTTOM - PLOT_H * v / top  # noqa: E731
    parts = [_axes(f"{title} (ms)", top, x_max * 1000, False)]
    for lo, hi, n in zip(edges, edges[1:], counts):
        parts.append(f'<rect x="{sx(lo):.1f}" y="{sy(n):.1f}" width="{max(sx(hi) - sx(lo) - 1, 0.5):.1f}" '
                     f'height="{sy(0) - sy(n):.1f}" fill="#93c5fd"><title>{lo * 1000:.1f}-{hi * 1000:.1f} ms: '
                     f'{n}</title></rect>')
    for i, (name, color) in enumerate(MARKS.items()):
        value = marks.get(name)
        if value is None:
            continue
        parts.append(f'<line x1="{sx(value):.1f}" x2="{sx(value):.1f}" y1={TOP} y2="{sy(0):.1f}" stroke="{color}" '
                     'stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{PAD + 130 * i}" y=27 style="fill:{color}">{name} {value * 1000:.1f} ms'
                     "</text>")
    return _svg(parts)


def bar_chart(title: str, bars: dict[str, float]) -> str:
    top = max(bars.values(), default=0) or 1
    height = 34 + 22 * len(bars)
    parts = [f'<text x=0 y=14 style="font-weight:600;fill:#111">{_e(title)}</text>']
    for i, (name, value) in enumerate(bars.items()):
        y, width = 26 + 22 * i, (WIDTH - 330) * value / top
        parts.append(f'<text x=0 y="{y + 12}">{_e(name[:36])}</text><rect x=230 y="{y}" width="{width:.1f}" '
                     f'height=16 fill="{COLORS[i % len(COLORS)]}"/><text x="{236 + width:.1f}" y="{y + 12}">'
                     f'{value:,.0f}</text>')
    return f'<svg viewBox="0 0 {WIDTH} {height}" width="100%" role=img>{"".join(parts)}</svg>'


def _axes(title: str, top: float, x_max: float, percent: bool) -> str:
    base, left = HEIGHT - BOTTOM, PAD
    ticks = []
    for k in range(5):
        value = top * k / 4
        y = base - PLOT_H * k / 4
        label = f"{value:.0%}" if percent else _short(value)
        ticks.append(f'<line x1={left} x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor=end>{label}</text>')
        x = left + (WIDTH - PAD - 10) * k / 4
        ticks.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor=middle>{_short(x_max * k / 4)}</text>')
    return (f'<text x="{left}" y=12 style="font-weight:600;fill:#111">{_e(title)}</text>' + "".join(ticks) +
            f'<line x1={left} x2={left} y1={TOP} y2={base} stroke="#999"/>'
            f'<line x1={left} x2="{WIDTH - 10}" y1={base} y2={base} stroke="#999"/>')


def _svg(parts: list[str]) -> str:
    return f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role=img>{"".join(parts)}</svg>'


def _runs(x: list[float], ys: list[float | None]) -> list[list[tuple[float, float]]]:
    """Consecutive points with values; a bin with no sample breaks the line."""
    runs, current = [], []
    for a, b in zip(x, ys):
        if b is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((a, b))
    return runs + ([current] if current else [])


def _nice(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10
    for mult in (1, 2, 2.5, 5, 10):
        if value <= step * mult:
            return step * mult
    return value


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.2g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _script_json(value: dict) -> str:
    return json.dumps(value).replace("</", "<\\/")


def _e(text: str) -> str:
    return html.escape(str(text))
