"""generate: the seeded synthetic stream (determinism, growth, popularity, drift, injected bad lines)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from devtools.generate import BAD_LINE_KINDS, generate_stream
from tidal.config import GenerateParams
from tidal.storage import StorageLayout


EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
SMALL = dict(users=60, items=40, events_per_file=400, new_users_per_file=4, new_items_per_file=2)


def params(**changes) -> GenerateParams:
    return GenerateParams(**{**SMALL, **changes})


def generate(root: Path, files: int, seed: int = 7, bad_fraction: float = 0.0, **changes):
    return generate_stream(StorageLayout(root), params(**changes), seed=seed, files=files, event_types=EVENT_TYPES,
                           bad_fraction=bad_fraction)


def read_events(path: Path) -> list[dict]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def item_frequencies(path: Path) -> Counter:
    return Counter(e["item_id"] for e in read_events(path))


def total_variation(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def test_same_seed_gives_same_bytes(tmp_path):
    first = generate(tmp_path / "a", files=2)
    second = generate(tmp_path / "b", files=2)
    assert [f.path.name for f in first] == ["events-000000.jsonl", "events-000001.jsonl"]
    for a, b in zip(first, second):
        assert a.path.read_bytes() == b.path.read_bytes()
    assert (tmp_path / "a/landing/items/items.csv").read_bytes() == (tmp_path / "b/landing/items/items.csv").read_bytes()
    other_seed = generate(tmp_path / "c", files=1, seed=8)
    assert other_seed[0].path.read_bytes() != first[0].path.read_bytes()


def test_a_file_does_not_depend_on_how_many_files_the_call_wrote(tmp_path):
    at_once = generate(tmp_path / "a", files=3)
    one_by_one = [generate(tmp_path / "b", files=1)[0] for _ in range(3)]
    assert [f.path.read_bytes() for f in one_by_one] == [f.path.read_bytes() for f in at_once]


def test_continues_numbering_after_existing_files(tmp_path):
    generate(tmp_path, files=2)
    more = generate(tmp_path, files=2)
    assert [f.index for f in more] == [2, 3]
    landing = tmp_path / "landing" / "events"
    assert sorted(p.name for p in landing.iterdir()) == [f"events-{i:06d}.jsonl" for i in range(4)]
    # Event ids and times continue too: file k covers [start + k * interval, start + (k + 1) * interval).
    start = datetime.fromisoformat("2026-11-01T00:00:00+00:00").timestamp()
    for f in more:
        events = read_events(f.path)
        assert len(events) == f.events == 400
        assert events[0]["event_id"] == f"s7-f{f.index:06d}-e00000"
        times = [datetime.fromisoformat(e["event_time"].replace("Z", "+00:00")).timestamp() for e in events]
        assert times == sorted(times)
        assert start + f.index * 300 <= times[0] and times[-1] < start + (f.index + 1) * 300
    state = json.loads((tmp_path / "landing" / "generator.json").read_text())
    assert state["next_file_index"] == 4 and state["seed"] == 7


def test_event_ids_are_unique_and_records_follow_the_contract(tmp_path):
    files = generate(tmp_path, files=3)
    events = [e for f in files for e in read_events(f.path)]
    assert len({e["event_id"] for e in events}) == len(events) == 1200
    types = Counter(e["event_type"] for e in events)
    assert set(types) <= set(EVENT_TYPES)
    assert types["view"] > types["click"] > types["purchase"]  # mostly views, few purchases
    for e in events:
        assert set(e) == {"event_id", "user_id", "item_id", "event_type", "value", "event_time", "context"}
        if e["event_type"] == "rating":
            assert e["value"] in {1.0, 2.0, 3.0, 4.0, 5.0}
        elif e["event_type"] == "view":
            assert 0.05 <= e["value"] <= 1.0
        elif e["event_type"] == "purchase":
            assert e["value"] > 0
        else:
            assert e["value"] is None


def test_new_users_and_items_appear_in_later_files(tmp_path):
    files = generate(tmp_path, files=4)
    first = read_events(files[0].path)
    assert max(int(e["user_id"][1:]) for e in first) < 60
    assert max(int(e["item_id"][1:]) for e in first) < 40
    seen_users = {e["user_id"] for e in first}
    seen_items = {e["item_id"] for e in first}
    for f in files[1:]:
        events = read_events(f.path)
        users = {int(e["user_id"][1:]) for e in events}
        items = {int(e["item_id"][1:]) for e in events}
        # never beyond the population that exists at file k ...
        assert max(users) < 60 + 4 * f.index and max(items) < 40 + 2 * f.index
        seen_users |= {e["user_id"] for e in events}
        seen_items |= {e["item_id"] for e in events}
    # ... and the newcomers do show up
    assert any(int(u[1:]) >= 60 for u in seen_users)
    assert any(int(i[1:]) >= 40 for i in seen_items)
    catalogue = (tmp_path / "landing" / "items" / "items.csv").read_text().splitlines()
    assert catalogue[0] == "item_id,categories,title"
    assert len(catalogue) - 1 == 40 + 2 * 3  # every item that exists at the last file


def test_popularity_is_heavy_tailed(tmp_path):
    (f,) = generate(tmp_path, files=1, items=200, users=300, events_per_file=3000)
    counts = np.array(sorted(item_frequencies(f.path).values(), reverse=True))
    top_share = counts[:20].sum() / counts.sum()  # the top 10% of 200 items
    assert top_share > 0.4, top_share
    # and far from uniform: the most popular item is seen many times more often than the median one
    assert counts[0] > 10 * np.median(counts)


def test_drift_changes_the_item_distribution(tmp_path):
    files = generate(tmp_path, files=4, drift_at_file=2)
    freq = [item_frequencies(f.path) for f in files]
    before = total_variation(freq[0], freq[1])
    across = total_variation(freq[1], freq[2])
    after = total_variation(freq[2], freq[3])
    assert across > 3 * before and across > 3 * after, (before, across, after)
    # Without the drift point, files 1 and 2 are as alike as files 0 and 1.
    plain = [item_frequencies(f.path) for f in generate(tmp_path / "plain", files=3)]
    assert total_variation(plain[1], plain[2]) < 2 * before


def test_bad_fraction_injects_the_documented_kinds(tmp_path):
    (f,) = generate(tmp_path, files=1, bad_fraction=0.3)
    (clean,) = generate(tmp_path / "clean", files=1)
    bad_kinds: dict[int, str] = {}
    for n, text in enumerate(f.path.read_text().splitlines()):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            bad_kinds[n] = "broken_json"
            continue
        if "user_id" not in record:
            bad_kinds[n] = "missing_user_id"
        elif isinstance(record["value"], str):
            bad_kinds[n] = "wrong_type"
        elif record["event_type"] not in EVENT_TYPES:
            bad_kinds[n] = "unknown_event_type"
        elif record["event_time"].startswith("2999"):
            bad_kinds[n] = "future_timestamp"
        else:
            # a good line is byte-identical to the same line of the clean stream
            assert text == clean.path.read_text().splitlines()[n]
    assert len(bad_kinds) == f.bad_lines
    assert 0.2 * 400 < f.bad_lines < 0.4 * 400
    assert set(bad_kinds.values()) == set(BAD_LINE_KINDS)
    assert all(kind == BAD_LINE_KINDS[n % len(BAD_LINE_KINDS)] for n, kind in bad_kinds.items())
    assert clean.bad_lines == 0


@pytest.mark.parametrize("files, bad_fraction", [(0, 0.0), (-1, 0.0), (1, 1.0), (1, -0.1)])
def test_invalid_arguments_are_refused(tmp_path, files, bad_fraction):
    with pytest.raises(ValueError, match="files|bad_fraction"):
        generate(tmp_path, files=files, bad_fraction=bad_fraction)
    assert not (tmp_path / "landing" / "events").exists() or not any((tmp_path / "landing" / "events").iterdir())


@pytest.mark.parametrize("field, value", [("users", 0), ("events_per_file", 0), ("popularity_exponent", 0.0),
                                          ("drift_at_file", -1)])
def test_invalid_generate_params_are_refused(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        params(**{field: value})


def test_cli_writes_into_tidal_home(tidal_env):
    from devtools.generate import main

    settings = tidal_env()
    assert main(["--files", "2", "--events-per-file", "25", "--seed", "3"]) == 0
    landing = settings.home / "landing" / "events"
    names = sorted(p.name for p in landing.glob("*.jsonl"))
    assert names == ["events-000000.jsonl", "events-000001.jsonl"]
    events = read_events(landing / names[1])
    assert len(events) == 25 and events[0]["event_id"] == "s3-f000001-e00000"
