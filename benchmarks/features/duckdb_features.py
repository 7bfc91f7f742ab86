"""duckdb_features: one features micro-batch, from empty state, in a single DuckDB process.

The single-process baseline of the features throughput benchmark (`throughput.py`): it does the work one
micro-batch of `jobs.features.stream.process_micro_batch` does when the feature state is empty, on the same landing
files, and writes the same outputs under its own root (StorageLayout paths):

- landing JSON Lines -> one row per non-blank line (or one row per empty file), numbered as Spark numbers them;
- the event contract with the same quarantine reasons and the same order of checks as `classify_events`;
- dedupe by event_id, first delivered copy wins (file name, then line number);
- the robust-z outlier rule of `jobs.features.state.flag_outliers` (users, then the items they drove);
- training examples with the columns and values of the Spark job: `training_examples`, decayed user / item
  counts and recency, the user's event-type shares, the sliding-window item popularity and the item content
  features when landing/items/items.csv exists;
- bronze (Parquet partitioned by event_date and batch_id), examples, quarantine, the entity state snapshot, the
  dedupe-id snapshot and a batch manifest.

Each step is a pure function that returns SQL text; `run_batch` executes them in order on one connection and is
the only place with I/O. Known differences from the Spark job (none of them hit the generated stream; the
equivalence test `tests/benchmarks/test_duckdb_features.py` checks the rest):

- Median and MAD: both exact, the element at rank ceil(n/2) (`quantile_disc` here, the histogram of events per
  user in `jobs.features.state.robust_z_of_counts`); the mean absolute deviation (used when MAD is 0) is summed in
  a different order, so it can differ in the last bits.
- JSON: DuckDB's parser accepts trailing commas, NaN/Infinity and duplicate keys, which Spark's `parse_json`
  refuses. Lines that could hold the first two are re-checked with a strict parser in Python, and duplicate keys
  at the top level are caught in SQL; duplicate keys inside a nested object (e.g. in `context`) are not, so such a
  line is accepted here and `malformed_json` in Spark. `{...}{...}` (two records on one line) and `{...} junk` are
  `malformed_json` on both sides (Spark's `try_parse_json` alone would read the first value; the job checks for
  trailing content).
- Timestamps: DuckDB's string -> TIMESTAMPTZ cast reads ISO-8601 dates and date-times with or without `Z` or an
  offset (+02, +0200, +02:00) as Spark's cast does, and a bare year or year-month is rewritten to match Spark.
  Spark also accepts a region zone id (`...T10:15:00Europe/Paris`) and a '+' before the year, which are
  `unparseable_event_time` here (a bare time of day is refused on both sides); DuckDB accepts a time without seconds before `Z`
  (`T10:15Z`) and hour 24 (the next day), which Spark refuses.
- Landing Parquet files are not supported (the benchmark lands JSON Lines only): `run_batch` refuses them rather
  than miscount.
- `context` in bronze is the record's object re-serialized by DuckDB (keys in the producer's order); Spark writes
  it through a Variant (keys sorted).

Run: `PYTHONPATH=. .venv/bin/python -m benchmarks.features.duckdb_features --out /tmp/duckdb-out`
(reads TIDAL_HOME/landing like the Spark job; `--now` fixes the clock the future-timestamp rule uses).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from jobs.features.transforms import REQUIRED_STRING_FIELDS, EventRules
from tidal.config import Settings, load_settings
from tidal.storage import StorageLayout, atomic_write_json


# Java's \s, which Spark's blank-line test uses: space, tab, newline, vertical tab, form feed, carriage return.
JAVA_WHITESPACE = " \t\n\x0b\f\r"
# The fields the contract reads; their positions in the JSON path lists below.
CONTRACT_FIELDS = (*REQUIRED_STRING_FIELDS, "value", "event_time", "context")
# DuckDB's json_type names for a JSON number (Spark's variant: TINYINT..BIGINT, DECIMAL, DOUBLE).
JSON_NUMBER_TYPES = ("BIGINT", "UBIGINT", "HUGEINT", "DOUBLE")
# Constructs DuckDB's JSON parser accepts and Spark's refuses; a line matching this is re-checked strictly.
LENIENT_JSON_PATTERN = r",\s*[}\]]|NaN|Infinity"
LN2 = math.log(2.0)


@dataclass(frozen=True)
class BatchParams:
    """Everything one batch reads from params.yaml, as arguments of the pure SQL builders."""

    rules: EventRules
    event_type_weights: dict[str, float]
    half_life_s: float
    outlier_z: float
    outlier_min_events: int
    popularity_windows_s: tuple[int, ...]
    popularity_bucket_s: int
    popularity_keep_s: int  # the bucket state keeps this much before its newest bucket (longest window + lateness)


def batch_params(settings: Settings, now_epoch_s: float) -> BatchParams:
    base, fp = settings.params.base, settings.params.features
    return BatchParams(
        rules=EventRules(event_types=base.event_types, max_id_length=base.max_id_length,
                         max_future_skew_s=base.max_future_skew_s, now_epoch_s=now_epoch_s),
        event_type_weights=dict(fp.event_type_weights), half_life_s=fp.half_life_s, outlier_z=fp.outlier_z,
        outlier_min_events=fp.outlier_min_events, popularity_windows_s=tuple(fp.popularity_windows_s),
        popularity_bucket_s=fp.popularity_bucket_s,
        popularity_keep_s=max(fp.popularity_windows_s) + fp.allowed_lateness_s)


def sql_string(text: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def sql_string_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(sql_string(i) for i in items) + "]"


def blank_sql(text: str) -> str:
    """SQL: `text` holds nothing but Java whitespace (a regex match is several times faster here than trim())."""
    return rf"regexp_full_match({text}, '[ \t\n\x0B\f\r]*')"


def file_uri(path: Path) -> str:
    """The name the Spark job gives a landing file's records, so source_file and the delivery order match: its file
    source says file:/abs/path (Hadoop's Path, not percent-encoded), and so does the job's ledger of zero-byte
    files, which never reach the stream (jobs.features.stream.claim_zero_byte_files)."""
    return f"file:{path.resolve()}"


# ---- landing files -> lines ---------------------------------------------------------------------------------

def landing_texts_sql(paths: list[Path]) -> str:
    """Landing files -> (source_file, text); text is NULL for a file that is not valid UTF-8 (handled in Python).
    source_file is the file's URI as Spark names it, so records sort in the same delivery order."""
    listing = "[" + ", ".join(sql_string(str(p.resolve())) for p in paths) + "]"
    uris = ", ".join(f"({sql_string(str(p.resolve()))}, {sql_string(file_uri(p))})" for p in paths)
    return (f"SELECT u.uri AS source_file, try(decode(b.content)) AS text FROM read_blob({listing}) b "
            f"JOIN (VALUES {uris}) u(path, uri) ON b.filename = u.path")


def landing_lines_sql(texts_table: str) -> str:
    """(source_file, text) -> source_file, line_number, line, file_reason, as `jobs.features.transforms.landing_lines`:
    split on \\n, drop one \\r from each line's end, number every line from 1, keep the non-blank ones; a blank file
    gives one row (line 0, NULL line, 'empty_file')."""
    return f"""
    WITH files AS (SELECT source_file, text, {blank_sql('text')} AS is_blank FROM {texts_table} WHERE text IS NOT NULL),
    split AS (SELECT source_file, string_split(text, chr(10)) AS parts FROM files WHERE NOT is_blank),
    numbered AS (SELECT source_file, CAST(generate_subscripts(parts, 1) AS INTEGER) AS line_number,
                        unnest(parts) AS part FROM split)
    SELECT source_file, line_number,
           -- split on \\n then drop one \\r from the end: the same lines as Spark's landing_lines
           CASE WHEN suffix(part, chr(13)) THEN part[:-2] ELSE part END AS line,
           CAST(NULL AS VARCHAR) AS file_reason
    FROM numbered WHERE NOT {blank_sql('part')}
    UNION ALL
    SELECT source_file, 0, CAST(NULL AS VARCHAR), 'empty_file' FROM files WHERE is_blank
    """


def non_utf8_lines(source_file: str, content: bytes) -> list[tuple[str, int, str, str | None]]:
    """The lines of a file that is not valid UTF-8, as Spark sees them: its split turns the bad bytes into U+FFFD,
    and a line holding U+FFFD is quarantined as invalid_utf8 (the other lines are checked as usual)."""
    text = content.decode("utf-8", errors="replace")
    rows = []
    for number, part in enumerate(text.split("\n"), start=1):
        line = part[:-1] if part.endswith("\r") else part
        if line.strip(JAVA_WHITESPACE):
            rows.append((source_file, number, line, "invalid_utf8" if "\ufffd" in line else None))
    if not rows and not text.strip(JAVA_WHITESPACE):
        rows.append((source_file, 0, None, "empty_file"))
    return rows


def strictly_valid_json(line: str) -> bool:
    """Spark's parse_json on a line DuckDB accepted but that may use a lenient construct: no NaN/Infinity, no
    trailing comma, no duplicate key at any depth."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name: str) -> float:
        raise ValueError(name)

    try:
        json.loads(line, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except ValueError:
        return False
    return True


# ---- the event contract -------------------------------------------------------------------------------------

def parsed_fields_sql(lines_table: str, strict_failures_table: str) -> str:
    """Lines -> the JSON facts the contract needs, from two parses per line: each field's JSON type (NULL when
    absent, 'NULL' for JSON null) and its value as text."""
    paths = sql_string_list(["$", *[f"$.{f}" for f in CONTRACT_FIELDS]])
    value_paths = sql_string_list([f"$.{f}" for f in CONTRACT_FIELDS])
    n_present = " + ".join(f"CAST(_types[{i + 2}] IS NOT NULL AS INTEGER)" for i in range(len(CONTRACT_FIELDS)))
    return f"""
    WITH typed AS (
        SELECT l.*, try(json_type(l.line, {paths})) AS _types, try(json_keys(l.line)) AS _keys,
               s.source_file IS NOT NULL AS _strict_failure
        FROM {lines_table} l
        LEFT JOIN {strict_failures_table} s USING (source_file, line_number))
    SELECT * EXCLUDE (_types, _keys),
           -- try(): a line DuckDB cannot parse gives NULL types. Duplicate top-level keys (Spark refuses them):
           -- more keys than contract fields present is the cheap hint, the distinct count the exact test.
           _types IS NULL OR _strict_failure
               OR (len(_keys) > {n_present} AND len(_keys) <> list_unique(_keys)) AS _malformed,
           _types[1] AS _t_root,
           {", ".join(f"_types[{i + 2}] AS _t_{f}" for i, f in enumerate(CONTRACT_FIELDS))},
           CASE WHEN _types IS NOT NULL THEN json_extract_string(line, {value_paths}) END AS _values
    FROM typed
    """


def spark_only_timestamp_sql(text: str) -> str:
    """Timestamp strings Spark's cast accepts and DuckDB's does not, rewritten to a form DuckDB reads the same way:
    a bare year (2026 -> 2026-01-01) and a year-month (2026-11 -> 2026-11-01). Only reached for strings DuckDB's
    cast refused."""
    return (rf"CASE WHEN regexp_matches({text}, '^\s*\d{{4}}\s*$') THEN trim({text}) || '-01-01' "
            rf"WHEN regexp_matches({text}, '^\s*\d{{4}}-\d{{1,2}}\s*$') THEN trim({text}) || '-01' END")


def classify_events_sql(parsed_table: str, rules: EventRules) -> str:
    """Parsed lines -> typed event columns (event_us = microseconds since the epoch) and `quarantine_reason`
    (NULL for an accepted event, else the first rule broken, in the order of `jobs.features.transforms.classify_events`)."""
    idx = {f: i + 1 for i, f in enumerate(CONTRACT_FIELDS)}
    number_types = ", ".join(sql_string(t) for t in JSON_NUMBER_TYPES)
    numeric = {f: f"(_t_{f} IN ({number_types}))" for f in ("value", "event_time")}
    present = {f: f"(_t_{f} IS NOT NULL AND _t_{f} <> 'NULL')" for f in CONTRACT_FIELDS}
    checks: list[tuple[str, str]] = [
        ("file_reason IS NOT NULL", "file_reason"),
        ("_malformed", "'malformed_json'"),
        ("_t_root <> 'OBJECT'", "'not_a_json_object'"),
    ]
    for name in (*REQUIRED_STRING_FIELDS, "event_time"):
        checks.append((f"NOT {present[name]}", sql_string(f"missing_{name}")))
    for name in REQUIRED_STRING_FIELDS:
        checks.append((f"_t_{name} <> 'VARCHAR'", sql_string(f"wrong_type_{name}")))
    checks += [
        (f"{present['value']} AND NOT {numeric['value']}", "'wrong_type_value'"),
        (f"{present['context']} AND _t_context <> 'OBJECT'", "'wrong_type_context'"),
    ]
    for name in REQUIRED_STRING_FIELDS:
        # Spark's trim strips spaces only; its length counts characters, as DuckDB's does.
        checks.append((f"trim({name}, ' ') = ''", sql_string(f"empty_{name}")))
        checks.append((f"length({name}) > {rules.max_id_length}", sql_string(f"oversized_{name}")))
    limit_s = rules.now_epoch_s + rules.max_future_skew_s
    checks += [
        (f"event_type NOT IN ({', '.join(sql_string(t) for t in rules.event_types)})", "'unknown_event_type'"),
        ("event_us IS NULL", "'unparseable_event_time'"),
        ("event_us < 0", "'event_time_before_1970'"),
        # unix_timestamp() floors to whole seconds before Spark compares with now + skew.
        (f"floor(event_us / 1000000) > {limit_s!r}", "'future_event_time'"),
    ]
    # The first rule broken wins; a condition that is NULL (a field absent) does not fire, as coalesce(.., false).
    reason = "CASE " + " ".join(f"WHEN coalesce({cond}, false) THEN {label}" for cond, label in checks) + " END"
    event_time_text = f"_values[{idx['event_time']}]"
    strings = ", ".join(f"CASE WHEN _t_{f} = 'VARCHAR' THEN _values[{idx[f]}] END AS {f}"
                        for f in REQUIRED_STRING_FIELDS)
    return f"""
    WITH typed AS (
        SELECT *,
               {strings},
               CASE WHEN {numeric['value']} THEN try_cast(_values[{idx['value']}] AS DOUBLE) END AS value,
               CASE WHEN _t_context IS NOT NULL THEN
                    CASE WHEN _t_context = 'NULL' THEN 'null' ELSE _values[{idx['context']}] END END AS context,
               -- event_time: unix seconds (truncated to microseconds as timestamp_seconds does; clamped where
               -- Spark saturates, so 1e20 is a future time, not an unparseable one) or an ISO-8601 string
               CASE WHEN {numeric['event_time']}
                    THEN CAST(least(greatest(trunc(try_cast({event_time_text} AS DOUBLE) * 1000000), -9.2e18), 9.2e18)
                              AS BIGINT)
                    ELSE epoch_us(coalesce(try_cast({event_time_text} AS TIMESTAMPTZ),
                                           try_cast({spark_only_timestamp_sql(event_time_text)} AS TIMESTAMPTZ)))
                    END AS event_us
        FROM {parsed_table})
    SELECT source_file, line_number, line, {", ".join(REQUIRED_STRING_FIELDS)}, value, context, event_us,
           {reason} AS quarantine_reason
    FROM typed
    """


def dedupe_sql(classified_table: str) -> str:
    """Classified records -> the same with `status`: quarantined, duplicate (an event_id delivered earlier in the
    batch: file name, then line) or accepted. Empty state: no earlier batch, so no watermark and no seen ids."""
    return f"""
    SELECT *, CASE WHEN quarantine_reason IS NOT NULL THEN 'quarantined'
                   WHEN row_number() OVER (PARTITION BY event_id, quarantine_reason IS NULL
                                           ORDER BY source_file, line_number) > 1 THEN 'duplicate'
                   ELSE 'accepted' END AS status
    FROM {classified_table}
    """


# ---- outliers, state, examples ----------------------------------------------------------------------------

def flagged_users_sql(accepted_table: str, z_threshold: float, min_events: int) -> str:
    """Robust z of log1p(events per user): 0.6745 (x - median) / MAD, or (x - median) / (1.253314 meanAD) when MAD is
    0, else 0 (`jobs.features.state.robust_z_of_counts`). quantile_disc(., 0.5) is the element at rank ceil(n/2), as
    there."""
    return f"""
    WITH users AS (SELECT user_id, count(*) AS events, ln(1 + count(*)) AS x FROM {accepted_table} GROUP BY user_id),
    med AS (SELECT quantile_disc(x, 0.5) AS med FROM users),
    dev AS (SELECT users.*, x - med AS centred, abs(x - med) AS deviation FROM users, med),
    spread AS (SELECT quantile_disc(deviation, 0.5) AS mad, avg(deviation) AS meanad FROM dev),
    scored AS (SELECT user_id, events,
                      CASE WHEN mad > 0 THEN 0.6745 * centred / mad
                           WHEN meanad > 0 THEN centred / (1.253314 * meanad) ELSE 0.0 END AS z
               FROM dev, spread)
    SELECT user_id, events, z FROM scored WHERE z > {z_threshold!r} AND events >= {min_events}
    """


def flagged_items_sql(accepted_table: str, users_table: str, min_events: int) -> str:
    """Items with at least `min_events` events, more than half of them from flagged users."""
    return f"""
    SELECT item_id, count(*) AS events, count(u.user_id) / count(*) AS bot_share
    FROM {accepted_table} a LEFT JOIN {users_table} u USING (user_id)
    GROUP BY item_id HAVING count(*) >= {min_events} AND count(u.user_id) / count(*) > 0.5
    """


def entity_state_sql(training_table: str, half_life_s: float) -> str:
    """The state snapshot an empty state plus this batch gives (`update_entity_state`): per key (user, item, user x
    event type, joined with U+0001 as in jobs.features.state.SEP) the newest event time and the decayed count at it,
    sum of 2^(-(last - t) / half_life), and the key's events in the batch."""
    rate = LN2 / half_life_s
    return f"""
    WITH keyed AS (
        SELECT 'user' || chr(1) || user_id AS key, t FROM {training_table}
        UNION ALL SELECT 'item' || chr(1) || item_id, t FROM {training_table}
        UNION ALL SELECT 'type' || chr(1) || user_id || chr(1) || event_type, t FROM {training_table}),
    last AS (SELECT key, max(t) AS last_event_s FROM keyed GROUP BY key)
    SELECT key, sum(exp(-{rate!r} * (last_event_s - t))) AS decayed_count, any_value(last_event_s) AS last_event_s,
           count(*) AS batch_events
    FROM keyed JOIN last USING (key) GROUP BY key
    """


