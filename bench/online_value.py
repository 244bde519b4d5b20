"""What online learning is worth on MovieLens 100K: the wide-and-deep online head learning
throughout, against the same head frozen after the first 10% of the labels, and the deep
model alone, in prequential (test-then-train) metrics with a label delay.

    python bench/online_value.py [--delay 1h] [--spec "StandardScaler | LogisticRegression"]
                                 [--fraction 0.1] [--out docs/online-vs-frozen.png]

All 100,000 ratings replay in event-time order (`models.value.online_vs_frozen`): the
deep engagement model is trained on the first `--fraction` of them (CPU, seeded) and
stays frozen; the head learns on the engagement features plus the deep model's score,
each label due `--delay` after its rating; metrics count only the labels after the
freeze point, for all three. Prints a table and writes a PNG of rolling and cumulative
log loss against labels. Needs ../shared/data/movielens-100k (never copied here) and
matplotlib. MovieLens: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens
Datasets: History and Context. ACM TiiS 5, 4.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.datasets import movielens  # noqa: E402
from models.value import ValueResult, online_vs_frozen  # noqa: E402

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """`90s`, `10m`, `1h`, `2d` or plain milliseconds, as milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 90s, 10m, 1h, 2d)")
    return round(float(m.group(1)) * UNITS_MS[m.group(2) or "ms"])


def label(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % UNITS_MS[unit] == 0:
            return f"{ms // UNITS_MS[unit]} {unit}"
    return f"{ms} ms"


def table(r: ValueResult) -> str:
    rows = [f"{'':<22}{'log loss':>10}{'ROC AUC':>10}{'accuracy':>10}{'labels':>9}"]
    for arm, what in ((r.online, "online head"), (r.frozen, "frozen head"),
                      (r.deep, "deep model alone")):
        m = arm.metrics
        rows.append(f"{what:<22}{m['log_loss']:>10.4f}{m['roc_auc']:>10.4f}"
                    f"{m['accuracy']:>10.4f}{int(m['labels']):>9,}")
    return "\n".join(rows)


def plot(r: ValueResult, fraction: float, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    styles = ((r.online, "online head", "tab:blue", "-"),
              (r.frozen, f"head frozen after the first {fraction:.0%} of labels",
               "tab:red", "-"),
              (r.deep, "deep model alone (reference)", "0.45", "--"))
    for ax, kind in zip(axes, ("rolling", "cumulative"), strict=True):
        for arm, name, colour, dash in styles:
            ys = arm.curve.rolling if kind == "rolling" else arm.curve.cumulative
            ax.plot(arm.curve.labels, ys, dash, color=colour, lw=1.6, label=name)
        ax.axvline(r.freeze_at, color="0.6", lw=0.8, ls=":")
        ax.set_xlabel("labels scored, in event-time order")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
        ax.set_ylabel("prequential log loss (lower is better)")
        ax.set_title("rolling: the last 1,000 labels" if kind == "rolling"
                     else f"cumulative: every label since the freeze (label {r.freeze_at:,})")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"MovieLens 100K replayed in time order, label delay {label(r.delay_ms)}, "
                 f"head \"{r.spec}\" on engagement features + deep score")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delay", type=duration_ms, default=3_600_000,
                    help="label delay after each rating: 90s, 10m, 1h, 2d (default 1h)")
    ap.add_argument("--spec", default="StandardScaler | LogisticRegression")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path,
                    default=ROOT.parent / "shared" / "data" / "movielens-100k")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "online-vs-frozen.png")
    args = ap.parse_args()

    events = movielens(args.data)
    t0 = time.perf_counter()
    r = online_vs_frozen(events, delay_ms=args.delay, spec=args.spec, fraction=args.fraction,
                         epochs=args.epochs, seed=args.seed)
    took = time.perf_counter() - t0
    print(f"MovieLens 100K: {r.events:,} events, label delay {label(r.delay_ms)}, "
          f"head {r.spec!r}; frozen after {r.freeze_at:,} labels; metrics over the "
          f"{int(r.online.metrics['labels']):,} labels after that")
    print(table(r))
    deep = r.deep_metrics
    print(f"deep model trained on the first {args.fraction:.0%} (its last 20% held out): "
          f"val log loss {deep['val_log_loss']:.4f}, val AUC {deep['val_auc']:.4f}")
    print(f"{took:.1f} s ({r.events / took:,.0f} events/s through both heads)")
    plot(r, args.fraction, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
