"""`tidal evaluate prequential`: replay an interaction log test-then-train and compare refresh strategies.

    tidal evaluate prequential --interactions PATH [--items PATH] --out DIR
    python -m jobs.prequential --interactions PATH [--items PATH] --out DIR

Writes DIR/prequential.json (every number), DIR/prequential.md (the table) and DIR/prequential.png (Recall@10
per window for every strategy). Hyperparameters are the fixed defaults of `models.recommender.TrainConfig`
and `models.prequential.Protocol`, recorded in the JSON; there is deliberately no flag to tune them per dataset.
The work is in `models.prequential.run_prequential`; this module only parses arguments and writes files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from models.data import load_interactions, load_items
from models.prequential import STRATEGIES, Protocol, run_prequential
from models.recommender import TrainConfig


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def render_markdown(report: dict, command: str) -> str:
    s = report["strategies"]
    seeds = list(next(iter(s.values()))["per_seed"])
    lines = [
        f"# Prequential replay: {report['dataset']}",
        "",
        f"{report['events']} events; warm-up {report['params']['protocol_warmup_fraction']:.0%}, "
        f"{report['params']['protocol_windows']} windows; seeds {', '.join(seeds)} (means below; "
        "train CPU s = process CPU seconds of all training the strategy relies on, warm-up included).",
        "",
        f"Command: `{command}`",
        "",
        "| strategy | Recall@10 | ± sd (seeds) | NDCG@10 | train CPU s | train wall s | Recall vs popularity |",
        "|---|---|---|---|---|---|---|",
    ]
    pop = s["popularity_recent"]["recall_at_10"]
    for name in STRATEGIES:
        row = s[name]
        lines.append(f"| {name} | {row['recall_at_10']:.4f} | {row['recall_at_10_std']:.4f} | "
                     f"{row['ndcg_at_10']:.4f} | {row['train_cpu_s']:.1f} | {row['train_wall_s']:.1f} | "
                     f"{row['recall_at_10'] / pop:.2f}x |")
    lines += ["", "## Per seed (Recall@10 / NDCG@10 / train CPU s)", "",
              "| strategy | " + " | ".join(f"seed {x}" for x in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for name in STRATEGIES:
        cells = [f"{v['recall_at_10']:.4f} / {v['ndcg_at_10']:.4f} / {v['train_cpu_s']:.1f}"
                 for v in (s[name]["per_seed"][x] for x in seeds)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets (issues 3 and 11; on seed means)", "",
              "| check | ratio | threshold | met |", "|---|---|---|---|"]
    for name, t in report["targets"].items():
        op = "<=" if name.endswith("_cpu") else ">="
        lines.append(f"| {name} | {t['ratio']:.3f} | {op} {t['threshold']} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "## Hyperparameters (fixed before the run)", "", "```json",
              json.dumps(report["params"], indent=1), "```", ""]
    return "\n".join(lines)


def render_plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for name in STRATEGIES:
        rows = report["strategies"][name]["per_window"]
        ax.plot(range(1, len(rows) + 1), [r["recall_at_10"] for r in rows], marker="o", ms=3, label=name,
                linestyle="--" if name == "popularity_recent" else "-")
    ax.set_xlabel("window")
    ax.set_ylabel("Recall@10 (mean over seeds)")
    ax.set_title(f"Prequential Recall@10 per window: {report['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidal evaluate prequential",
        description="Prequential (test-then-train) replay of every refresh strategy on an interaction log.")
    parser.add_argument("--interactions", required=True, type=Path,
                        help="CSV or Parquet: user_id, item_id, timestamp (unix s or ISO-8601) [, value, event_type];"
                             " MovieLens ratings.csv also accepted")
    parser.add_argument("--items", type=Path, default=None,
                        help="optional item metadata: item_id, categories ('a|b'), [title]; or MovieLens movies.csv")
    parser.add_argument("--out", required=True, type=Path, help="directory for prequential.{json,md,png}")
    parser.add_argument("--seeds", type=_seed_list, default=Protocol().seeds,
                        help="comma-separated training seeds, each a full replay (default: 0,1,2); more seeds "
                             "narrow the spread of the means, at one replay's CPU each")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes running the replay's steps in parallel (default: one per core)")
    return parser


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers joined by commas, e.g. 0,1,2; got {text!r}")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"--seeds must be distinct non-negative integers; got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interactions = load_interactions(args.interactions)
    items = load_items(args.items) if args.items else None
    dataset = "/".join(args.interactions.resolve().parts[-2:])
    if args.workers is not None and args.workers < 1:
        raise SystemExit("tidal evaluate prequential: --workers must be at least 1")
    workers = args.workers or max(1, os.cpu_count() or 1)
    report = run_prequential(interactions, items, cfg=TrainConfig(), protocol=Protocol(seeds=args.seeds, workers=workers),
                             dataset=dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "tidal evaluate prequential " + " ".join(sys.argv[1:] if argv is None else argv)
    report["command"] = command
    _write_atomic(args.out / "prequential.json", json.dumps(report, indent=1).encode())
    _write_atomic(args.out / "prequential.md", render_markdown(report, command).encode())
    render_plot(report, args.out / "prequential.png")
    print(f"wrote {args.out}/prequential.{{json,md,png}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