def item_buckets_sql(training_table: str, params: BatchParams, pruned: bool = True) -> str:
    """The item bucket state an empty state plus this batch gives: events per (item_id, bucket)
    (`update_item_buckets`, which the batch's features read), and with `pruned` without the buckets more than
    `popularity_keep_s` before the newest one (`prune_item_buckets`, the snapshot the next batch starts from)."""
    bucket_s = params.popularity_bucket_s
    keep = f"WHERE bucket > newest - {params.popularity_keep_s // bucket_s}" if pruned else ""
    return f"""
    SELECT item_id, bucket, events FROM (
        SELECT item_id, bucket, count(*) AS events, max(bucket) OVER () AS newest
        FROM {training_table} GROUP BY item_id, bucket)
    {keep}
    """


def examples_sql(training_table: str, params: BatchParams, items_table: str | None) -> str:
    """Training events -> examples with the Spark job's columns and values: `training_examples`, then
    `entity_features` (decayed counts at the example's time, recency, event-type shares against the state as of the
    end of the batch), the sliding-window item popularity, and `item_content_features` when items are given."""
    rate = LN2 / params.half_life_s
    weights = " ".join(f"WHEN {sql_string(t)} THEN {float(w)!r}" for t, w in sorted(params.event_type_weights.items()))
    bucket_s = params.popularity_bucket_s
    types = params.rules.event_types
    share_total = " + ".join(f"coalesce(c_{i}, 0.0)" for i in range(len(types)))
    mix_cols = ", ".join(f"max(c) FILTER (WHERE event_type = {sql_string(t)}) AS c_{i}" for i, t in enumerate(types))
    share_cols = ", ".join(f"coalesce(c_{i}, 0.0) / ({share_total}) AS user_share_{t}" for i, t in enumerate(types))
    popularity_cols = ", ".join(f"coalesce(p.item_events_last_{w}s, 0) AS item_events_last_{w}s"
                                for w in params.popularity_windows_s)
    windows = ", ".join(
        f"CAST(sum(events) OVER (PARTITION BY item_id ORDER BY bucket RANGE BETWEEN {w // bucket_s - 1} PRECEDING "
        f"AND CURRENT ROW) AS BIGINT) AS item_events_last_{w}s" for w in params.popularity_windows_s)
    content_join = content_cols = ""
    if items_table is not None:
        content_join = f"LEFT JOIN (SELECT item_id, categories AS item_categories, " \
                       f"CAST(len(string_split(categories, '|')) AS INTEGER) AS item_n_categories, " \
                       f"CAST(length(title) AS INTEGER) AS item_title_length FROM {items_table}) c USING (item_id)"
        content_cols = ", c.item_categories, c.item_n_categories, c.item_title_length"
    return f"""
    WITH users AS (SELECT user_id, count(*) AS user_batch_events, max(t) AS user_last
                   FROM {training_table} GROUP BY user_id),
    user_decay AS (SELECT e.user_id, sum(exp(-{rate!r} * (u.user_last - e.t))) AS user_c
                   FROM {training_table} e JOIN users u USING (user_id) GROUP BY e.user_id),
    per_item AS (SELECT item_id, count(*) AS item_batch_events, max(t) AS item_last
                 FROM {training_table} GROUP BY item_id),
    item_decay AS (SELECT e.item_id, sum(exp(-{rate!r} * (i.item_last - e.t))) AS item_c
                   FROM {training_table} e JOIN per_item i USING (item_id) GROUP BY e.item_id),
    type_last AS (SELECT user_id, event_type, max(t) AS type_last FROM {training_table} GROUP BY user_id, event_type),
    type_decay AS (SELECT e.user_id, e.event_type, sum(exp(-{rate!r} * (l.type_last - e.t))) AS c
                   FROM {training_table} e JOIN type_last l USING (user_id, event_type)
                   GROUP BY e.user_id, e.event_type),
    mix AS (SELECT user_id, {mix_cols} FROM type_decay GROUP BY user_id),
    shares AS (SELECT user_id, {share_cols} FROM mix),
    buckets AS ({item_buckets_sql(training_table, params, pruned=False)}),
    popularity AS (SELECT item_id, bucket, {windows} FROM buckets)
    SELECT e.event_id, e.user_id, e.item_id, e.event_type, e.value, e.event_time, e.t AS timestamp,
           CASE e.event_type {weights} ELSE 1.0 END AS event_weight,
           CAST(hour(e.event_time) AS INTEGER) AS hour_of_day,
           u.user_batch_events, i.item_batch_events,
           ud.user_c * exp(-{rate!r} * (e.t - u.user_last)) AS user_decayed_count,
           greatest(u.user_last - e.t, 0.0) AS user_recency_s,
           id.item_c * exp(-{rate!r} * (e.t - i.item_last)) AS item_decayed_count,
           greatest(i.item_last - e.t, 0.0) AS item_recency_s,
           {", ".join(f"s.user_share_{t}" for t in types)},
           {popularity_cols}{content_cols}
    FROM {training_table} e
    JOIN users u USING (user_id) JOIN user_decay ud USING (user_id)
    JOIN per_item i USING (item_id) JOIN item_decay id USING (item_id)
    JOIN shares s USING (user_id)
    -- LEFT, as the Spark job's join: every example's own bucket is in the unpruned state, so none counts 0 here
    LEFT JOIN popularity p ON p.item_id = e.item_id AND p.bucket = e.bucket
    {content_join}
    """


