"""Serving benchmark: `tidal serve` over loopback HTTP against the same scoring called in-process, side by side.

A model trained on ml-latest-small (or the synthetic stream with --synthetic) is promoted into a private home; a
private Valkey holds every user's recent items (their last 50 events) and a popular-now ranking; the server is a
real `python -m serving.server` process. Measured in one run:

1. in-process: `serving.recommend.answer` for the same users (the scoring, exclusions and online read, no HTTP);
2. open loop at 100 requests/s: p50/p99 (latency from each request's scheduled time);
3. closed loop at several concurrencies: requests/s at saturation, p50/p99;
4. swaps under load: three promotions and one rollback during a closed-loop run: failed requests, versions seen,
   and the server's RSS sampled before, during and after.

Writes results.json and RESULTS.md next to this file (or --out). The load generator (loadgen.py) runs on the same
2 cores as the server, so every figure includes its cost.

    python benchmarks/serving/bench.py --movielens ../shared/data/ml-latest-small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.loadgen import run_load  # noqa: E402


def percentile_ms(latencies_s: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(latencies_s) * 1000, q)), 2) if latencies_s else float("nan")


def load_interactions(movielens: Path | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if movielens is None:
        from models.synthetic import synthetic_stream

        return synthetic_stream(n_users=600, n_items=2000, n_events=60000, seed=0)
    from models.data import load_interactions as read_interactions
    from models.data import load_items, sort_by_time

    return sort_by_time(read_interactions(movielens / "ratings.csv")), load_items(movielens / "movies.csv")


def train_versions(interactions: pd.DataFrame, items, folder: Path) -> list[Path]:
    """A full retrain on the first 80% and three fine-tunes on the next slices (the models that will swap)."""
    from models.recommender import TrainConfig, finetune, train

    cfg = TrainConfig()
    cuts = [int(len(interactions) * share) for share in (0.8, 0.85, 0.9, 0.95)]
    result = train(interactions.iloc[:cuts[0]], cfg=cfg, items=items)
    anchor, paths = result.checkpoint, []
    for j, cut in enumerate(cuts):
        if j:
            result = finetune(result.checkpoint, interactions.iloc[cuts[j - 1]:cut], cfg=cfg, anchor=anchor,
                              history=interactions.iloc[:cuts[j - 1]], items=items)
        paths.append(folder / f"model-{j}.pt")
        result.checkpoint.save(paths[-1])
        print(f"[bench] trained version {j} ({cut} events)", flush=True)
    return paths


def fill_online_store(url: str, interactions: pd.DataFrame) -> None:
    from tidal.config import online_store_settings
    from tidal.online_store import GroupRow, connect, write_groups

    store, now = online_store_settings(url, "serve"), time.time()
    recent = interactions.sort_values("timestamp").groupby("user_id").tail(50)
    rows = [GroupRow("user", str(user), "recent", {"items": group["item_id"].astype(str).tolist()[::-1],
                                                   "last_event_s": now}, now)
            for user, group in recent.groupby("user_id")]
    popular = interactions.tail(len(interactions) // 10)["item_id"].astype(str).value_counts().index[:200].tolist()
    rows.append(GroupRow("global", "now", "popular", {"items": popular}, now))
    write_groups(connect(store), store, rows)


def in_process(home: Path, online_url: str, users: list[str], repeats: int) -> dict:
    """The same answer the server gives, called directly: the cost of scoring without HTTP."""
    from serving.model_slot import load_version
    from serving.online import OnlineFeatures
    from serving.recommend import answer
    from tidal.config import online_store_settings, load_settings
    from tidal.registry import Registry

    settings = load_settings()
    model = load_version(Registry(home / "registry").production(), settings.params.serving)
    online = OnlineFeatures(online_store_settings(online_url, "serve"), 172800, settings.params.serving)
    latencies = []
    started = time.perf_counter()
    for j in range(repeats):
        t = time.perf_counter()
        answer(model, online, users[j % len(users)], 10)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return {"requests": repeats, "requests_per_s": round(repeats / wall, 1), "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99), "warm_load_s": round(model.load_s, 2)}


def rss_sampler(pid: int, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    import psutil

    process = psutil.Process(pid)
    while not stop.is_set():
        samples.append((time.time(), process.memory_info().rss / 2**20))
        time.sleep(0.05)


def swaps_under_load(server, home: Path, paths: list[Path], newest: list[float], users: list[str]) -> dict:
    from tests.serving.conftest import promote
    from tidal.registry import Registry

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=rss_sampler, args=(server.proc.pid, samples, stop), daemon=True)
    sampler.start()
    time.sleep(1.0)
    before = [mb for _, mb in samples]
    marks, result_box = [], {}

    def load():
        result_box["r"] = run_load("127.0.0.1", server.port, users, requests=200000, deadline_s=25, concurrency=8,
                                   track_version=True)

    loader = threading.Thread(target=load)
    loader.start()
    for j in (1, 2, 3):
        time.sleep(3)
        version = promote(home, paths[j], f"bench-{j}", newest[j])
        marks.append((time.time(), version))
        server.wait_ready(version, timeout_s=60)
    time.sleep(2)
    Registry(home / "registry").rollback("v000002", reason="benchmark: rollback under load")
    marks.append((time.time(), "rollback to v000002"))
    server.wait_ready("v000002", timeout_s=60)
    loader.join()
    swap_window = [mb for t, mb in samples if marks[0][0] - 0.5 <= t <= time.time()]
    time.sleep(2)
    after = [mb for t, mb in samples if t > time.time() - 1.5]
    stop.set()
    result = result_box["r"]
    return {"requests": result.ok + result.failed, "failed": result.failed, "errors": result.errors[:5],
            "statuses": result.statuses, "versions_seen": result.versions,
            "requests_per_s": round((result.ok + result.failed) / result.wall_s, 1),
            "p50_ms": percentile_ms(result.latencies_s, 50), "p99_ms": percentile_ms(result.latencies_s, 99),
            "rss_mb": {"before": round(statistics.median(before), 1), "during_max": round(max(swap_window), 1),
                       "after": round(statistics.median(after), 1)},
            "swaps": [v for _, v in marks]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=None, help="ml-latest-small folder (default: synthetic)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    from tests.conftest import ValkeyServer
    from tests.serving.conftest import ServingProcess, promote

    work = Path(tempfile.mkdtemp(prefix="tidal-serving-bench-"))
    interactions, items = load_interactions(args.movielens)
    paths = train_versions(interactions, items, work)
    cuts = [int(len(interactions) * s) for s in (0.8, 0.85, 0.9, 0.95)]
    newest = [float(interactions["timestamp"].iloc[c - 1]) for c in cuts]
    home = work / "home"
    (home / "registry").mkdir(parents=True)
    valkey = ValkeyServer(work / "valkey")
    valkey.start()
    server = None
    try:
        fill_online_store(valkey.url, interactions)
        promote(home, paths[0], "bench-0", newest[0], kind="full")
        known = sorted(interactions["user_id"].astype(str).unique())
        users = [f"/v1/recommendations/{u}?k=10" for u in known] + [f"/v1/recommendations/new-{j}?k=10" for j in range(20)]
        server = ServingProcess(work, home, valkey.url).start()
        server.wait_ready("v000001", timeout_s=120)
        os.environ.update({"TIDAL_HOME": str(home), "TIDAL_PARAMS": str(server.env["TIDAL_PARAMS"])})
        results = {"dataset": "ml-latest-small" if args.movielens else "synthetic (600 users, 2000 items)",
                   "events": len(interactions), "users": len(known),
                   "items": int(interactions["item_id"].nunique()), "cores": os.cpu_count(),
                   "load_average_before": os.getloadavg(), "load_tool": "benchmarks/serving/loadgen.py (asyncio)"}
        results["in_process"] = in_process(home, valkey.url, known, 3000)
        print(f"[bench] in-process {results['in_process']}", flush=True)
        run_load("127.0.0.1", server.port, users, requests=500, deadline_s=10, concurrency=4)  # warm-up
        fixed = run_load("127.0.0.1", server.port, users, requests=2000, deadline_s=30, rate=100, concurrency=8)
        results["rate_100"] = {"requests": fixed.ok + fixed.failed, "failed": fixed.failed,
                               "p50_ms": percentile_ms(fixed.latencies_s, 50),
                               "p99_ms": percentile_ms(fixed.latencies_s, 99)}
        print(f"[bench] 100 req/s {results['rate_100']}", flush=True)
        results["closed_loop"] = []
        for concurrency in (1, 4, 16, 64):
            r = run_load("127.0.0.1", server.port, users, requests=100000, deadline_s=8, concurrency=concurrency)
            row = {"concurrency": concurrency, "requests": r.ok + r.failed, "failed": r.failed,
                   "requests_per_s": round((r.ok + r.failed) / r.wall_s, 1),
                   "p50_ms": percentile_ms(r.latencies_s, 50), "p99_ms": percentile_ms(r.latencies_s, 99)}
            results["closed_loop"].append(row)
            print(f"[bench] closed loop {row}", flush=True)
        results["swaps_under_load"] = swaps_under_load(server, home, paths, newest, users)
        print(f"[bench] swaps {results['swaps_under_load']}", flush=True)
        results["load_average_after"] = os.getloadavg()
    finally:
        if server is not None:
            server.stop()
        valkey.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict) -> str:
    best = max(r["closed_loop"], key=lambda row: row["requests_per_s"])
    ip = r["in_process"]
    lines = [f"# Serving benchmark ({r['dataset']}: {r['users']} users, {r['items']} items; {r['cores']} cores, load "
             f"average {r['load_average_before'][0]:.2f} before)", "",
             f"Load tool: {r['load_tool']}, on the same machine as the server.", "",
             "| measurement | requests | failed | requests/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|",
             f"| in-process `answer()` (no HTTP) | {ip['requests']} | 0 | {ip['requests_per_s']} | {ip['p50_ms']} | "
             f"{ip['p99_ms']} |",
             f"| HTTP, open loop at 100 requests/s | {r['rate_100']['requests']} | {r['rate_100']['failed']} | 100 | "
             f"{r['rate_100']['p50_ms']} | {r['rate_100']['p99_ms']} |"]
    lines += [f"| HTTP, closed loop, {row['concurrency']} connection(s) | {row['requests']} | {row['failed']} | "
              f"{row['requests_per_s']} | {row['p50_ms']} | {row['p99_ms']} |" for row in r["closed_loop"]]
    s = r["swaps_under_load"]
    lines += [f"| HTTP, 8 connections, while {', '.join(s['swaps'])} | {s['requests']} | {s['failed']} | "
              f"{s['requests_per_s']} | {s['p50_ms']} | {s['p99_ms']} |", "",
              f"HTTP overhead at saturation: {ip['requests_per_s'] / best['requests_per_s']:.2f}x the in-process "
              f"rate ({best['requests_per_s']} vs {ip['requests_per_s']} requests/s); p50 at one connection "
              f"{r['closed_loop'][0]['p50_ms']} ms vs {ip['p50_ms']} ms in process.", "",
              f"RSS of the server: {s['rss_mb']['before']} MB before the swaps, at most {s['rss_mb']['during_max']} MB "
              f"during them, {s['rss_mb']['after']} MB after (a model warm-load took {ip['warm_load_s']} s).",
              f"Versions that answered during the swaps: {s['versions_seen']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
