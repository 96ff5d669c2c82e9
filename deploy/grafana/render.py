"""Renders the Grafana dashboard to a PNG from a live Prometheus: the same panels, queries and layout.

For reports and docs where Grafana is not at hand:
    python deploy/grafana/render.py --prometheus http://127.0.0.1:9090 --minutes 10 --out dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DASHBOARD = Path(__file__).parent / "dashboards" / "headguard.json"
PERCENT = {"percentunit"}


def grafana_expr(expr: str, rate_interval: str) -> str:
    return expr.replace("$__rate_interval", rate_interval)


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    r = httpx.get(f"{prometheus}/api/v1/query_range",
                  params={"query": expr, "start": start, "end": end, "step": step}, timeout=30)
    r.raise_for_status()
    return r.json()["data"]["result"]


def legend(template: str, labels: dict) -> str:
    return template.replace("{{", "{").replace("}}", "}").format_map(_Blank(labels)).strip() or str(labels)


class _Blank(dict):
    def __missing__(self, key):
        return ""


def panel_series(prometheus: str, panel: dict, start: float, end: float, step: float, rate_interval: str):
    """[(legend, times, values)] for every target of a panel."""
    out = []
    for target in panel["targets"]:
        for series in query_range(prometheus, grafana_expr(target["expr"], rate_interval), start, end, step):
            points = np.array([(float(t), float(v)) for t, v in series["values"]])
            out.append((legend(target.get("legendFormat", ""), series["metric"]), points[:, 0] - start,
                        points[:, 1]))
    return out


def draw_timeseries(ax, series, unit):
    scale = 100 if unit in PERCENT else 1
    for name, t, v in series:
        ax.plot(t, v * scale, label=name, lw=1.4)
    ax.set_xlabel("seconds")
    if unit in PERCENT:
        ax.set_ylabel("%")
    elif unit:
        ax.set_ylabel(unit)
    if series:
        ax.legend(fontsize=7, loc="upper left")


def draw_stat(ax, series, unit):
    ax.axis("off")
    finite = [v[np.isfinite(v)] for _, _, v in series]
    value = finite[0][-1] if finite and len(finite[0]) else math.nan
    text = f"{100 * value:.1f} %" if unit in PERCENT else f"{value:g}"
    ax.text(0.5, 0.45, text, ha="center", va="center", fontsize=26, weight="bold", transform=ax.transAxes)


def draw_table(ax, series):
    """Grafana shows a table's instant query: the series present at the end of the range."""
    ax.axis("off")
    last = max((t[-1] for _, t, _ in series if len(t)), default=None)
    rows = [name for name, t, _ in series if len(t) and t[-1] == last]
    ax.text(0.02, 0.9, "\n".join(rows) or "no data", va="top", family="monospace", fontsize=8,
            transform=ax.transAxes)


def draw_heatmap(ax, series):
    buckets = sorted(((float(name), v) for name, _, v in series if name != "+Inf"), key=lambda b: b[0])
    if not buckets:
        return
    t = series[0][1]
    counts = np.nan_to_num(np.array([v for _, v in buckets]))
    per_bucket = np.diff(np.vstack([np.zeros_like(counts[0]), counts]), axis=0)  # cumulative -> per bucket
    ax.imshow(per_bucket, aspect="auto", origin="lower", cmap="Oranges", interpolation="nearest",
              extent=(t[0], t[-1], 0, len(buckets)))
    ax.set_yticks(np.arange(len(buckets)) + 0.5, [f"{le:g}" for le, _ in buckets], fontsize=6)
    ax.set_ylabel("score (bucket upper bound)")
    ax.set_xlabel("seconds")


def render(prometheus: str, start: float, end: float, out: Path, rate_interval: str = "15s") -> Path:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    step = max(1.0, (end - start) / 300)
    fig = plt.figure(figsize=(18, rows * 0.42))
    grid = fig.add_gridspec(rows, 24, hspace=2.4, wspace=1.2, top=0.95)
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        unit = panel["fieldConfig"]["defaults"].get("unit")
        series = panel_series(prometheus, panel, start, end, step, rate_interval)
        if panel["type"] == "timeseries":
            draw_timeseries(ax, series, unit)
        elif panel["type"] == "stat":
            draw_stat(ax, series, unit)
        elif panel["type"] == "table":
            draw_table(ax, series)
        else:
            draw_heatmap(ax, series)
        ax.set_title(panel["title"], fontsize=10, loc="left")
    fig.suptitle(f"{dashboard['title']}: {dashboard['description']}", fontsize=12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15, help="time range ending now")
    parser.add_argument("--rate-interval", default="1m", help="what Grafana's $__rate_interval stands for")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args()
    end = time.time()
    print(render(args.prometheus, end - 60 * args.minutes, end, args.out, args.rate_interval))


if __name__ == "__main__":
    main()