def training_events_sql(accepted_table: str, users_table: str, items_table: str, bucket_s: int) -> str:
    """Accepted events minus those of flagged users and items, with the time columns every later step reads:
    t = seconds since the epoch (Spark's cast of a timestamp to double) and the popularity bucket
    floor(unix_seconds / bucket_s)."""
    return f"""
    SELECT event_id, user_id, item_id, event_type, value, event_time,
           CAST(event_us AS DOUBLE) / 1000000.0 AS t,
           (event_us // 1000000) // {bucket_s} AS bucket  -- accepted events are >= 1970: // is floor here
    FROM {accepted_table}
    WHERE user_id NOT IN (SELECT user_id FROM {users_table}) AND item_id NOT IN (SELECT item_id FROM {items_table})
    """


# ---- the batch --------------------------------------------------------------------------------------------

def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # Every timestamp is UTC, as Spark's session time zone is in tidal.spark.
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    return con


def landing_paths(landing_dir: Path) -> list[Path]:
    """The landing files the Spark job's stream reads (its glob: *.jsonl, *.parquet; hidden names skipped)."""
    paths = sorted(p for p in landing_dir.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    if any(p.suffix == ".parquet" for p in paths):
        raise ValueError("landing Parquet files are not supported by the DuckDB baseline (JSON Lines only)")
    return [p for p in paths if p.suffix == ".jsonl"]


def classify_landing(con: duckdb.DuckDBPyConnection, paths: list[Path], rules: EventRules) -> None:
    """Landing files -> table `classified`: one row per landed record (line, or empty file) with its typed event
    columns, `quarantine_reason` and `status` (accepted | duplicate | quarantined)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE landing_texts AS {landing_texts_sql(paths)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE landing_lines AS {landing_lines_sql('landing_texts')}")
    bad_files = [r[0] for r in con.execute("SELECT source_file FROM landing_texts WHERE text IS NULL").fetchall()]
    con.execute("DROP TABLE landing_texts")  # the text is in landing_lines now; do not hold it twice
    path_of = {file_uri(p): p for p in paths}
    for source_file in bad_files:
        rows = non_utf8_lines(source_file, path_of[source_file].read_bytes())
        con.executemany("INSERT INTO landing_lines VALUES (?, ?, ?, ?)", rows)

    # Lines DuckDB's lenient parser accepts but that may use NaN/Infinity or a trailing comma: the strict check.
    suspects = con.execute(f"SELECT source_file, line_number, line FROM landing_lines WHERE file_reason IS NULL "
                           f"AND regexp_matches(line, {sql_string(LENIENT_JSON_PATTERN)})").fetchall()
    con.execute("CREATE OR REPLACE TEMP TABLE strict_failures (source_file VARCHAR, line_number INTEGER)")
    failures = [(f, n) for f, n, line in suspects if not strictly_valid_json(line)]
    if failures:
        con.executemany("INSERT INTO strict_failures VALUES (?, ?)", failures)

    con.execute(f"CREATE OR REPLACE TEMP TABLE parsed AS {parsed_fields_sql('landing_lines', 'strict_failures')}")
    con.execute("DROP TABLE landing_lines")
    con.execute(f"CREATE OR REPLACE TEMP TABLE classified_raw AS {classify_events_sql('parsed', rules)}")
    con.execute("DROP TABLE parsed")
    con.execute(f"CREATE OR REPLACE TEMP TABLE classified AS {dedupe_sql('classified_raw')}")
    con.execute("DROP TABLE classified_raw")


def write_parquet(con: duckdb.DuckDBPyConnection, select_sql: str, folder: Path) -> None:
    """A query's rows as folder/part-0.parquet, replacing the folder (a Spark output folder holds part files)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    con.execute(f"COPY ({select_sql}) TO {sql_string(str(folder / 'part-0.parquet'))} (FORMAT parquet)")


def run_batch(landing_dir: Path, items_csv: Path | None, out: StorageLayout, params: BatchParams, *,
              batch_id: int = 0, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
    """One micro-batch over every landing file, from empty state; writes its outputs under `out` and returns the
    batch manifest (the Spark job's fields)."""
    con = con or connect()
    paths = landing_paths(landing_dir)
    if not paths:
        raise ValueError(f"no landing files in {landing_dir}")
    classify_landing(con, paths, params.rules)
    con.execute("CREATE OR REPLACE TEMP TABLE accepted AS "
                # A naive UTC timestamp: what Spark's Parquet timestamps (INT96) read back as in pandas/pyarrow.
                "SELECT * EXCLUDE (line), make_timestamp(event_us) AS event_time "
                "FROM classified WHERE status = 'accepted'")

    con.execute(f"CREATE OR REPLACE TEMP TABLE flagged_users AS "
                f"{flagged_users_sql('accepted', params.outlier_z, params.outlier_min_events)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE flagged_items AS "
                f"{flagged_items_sql('accepted', 'flagged_users', params.outlier_min_events)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE training AS "
                f"{training_events_sql('accepted', 'flagged_users', 'flagged_items', params.popularity_bucket_s)}")
    items_table = None
    if items_csv is not None and items_csv.exists():
        con.execute(f"CREATE OR REPLACE TEMP TABLE items AS SELECT * FROM "
                    f"read_csv({sql_string(str(items_csv))}, header = true, all_varchar = true)")
        items_table = "items"
    con.execute(f"CREATE OR REPLACE TEMP TABLE examples AS {examples_sql('training', params, items_table)}")

    # Outputs, where the Spark job writes them; a rerun replaces this batch's own, as a replayed batch does.
    for folder in out.bronze_events.glob(f"event_date=*/batch_id={batch_id}"):
        shutil.rmtree(folder)
    out.bronze_events.mkdir(parents=True, exist_ok=True)
    con.execute(f"""COPY (SELECT event_id, user_id, item_id, event_type, value, event_time, context, source_file,
                                 CAST({batch_id} AS INTEGER) AS ingest_batch_id,
                                 CAST({batch_id} AS INTEGER) AS batch_id,
                                 CAST(event_time AS DATE) AS event_date
                          FROM accepted)
                    TO {sql_string(str(out.bronze_events))} (FORMAT parquet, PARTITION_BY (event_date, batch_id),
                                                             OVERWRITE_OR_IGNORE)""")
    batch_folder = f"batch_id={batch_id}"
    write_parquet(con, f"SELECT CAST({batch_id} AS INTEGER) AS batch_id, source_file, line_number, quarantine_reason, "
                       f"line AS raw_record FROM classified WHERE status = 'quarantined'",
                  out.quarantine_events / batch_folder)
    write_parquet(con, "SELECT * FROM examples", out.examples_batch(batch_id))
    write_parquet(con, entity_state_sql("training", params.half_life_s), out.feature_state / "entities" / batch_folder)
    write_parquet(con, item_buckets_sql("training", params), out.feature_state / "item_buckets" / batch_folder)
    # The next batch's dedupe state; from empty state with no earlier watermark every accepted id is kept.
    write_parquet(con, "SELECT event_id, event_time FROM accepted", out.feature_state / "event_ids" / batch_folder)
    return batch_manifest(con, batch_id, out)


def batch_manifest(con: duckdb.DuckDBPyConnection, batch_id: int, out: StorageLayout) -> dict[str, Any]:
    """The Spark job's manifest fields (times as UTC ISO strings), written under features/state/batches/."""
    counts = dict(con.execute("SELECT status, count(*) FROM classified GROUP BY status").fetchall())
    reasons = dict(con.execute("SELECT quarantine_reason, count(*) FROM classified WHERE status = 'quarantined' "
                               "GROUP BY quarantine_reason ORDER BY quarantine_reason").fetchall())
    lo, hi = con.execute("SELECT min(event_us), max(event_us) FROM accepted").fetchone()
    files = [r[0] for r in con.execute("SELECT DISTINCT source_file FROM classified ORDER BY 1").fetchall()]
    n_examples = con.execute("SELECT count(*) FROM examples").fetchone()[0]

    def iso(us: int | None) -> str | None:
        return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat() if us is not None else None

    accepted = counts.get("accepted", 0)
    manifest = {
        "batch_id": batch_id,
        "files": files,
        "landed": sum(counts.values()),
        "accepted": accepted,
        "quarantined": counts.get("quarantined", 0),
        "quarantine_reasons": reasons,
        "duplicates": counts.get("duplicate", 0),
        "event_time_min": iso(lo),
        "event_time_max": iso(hi),
        "examples_path": str(out.examples_batch(batch_id)),
        "outlier_users": [r[0] for r in con.execute("SELECT user_id FROM flagged_users ORDER BY 1").fetchall()],
        "outlier_items": [r[0] for r in con.execute("SELECT item_id FROM flagged_items ORDER BY 1").fetchall()],
        "outlier_events_excluded": accepted - n_examples,
        "max_event_time": iso(hi),
        "watermark": None,
    }
    atomic_write_json(out.feature_state / "batches" / f"{batch_id:08d}.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duckdb_features", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="root the outputs go under (StorageLayout paths)")
    parser.add_argument("--now", type=float, default=None, help="epoch seconds of the batch clock (default: now)")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory_limit, e.g. 8GB")
    args = parser.parse_args(argv)
    settings = load_settings()
    source = StorageLayout(settings.home)
    params = batch_params(settings, time.time() if args.now is None else args.now)
    started = time.monotonic()
    manifest = run_batch(source.landing_events, source.landing_items / "items.csv",
                         StorageLayout(args.out.resolve()), params, con=connect(args.threads, args.memory_limit))
    summary = {k: manifest[k] for k in ("landed", "accepted", "quarantined", "duplicates", "quarantine_reasons",
                                        "outlier_events_excluded")}
    print(json.dumps({**summary, "seconds": round(time.monotonic() - started, 2)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
