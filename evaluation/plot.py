"""Training curves from a run's `metrics.jsonl` (read and summarized by `scoring.run_metrics`).

    python -m evaluation.plot runs/my_run                 # writes runs/my_run/curves.png
    python -m evaluation.plot runs/my_run/metrics.jsonl --out curves.png --keys ppo/kl_ref,ppo/entropy
    python -m evaluation.plot runs/my_run --smooth 10      # a moving average over 10 steps on top

One panel per metric (the file's format: `scoring.run_metrics`), the reasoning stages shaded; a metric
outside the role namespaces (`ppo/...`) gets one curve per role. matplotlib is an optional dependency,
imported only when a figure is drawn.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from scoring.run_metrics import (  # noqa: F401 (load_metrics, summarize_metrics: also used from here)
    BOOKKEEPING,
    METRICS_FILE,
    MetricsFileError,
    load_metrics,
    metrics_path,
    number,
    summarize_metrics,
)

logger = logging.getLogger(__name__)

DEFAULT_KEYS = (
    "generator/reward_mean",
    "discriminator/reward_mean",
    "discriminator/valid_test_rate",
    "discriminator/mutation_score",
    "generator/pass_rate",
    "validation/score",
    "ppo/kl_ref",
)
MAX_FALLBACK_PANELS = 8  # panels drawn when none of DEFAULT_KEYS is present


def plottable_keys(rows: Sequence[dict], keys: Sequence[str] | None = None) -> list[str]:
    """The keys that have at least one numeric value. Default: those of `DEFAULT_KEYS`, or when none is
    present, the first `MAX_FALLBACK_PANELS` numeric metrics in name order. Asked-for keys that are absent
    are skipped with a warning."""
    present = {k for row in rows for k, v in row.items() if k not in BOOKKEEPING and number(v) is not None}
    if keys:
        missing = [k for k in keys if k not in present]
        if missing:
            logger.warning("no numeric values for %s; skipped", ", ".join(missing))
        return [k for k in keys if k in present]
    return [k for k in DEFAULT_KEYS if k in present] or sorted(present)[:MAX_FALLBACK_PANELS]


def _x_values(rows: Sequence[dict]) -> tuple[list[float], str]:
    """`step` when every row has an int step and steps never go back, else the row number."""
    steps = [row.get("step") for row in rows]
    if all(isinstance(s, int) and not isinstance(s, bool) for s in steps) and steps == sorted(steps):
        return [float(s) for s in steps], "step"
    return [float(i) for i in range(len(rows))], "row of metrics.jsonl"


def _stage_spans(rows: Sequence[dict], xs: list[float]) -> list[tuple[str, float, float]]:
    """(stage, x start, x end) of each run of consecutive rows with the same stage."""
    spans: list[tuple[str, float, float]] = []
    for i, row in enumerate(rows):
        stage = row.get("stage")
        if not isinstance(stage, str):
            continue
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], xs[i])
        else:
            spans.append((stage, xs[i], xs[i]))
    # each span reaches the start of the next so the shading has no gaps
    return [(s, a, spans[j + 1][1] if j + 1 < len(spans) else b) for j, (s, a, b) in enumerate(spans)]


def _roles(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(row["role"] for row in rows if isinstance(row.get("role"), str)))


UNSPLIT = ("validation",)  # measured on a fixed slice, not per step: never split by role nor smoothed


def curves(rows: Sequence[dict], key: str, xs: Sequence[float] | None = None) -> dict[str, list[tuple[float, float]]]:
    """The (x, value) points of `key`, by curve label. A metric in a role's namespace (`generator/...`) is
    measured at every step whichever model is updated: one curve named `key`, and so is `validation/...`
    (both models on the validation slice). Any other (`ppo/...`) comes from the update of the row's role: one
    curve per role (one named `key` when rows have no role)."""
    xs = list(xs) if xs is not None else _x_values(rows)[0]
    roles = _roles(rows)
    split = bool(roles) and key.split("/")[0] not in (*roles, *UNSPLIT)
    out: dict[str, list[tuple[float, float]]] = {}
    for x, row in zip(xs, rows):
        value = number(row.get(key))
        if value is not None:
            out.setdefault(row.get("role", key) if split else key, []).append((x, value))
    return out


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start); `window` <= 1 returns them as is."""
    if window <= 1:
        return list(values)
    windows = (values[max(0, i - window + 1):i + 1] for i in range(len(values)))
    return [sum(w) / len(w) for w in windows]


