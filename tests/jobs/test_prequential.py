"""`tidal evaluate prequential` end to end on a tiny synthetic stream: files, schema, sane numbers."""
import functools
import json

import pandas as pd
import pytest

import jobs.prequential
from jobs.prequential import build_parser, main
from models.prequential import STRATEGIES, Protocol
from models.recommender import TrainConfig
from models.synthetic import synthetic_stream

# The wiring is under test, not the hyperparameters: a small model, two seeds on two processes.
TINY = TrainConfig(dim=8, epochs=3, lr=0.05, batch_size=256, negatives=32, finetune_epochs=2)


def test_flags_are_the_issue_s_plus_optional_seed_controls():
    options = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert options == {"interactions", "items", "out", "seeds", "workers"}
    defaults = build_parser().parse_args(["--interactions", "x.csv", "--out", "o"])
    assert (defaults.seeds, defaults.workers, defaults.items) == ((0, 1, 2), None, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--items", "x.csv"])  # --interactions and --out are required


def test_end_to_end_on_generic_schema_with_iso_timestamps(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs.prequential, "TrainConfig", lambda: TINY)
    monkeypatch.setattr(jobs.prequential, "Protocol", functools.partial(Protocol, seeds=(0, 1)))
    interactions, items = synthetic_stream(n_users=30, n_items=60, n_events=1200, seed=2)
    # Generic schema with ISO-8601 timestamps and the optional columns.
    interactions = interactions.assign(
        timestamp=pd.to_datetime(interactions["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        value=1.0, event_type="click")
    interactions.to_csv(tmp_path / "events.csv", index=False)
    items.to_parquet(tmp_path / "items.parquet")
    out = tmp_path / "report"
    assert main(["--interactions", str(tmp_path / "events.csv"), "--items", str(tmp_path / "items.parquet"),
                 "--out", str(out)]) == 0
    report = json.loads((out / "prequential.json").read_text())
    assert set(report["strategies"]) == set(STRATEGIES)
    assert report["params"]["dim"] == 8 and "seed" not in report["params"]
    assert report["params"]["protocol_seeds"] == [0, 1]
    assert set(report["strategies"]["incremental"]["per_seed"]) == {"0", "1"}
    for name, row in report["strategies"].items():
        assert len(row["per_window"]) == 20
        assert 0 < row["recall_at_10"] <= 1 and 0 < row["ndcg_at_10"] <= 1, name
        assert row["train_cpu_s"] >= 0 and row["train_wall_s"] >= 0
        assert {"recall_at_10", "ndcg_at_10", "users"} <= set(row["per_window"][0])
    cpu = {name: row["train_cpu_s"] for name, row in report["strategies"].items()}
    assert cpu["retrain_every_window"] > cpu["incremental"]
    md = (out / "prequential.md").read_text()
    assert all(f"| {name} |" in md for name in STRATEGIES)
    assert (out / "prequential.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seeds_option_parses_lists_and_refuses_bad_ones_before_any_work():
    from jobs.prequential import build_parser

    args = build_parser().parse_args(["--interactions", "x.csv", "--out", "o", "--seeds", "3,1,4"])
    assert args.seeds == (3, 1, 4)
    for bad in ("1,1", "a,b", "-1"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--interactions", "x.csv", "--out", "o", "--seeds", bad])
