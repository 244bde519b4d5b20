"""Label efficiency of the curation strategies on NAB, UCI Occupancy and Elec2: the online
head learning only from the labels the curator asked for, each strategy against random.

    python bench/curation.py [--seeds 3] [--budgets 1,5,20] [--out docs/curation]

Each dataset replays in event-time order through headwater's sensor features and the
head's default learner (`models.label_efficiency.replay`: a committee of four bagged
`StandardScaler | LogisticRegression` learners, labels due 1 h after their event); the
curator's clock runs at `--per-hour` events an hour (5,000: a live stream of 1.4 a
second; the datasets' own clocks hold 2 to 60 an hour) and holds the budget over an
hour, and every whole hour's labels are checked against the budget (±10% is the
target). Accuracy and ROC AUC count every event. For
two classes least confidence, margin and entropy choose the same events
(tests/test_curation.py), so least confidence stands for all three. Random also runs at
more budgets, to find the budget random needs to match each strategy. Prints a table
per dataset, writes `<out>.json` (every run) and `<out>.png` (accuracy and AUC against
budget). Needs ../shared/data (never copied here) and matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.datasets import elec2, nab, occupancy  # noqa: E402
from models.label_efficiency import Result, prepare, replay  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STRATEGIES = ("least-confidence", "ensemble", "variable-uncertainty", "random")
RANDOM_MORE = (0.005, 0.02, 0.1, 0.5, 1.0)  # random's extra budgets, beside the main ones
_streams: dict[str, tuple[list[dict[str, float]], np.ndarray, np.ndarray]] = {}


def load(name: str) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray]:
    if name not in _streams:
        table = {"nab": lambda: nab(DATA / "nab", labelled=True),
                 "occupancy": lambda: occupancy(DATA / "uci-occupancy"),
                 "elec2": lambda: elec2(DATA / "elec2")}[name]()
        _streams[name] = prepare(table)
    return _streams[name]


def one(job: tuple[str, str, float, int, int]) -> tuple[str, Result]:
    name, strategy, fraction, seed, per_hour = job
    x, y, t = load(name)
    return name, replay(x, y, t, strategy=strategy, fraction=fraction, seed=seed,
                        per_hour=per_hour)


def matching_budget(random: dict[float, float], target: float) -> float | None:
    """The smallest budget at which random's mean accuracy reaches `target`, linear
    between the budgets measured; None when even 100% does not."""
    budgets = sorted(random)
    for lo, hi in zip(budgets, budgets[1:], strict=False):
        a, b = random[lo], random[hi]
        if random[lo] >= target:
            return lo
        if a < target <= b:
            return lo + (hi - lo) * (target - a) / (b - a)
    return budgets[0] if random[budgets[0]] >= target else None


def below(random: np.ndarray, got: np.ndarray) -> bool:
    """Whether `got`'s mean is below random's by more than noise: two standard deviations
    of the seeds' spread, pooled within the two sets of runs (not across them, where the
    gap itself would widen the noise).

    >>> below(np.array([0.60, 0.61, 0.59]), np.array([0.55, 0.56, 0.54]))
    True
    >>> below(np.array([0.60, 0.65, 0.55]), np.array([0.58, 0.63, 0.53]))
    False
    """
    if len(random) < 2 or len(got) < 2:
        return bool(got.mean() < random.mean())
    noise = 2 * np.sqrt((np.var(random, ddof=1) + np.var(got, ddof=1)) / 2)
    return bool(got.mean() < random.mean() - noise)


def summarise(results: list[tuple[str, Result]], budgets: list[float]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in dict.fromkeys(n for n, _ in results):
        runs = [r for n, r in results if n == name]
        cell: dict[tuple[str, float], list[Result]] = {}
        for r in runs:
            cell.setdefault((r.strategy, r.fraction), []).append(r)
        random_acc = {f: float(np.mean([r.accuracy for r in rs]))
                      for (s, f), rs in cell.items() if s == "random"}
        rows = []
        for (s, f), rs in sorted(cell.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if f not in budgets:
                continue
            acc = np.array([r.accuracy for r in rs])
            auc = np.array([r.roc_auc for r in rs])
            rand = cell[("random", f)]
            worse = {m: below(np.array([getattr(r, m) for r in rand]), got)
                     for m, got in (("accuracy", acc), ("roc_auc", auc))}
            hours = [u for r in rs for u in r.window_use]
            rows.append({
                "strategy": s, "budget": f, "accuracy": float(acc.mean()),
                "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "roc_auc": float(auc.mean()), "roc_auc_sd": float(auc.std(ddof=1))
                if len(auc) > 1 else 0.0,
                "random_accuracy": random_acc[f],
                "worse_than_random": worse["accuracy"],
                "worse_than_random_auc": worse["roc_auc"],
                "random_budget_to_match": matching_budget(random_acc, float(acc.mean())),
                "label_rate": float(np.mean([r.label_rate for r in rs])),
                "worst_hour_error": float(max(abs(u - 1) for u in hours)) if hours else None,
                "hours": len(hours),
                "seeds": [r.seed for r in rs]})
        out[name] = {"events": runs[0].events, "rows": rows, "random_curve": random_acc}
    return out


def table(name: str, s: dict[str, object]) -> str:
    rows = s["rows"]
    assert isinstance(rows, list)
    lines = [f"\n{name} ({s['events']:,} events)",
             f"{'strategy':<22}{'budget':>7}{'accuracy':>17}{'ROC AUC':>17}"
             f"{'random acc':>11}{'random needs':>13}{'rate':>7}{'worst hour':>11}"]
    for r in rows:
        need = r["random_budget_to_match"]
        lines.append(
            f"{r['strategy']:<22}{r['budget']:>7.0%}"
            f"{r['accuracy']:>10.4f} ± {r['accuracy_sd']:.4f}"
            f"{r['roc_auc']:>10.4f} ± {r['roc_auc_sd']:.4f}{r['random_accuracy']:>11.4f}"
            f"{(f'{need:.1%}' if need is not None else '> 100%'):>13}"
            f"{r['label_rate']:>7.2%}{r['worst_hour_error']:>10.1%}"
            + ("  ACCURACY BELOW RANDOM" if r["worse_than_random"] else "")
            + ("  AUC BELOW RANDOM" if r["worse_than_random_auc"] else ""))
    return "\n".join(lines)


def plot(summary: dict[str, object], path: Path) -> None:
    fig, axes = plt.subplots(2, len(summary), figsize=(5 * len(summary), 7), squeeze=False)
    for col, (name, s) in enumerate(summary.items()):
        assert isinstance(s, dict)
        for row, metric in enumerate(("accuracy", "roc_auc")):
            ax = axes[row][col]
            for strategy in STRATEGIES:
                pts = sorted((r["budget"], r[metric], r[f"{metric}_sd"]) for r in s["rows"]
                             if r["strategy"] == strategy)
                if pts:
                    b, m, sd = (np.array(v) for v in zip(*pts, strict=True))
                    ax.errorbar(b * 100, m, yerr=sd, marker="o", capsize=3, label=strategy)
            ax.set_xscale("log")
            ax.set_xlabel("labelling budget (% of events)")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_title(f"{name}: {metric.replace('_', ' ')}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", default="1,5,20", help="percent of events, comma-separated")
    ap.add_argument("--datasets", default="nab,occupancy,elec2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-hour", type=int, default=5_000, help="events an hour of the "
                    "curator's clock")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "curation")
    a = ap.parse_args()
    budgets = [float(b) / 100 for b in a.budgets.split(",")]
    jobs = [(d, s, f, seed, a.per_hour) for d in a.datasets.split(",")
            for seed in range(a.seeds) for f in budgets for s in STRATEGIES]
    jobs += [(d, "random", f, seed, a.per_hour) for d in a.datasets.split(",")
             for seed in range(a.seeds) for f in RANDOM_MORE if f not in budgets]
    started = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as pool:
        results = list(pool.map(one, jobs, chunksize=4))
    summary = summarise(results, budgets)
    for name, s in summary.items():
        print(table(name, s))
    below_random = [(name, r["strategy"], r["budget"]) for name, s in summary.items()
                    for r in s["rows"] if r["worse_than_random"] or r["worse_than_random_auc"]]
    print(f"\ncells below random beyond noise (accuracy or ROC AUC): "
          f"{below_random or 'none'}")
    off = [(name, r["strategy"], r["budget"], round(r["worst_hour_error"], 3))
           for name, s in summary.items() for r in s["rows"] if r["worst_hour_error"] > 0.10]
    hours = sum(r["hours"] for s in summary.values() for r in s["rows"])
    print(f"hours off the budget by more than 10% ({hours:,} hours checked at "
          f"{a.per_hour:,} events an hour): {off or 'none'}")
    print(f"\n{len(jobs)} replays in {time.perf_counter() - started:.0f} s "
          f"({a.workers} processes); seeds 0..{a.seeds - 1}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(
        {"summary": summary, "runs": [{"dataset": n, **asdict(r)} for n, r in results]},
        indent=1))
    plot(summary, a.out.with_suffix(".png"))
    print(f"wrote {a.out.with_suffix('.json')} and {a.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
