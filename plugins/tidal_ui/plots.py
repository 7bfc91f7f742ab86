"""The page's plots, drawn on the server as PNG (matplotlib, Agg; nothing fetched from a CDN).

quality    Recall@10 and NDCG@10 of every version on its own held-out slice, over versions
freshness  per version: promoted_at minus the newest event it trained on (how old its data was when it became
           servable), over versions
rows       per run: rows landed / accepted / quarantined (the features step's summary)
drift      per run: each feature's effect size (KS D, or PSI for categorical features) with the thresholds
"""

from __future__ import annotations

import io
from typing import Any, Callable

from tidal.registry import Registry, parse_utc
from tidal.run_reports import runs, step_summaries
from tidal.storage import StorageLayout


def _figure(draw: Callable[[Any], None], *, rows: int = 1) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2 * rows), dpi=90, layout="constrained")
    draw(figure.subplots(rows, 1, squeeze=False)[:, 0])
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _version_axis(ax, names: list[str]) -> None:
    step = max(1, len(names) // 20)  # 100 versions: every 5th label
    ax.set_xticks(range(0, len(names), step), names[::step], rotation=60, fontsize=7)


def quality_plot(registry: Registry) -> bytes:
    versions = [(mv.version, mv.metadata.get("metrics") or {}) for mv in registry.versions()]

    def draw(axes):
        ax = axes[0]
        if not versions:
            return _empty(ax, "versions")
        for key, label in (("recall_at_10", "Recall@10"), ("ndcg_at_10", "NDCG@10")):
            ax.plot(range(len(versions)), [m.get(key, float("nan")) for _v, m in versions], marker="o", label=label)
        _version_axis(ax, [v for v, _m in versions])
        ax.set_ylabel("own held-out slice")
        ax.set_title("quality over versions")
        ax.legend()

    return _figure(draw)


def freshness_plot(registry: Registry) -> bytes:
    points = []
    for mv in registry.versions():
        newest, promoted = mv.metadata.get("newest_event_time"), mv.metadata.get("promoted_at")
        if newest and promoted:
            points.append((mv.version, (parse_utc(promoted) - parse_utc(newest)).total_seconds() / 60))

    def draw(axes):
        ax = axes[0]
        if not points:
            return _empty(ax, "version with newest_event_time")
        ax.plot(range(len(points)), [lag for _v, lag in points], marker="o")
        _version_axis(ax, [v for v, _lag in points])
        ax.set_ylabel("minutes")
        ax.set_title("freshness: promoted_at minus the newest event trained on")

    return _figure(draw)


def rows_plot(layout: StorageLayout) -> bytes:
    cycles = []
    for run in runs(layout):
        features = step_summaries(layout, run["folder"]).get("features")
        if features and "landed" in features:
            cycles.append((run["folder"], features))

    def draw(axes):
        ax = axes[0]
        if not cycles:
            return _empty(ax, "features summaries")
        for key in ("landed", "accepted", "quarantined"):
            ax.plot(range(len(cycles)), [f.get(key, 0) for _r, f in cycles], marker="o", label=key)
        ax.set_xticks(range(len(cycles)), [str(i + 1) for i in range(len(cycles))])
        ax.set_xlabel("cycle (runs with a features step, oldest first)")
        ax.set_ylabel("rows")
        ax.set_title("rows per cycle")
        ax.legend()

    return _figure(draw)


def drift_plot(layout: StorageLayout) -> bytes:
    tested = [s["drift"] for run in runs(layout)
              if (s := step_summaries(layout, run["folder"])).get("drift", {}).get("status") == "tested"]

    def panel(ax, test: str, low: str, high: str, label: str):
        features = sorted({r["feature"] for d in tested for r in d["features"] if r["test"] == test})
        for feature in features:
            ax.plot(range(len(tested)), [next((r["effect"] for r in d["features"] if r["feature"] == feature
                                               and r["effect"] is not None), float("nan")) for d in tested],
                    marker="o", label=feature)
        ax.axhline(tested[-1][low], color="orange", linestyle="--", label=f"{low} {tested[-1][low]}")
        ax.axhline(tested[-1][high], color="red", linestyle="--", label=f"{high} {tested[-1][high]}")
        ax.set_ylabel(label)
        ax.set_xticks(range(len(tested)), [str(i + 1) for i in range(len(tested))])
        ax.legend(fontsize=6, ncol=3)

    def draw(axes):
        if not tested:
            _empty(axes[0], "drift tests")
            return _empty(axes[1], "drift tests")
        panel(axes[0], "ks", "d_min", "d_severe", "KS D (numeric)")
        axes[0].set_title("drift per feature over cycles (runs with a drift test)")
        panel(axes[1], "chi2+psi", "psi_min", "psi_severe", "PSI (categorical)")

    return _figure(draw, rows=2)


PLOTS = {"quality": ("registry", quality_plot), "freshness": ("registry", freshness_plot),
         "rows": ("layout", rows_plot), "drift": ("layout", drift_plot)}


def plot_png(name: str, layout: StorageLayout) -> bytes:
    """One plot by name (KeyError for a name not in PLOTS)."""
    source, draw = PLOTS[name]
    return draw(Registry(layout.registry) if source == "registry" else layout)
