"""The replay report: every figure as JSON, PNG plots, and one self-contained HTML page.

`write_report(doc, predictions, out)` takes the report document (plain data: what
`streams.replay` measured, see `build_document` there) and each candidate's predictions
(event id, event time, deep and head probability, label), and writes, into `out`:

- `report.json`: the document, every number in it (machines read this one);
- `metrics.png` (log loss, ROC AUC and accuracy over event time, cumulative and rolling,
  head and deep model, per candidate), `calibration.png` (reliability of the head's and
  the deep model's probabilities), `label-delay.png` (the labels' delays);
- `report.html`: the summary table and the plots, embedded as base64 PNG (no scripts,
  no external files: it opens anywhere);
- `predictions-<candidate>.parquet`: one row per event.

The files are written into a sibling temporary directory that is renamed to `out` only
when all are complete, so an interrupted or failed run never leaves a report that looks
finished. `calibration` is the reliability table the plot draws:

>>> import numpy as np
>>> calibration(np.array([0.1, 0.15, 0.9]), np.array([0.0, 1.0, 1.0]), bins=2)
[{'low': 0.0, 'high': 0.5, 'count': 2, 'mean_p': 0.125, 'rate': 0.5}, \
{'low': 0.5, 'high': 1.0, 'count': 1, 'mean_p': 0.9, 'rate': 1.0}]
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

__all__ = ["FIGURES", "calibration", "write_report"]

FIGURES = ("metrics.png", "calibration.png", "label-delay.png")
METRICS = ("log_loss", "roc_auc", "accuracy")


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of probability `p`: count, mean probability, observed rate of
    `y` = 1 (NaN probabilities are left out; empty bins are not listed)."""
    keep = ~np.isnan(p) & ~np.isnan(y)
    p, y = p[keep], y[keep]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                        "count": int(m.sum()), "mean_p": float(p[m].mean()),
                        "rate": float(y[m].mean())})
    return out


def _times(points: list[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromtimestamp(p["event_time"] / 1000, UTC) for p in points]


def _metrics_png(doc: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(10, 3.2 * len(METRICS)), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, METRICS, strict=True):
        for i, cand in enumerate(doc["candidates"]):
            pts = cand["points"]
            if not pts:
                continue
            x, c = _times(pts), colors[i % len(colors)]
            name = cand["candidate"]
            ax.plot(x, [p["cumulative"][metric] for p in pts], color=c, lw=2,
                    label=f"{name} head, cumulative")
            ax.plot(x, [p["rolling"][metric] for p in pts], color=c, lw=1, ls="--",
                    label=f"{name} head, rolling")
            ax.plot(x, [p["deep"]["cumulative"][metric] for p in pts], color=c, lw=1, ls=":",
                    label=f"{name} deep model alone, cumulative")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Prequential metrics over event time (rolling: last "
                      f"{doc['rolling_window']} labels)")
    axes[0].legend(fontsize=7, ncol=2)
    # matplotlib's DateFormatter is untyped
    axes[-1].xaxis.set_major_formatter(
        mdates.DateFormatter("%Y-%m-%d\n%H:%M"))  # type: ignore[no-untyped-call]
    axes[-1].set_xlabel("event time of the label (UTC)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _calibration_png(doc: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="perfectly calibrated")
    for cand in doc["candidates"]:
        for part, ls in (("head", "-"), ("deep", ":")):
            rows = cand["calibration"][part]
            if rows:
                ax.plot([r["mean_p"] for r in rows], [r["rate"] for r in rows], marker="o",
                        ls=ls, label=f"{cand['candidate']} {part}")
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Calibration (scored labels)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _delay_png(doc: dict[str, Any], path: Path) -> None:
    delay = doc["label_delay"]
    fig, ax = plt.subplots(figsize=(8, 4))
    edges, counts = delay["histogram"]["edges_s"], delay["histogram"]["counts"]
    if counts:
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black")
    ax.set_xlabel("label delay: label time - event time (s)")
    ax.set_ylabel("labels")
    ax.set_title(f"Label delay ({delay['labels']} labels; median {delay['median_s']:.0f} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return html.escape(str(v))


def _curated(c: dict[str, int] | None) -> str:
    """The curated cell: events sent for labelling (of them labelled, and the head wrong).

    >>> _curated({"events": 50, "labelled": 48, "head_wrong": 20})
    '50 (48, 20)'
    """
    return "" if c is None else f"{c['events']} ({c['labelled']}, {c['head_wrong']})"


def _html(doc: dict[str, Any], images: dict[str, bytes]) -> str:
    head = ["candidate", "model", "head spec", "events", "labels",
            *(f"head {m} (cum.)" for m in METRICS), *(f"deep {m} (cum.)" for m in METRICS),
            "drift alerts", "curated (labelled, head wrong)"]
    rows = []
    for c in doc["candidates"]:
        cells = [c["candidate"], f"{c['model']} v{c['model_version']}", c["spec"], c["events"],
                 c["labels"], *(c["head"]["cumulative"].get(m, float("nan")) for m in METRICS),
                 *(c["deep"]["cumulative"].get(m, float("nan")) for m in METRICS),
                 c["drift_alerts"], _curated(c.get("curated"))]
        rows.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in cells) + "</tr>")
    src = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                  for k, v in doc["sources"].items())
    imgs = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(name)}</figcaption>'
        "</figure>" for name, data in images.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>headwater replay report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #999; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #eee; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>headwater replay report</h1>
<p>{doc['events']} {html.escape(doc['family'])} events replayed ({doc['featurized']} featurized),
{doc['labels']} labels; {doc['events_per_s']:.0f} events/s in process; made
{html.escape(doc['created_at'])}.</p>
<ul>{src}</ul>
<h2>Summary (cumulative prequential metrics over each candidate's scored labels)</h2>
<table>
<tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>
{''.join(rows)}
</table>
<h2>Plots</h2>
{imgs}
<p>Every number is in report.json beside this file.</p>
</body>
</html>
"""


def write_report(doc: dict[str, Any], predictions: dict[str, pa.Table], out: Path) -> Path:
    """Write the report (the module doc) to `out`, atomically; returns `out`.

    An `out` that exists must hold an earlier report (its `report.json`): it is
    replaced; anything else there is an error, never overwritten."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                               and not (out / "report.json").exists())):
        raise FileExistsError(f"{out} exists and is not a replay report: choose another --out")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _metrics_png(doc, tmp / "metrics.png")
        _calibration_png(doc, tmp / "calibration.png")
        _delay_png(doc, tmp / "label-delay.png")
        images = {name: (tmp / name).read_bytes() for name in FIGURES}
        for name, t in predictions.items():
            pq.write_table(t, tmp / f"predictions-{name}.parquet")
        (tmp / "report.json").write_bytes(orjson.dumps(
            {**doc, "figures": list(FIGURES)},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        (tmp / "report.html").write_text(_html(doc, images))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