def plot_metrics(
    rows: Sequence[dict], out: str | Path, keys: Sequence[str] | None = None, title: str | None = None,
    smooth: int = 0,
) -> Path:
    """Draw one panel per metric of `plottable_keys(rows, keys)` (stages shaded and named; one curve per
    role for metrics outside the role namespaces) and save the figure as a PNG at `out`. `smooth` > 1
    draws each curve's trailing moving average over that many points, the raw points faded behind it
    (a step trains on one problem, so raw values jump with the problem); `validation/...` curves (a fixed
    slice, a point per checkpoint) are drawn unsmoothed. Raises `MetricsFileError` when
    nothing can be plotted and `ImportError` when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib, an optional dependency: pip install matplotlib") from None

    asked, keys = keys, plottable_keys(rows, keys)
    if not keys:
        raise MetricsFileError("no numeric metrics to plot" + (f" among {', '.join(asked)}" if asked else ""))
    xs, x_label = _x_values(rows)
    spans = _stage_spans(rows, xs)
    roles = _roles(rows)

    fig = Figure(figsize=(9, 1.0 + 2.2 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        for j, (stage, start, end) in enumerate(spans):
            ax.axvspan(start, end, color="0.92" if j % 2 == 0 else "0.82", alpha=0.6, linewidth=0)
        for label, points in curves(rows, key, xs).items():
            color = f"C{roles.index(label)}" if label in roles else "C0"  # one colour per role across panels
            x, y = zip(*points)
            if smooth > 1 and key.split("/")[0] not in UNSPLIT:
                ax.plot(x, y, marker=".", markersize=3, linewidth=0.6, color=color, alpha=0.3)
                ax.plot(x, moving_average(y, smooth), linewidth=1.8, color=color, label=f"{label} (mean of {smooth})")
            else:
                ax.plot(x, y, marker=".", markersize=4, linewidth=1.2, color=color, label=label)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7, loc="best")
    for stage, start, end in spans:  # stage names above the first panel
        axes[0].text((start + end) / 2, 1.02, stage, transform=axes[0].get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=7)
    axes[-1].set_xlabel(x_label)
    if title:
        fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
    logger.info("wrote %s (%d rows; %s)", out, len(rows), ", ".join(keys))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.plot",
        description="Draw the training curves of a run from its metrics.jsonl to a PNG.",
    )
    parser.add_argument("path", help=f"a run folder (its {METRICS_FILE} is read) or a {METRICS_FILE} file")
    parser.add_argument("--out", help=f"PNG to write (default: curves.png next to {METRICS_FILE})")
    parser.add_argument(
        "--keys",
        help="comma-separated metrics to plot, one panel each; absent ones are skipped "
        f"(default: those present of {', '.join(DEFAULT_KEYS)})",
    )
    parser.add_argument("--title", help="figure title (default: the run folder's name)")
    parser.add_argument("--smooth", type=int, default=0, metavar="W",
                        help="also draw a moving average over W points (raw points faded); default: off")
    parser.add_argument("--summary", action="store_true",
                        help="also print per-stage and whole-run means as JSON (printed first; without matplotlib "
                             "only the summary is printed)")
    args = parser.parse_args(argv)

    source = metrics_path(args.path)
    out = Path(args.out) if args.out else source.parent / "curves.png"
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    try:
        rows = load_metrics(source)
        if args.summary:
            print(json.dumps(summarize_metrics(rows), indent=2))
        plot_metrics(rows, out, keys, title=args.title or source.resolve().parent.name, smooth=args.smooth)
    except ImportError as e:
        print(f"{'note' if args.summary else 'error'}: no PNG written: {e}", file=sys.stderr)
        return 0 if args.summary else 1
    except (MetricsFileError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    sys.exit(main())
