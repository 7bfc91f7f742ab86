"""The features job's pure transforms: DataFrame in, DataFrame out, no I/O, tested on local[1] with tiny fixtures.

landing file rows -> lines (`landing_lines`, `parquet_lines`) -> records classified against the event contract
(`classify_events`) -> deduplicated under the watermark (`dedupe_with_watermark`) -> training examples
(`example_columns`; `training_examples` adds the batch counts by window functions, where the features job takes
them from the entity state).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


REQUIRED_STRING_FIELDS = ("event_id", "user_id", "item_id", "event_type")


@dataclass(frozen=True)
class EventRules:
    """The event contract's rules, as parameters of the pure classification function."""

    event_types: tuple[str, ...]
    max_id_length: int
    max_future_skew_s: int
    now_epoch_s: float  # the reference "now" for future timestamps; passed in so tests are deterministic


def landing_lines(files_df):
    """(path, content, length) file rows -> one row per non-blank line, plus one row per empty file.

    Output: source_file, line_number, line (string or null for an empty file), file_reason (null or a reason).
    One pass over the files: a blank file explodes into a single null line, which becomes its empty_file row.
    """
    from pyspark.sql import functions as F

    with_text = files_df.select(
        F.col("path").alias("source_file"),
        # A plain cast keeps the bytes as they are (decode() would fail the whole batch on one bad byte).
        F.col("content").cast("string").alias("text"),
    )
    # Blank means nothing but whitespace (F.trim strips spaces only, not newlines or tabs). One regex find that stops
    # at the first non-blank character, not a rewrite of the whole text.
    is_blank = ~F.coalesce(F.col("text"), F.lit("")).rlike(r"\S")
    # The per-file columns in their own projection, below the explode: next to the generator, Spark would evaluate
    # them above it, once per line, over the whole file's text.
    per_file = with_text.select(
        "source_file", "text", is_blank.alias("file_is_blank"),
        F.when(is_blank, F.lit(True)).otherwise(F.expr("is_valid_utf8(text)")).alias("file_is_utf8"))
    # Lines end at "\n" or "\r\n": split on a plain "\n", then drop one "\r" from each line's end (also from a last
    # line with no "\n" after it). A one-character separator that is not a regex takes Java's String.split fast path
    # (indexOf); the pattern "\r?\n" went through the regex engine, ~1 us more per line
    # (benchmarks/features/RESULTS.md, 2026-12-04 evening).
    exploded = per_file.select(
        "source_file", "file_is_blank", "file_is_utf8",
        F.posexplode(F.when(F.col("file_is_blank"), F.array(F.lit(None).cast("string")))
                     .otherwise(F.split(F.col("text"), "\n"))).alias("pos", "piece"))
    line = F.when(F.col("piece").endswith("\r"), F.expr("substring(piece, 1, length(piece) - 1)")) \
        .otherwise(F.col("piece"))
    return (
        exploded.filter(F.col("file_is_blank") | F.col("piece").rlike(r"\S"))
        .select("source_file", "file_is_blank", "file_is_utf8", "pos", line.alias("line"))
        # split() goes through Java strings, which turn bytes that are not UTF-8 into U+FFFD: in a file that is
        # not valid UTF-8, a line holding U+FFFD is where the bad bytes were.
        .select("source_file",
                F.when(F.col("file_is_blank"), F.lit(0)).otherwise(F.col("pos") + 1).alias("line_number"), "line",
                F.when(F.col("file_is_blank"), F.lit("empty_file"))
                .when(~F.col("file_is_utf8") & F.col("line").contains("\ufffd"), F.lit("invalid_utf8"))
                .alias("file_reason"))
    )


def parquet_schema_problem(schema) -> str | None:
    """Why a landing Parquet file's schema breaks the event contract, or None. Checked per file, before any row is
    read: a file whose columns are missing or mistyped is quarantined whole (one record, reason
    `parquet_wrong_schema`, the problem as its raw record), like an empty file; fix it and land it again."""
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in schema.fields}
    problems = [f"missing column {name}" for name in (*REQUIRED_STRING_FIELDS, "event_time") if name not in fields]
    problems += [f"{name} is {fields[name].simpleString()}, not string" for name in REQUIRED_STRING_FIELDS
                 if name in fields and not isinstance(fields[name], T.StringType)]
    if "event_time" in fields and not isinstance(fields["event_time"], (T.TimestampType, T.TimestampNTZType,
                                                                         T.StringType, T.NumericType)):
        problems.append(f"event_time is {fields['event_time'].simpleString()}, not a timestamp")
    if "value" in fields and not isinstance(fields["value"], (T.NumericType, T.NullType)):
        problems.append(f"value is {fields['value'].simpleString()}, not a number")
    return "; ".join(problems) or None


def parquet_lines(spark, paths: list[str]):
    """Landing Parquet files -> the same line rows as landing_lines: each row becomes one JSON line (so it meets the
    same contract checks as a JSON Lines record), numbered in file order. A file that cannot be read, or whose schema
    breaks the contract, becomes one file-level row with its reason."""
    from pyspark.sql import functions as F

    out_schema = "source_file string, line_number int, line string, file_reason string"
    frames = []
    for path in paths:
        try:
            df = spark.read.parquet(path)
            problem = parquet_schema_problem(df.schema)
        except Exception as err:  # noqa: BLE001 - any read failure is a property of the file, not of the run
            frames.append(spark.createDataFrame([(path, 0, f"unreadable: {str(err).splitlines()[0][:300]}",
                                                  "unreadable_parquet")], out_schema))
            continue
        if problem:
            frames.append(spark.createDataFrame([(path, 0, problem, "parquet_wrong_schema")], out_schema))
            continue
        rows = df.select(F.to_json(F.struct(*df.columns)).alias("line")).agg(F.collect_list("line").alias("lines"))
        frames.append(rows.select(F.lit(path).alias("source_file"),
                                  F.posexplode("lines").alias("pos", "line"))
                      .select("source_file", (F.col("pos") + 1).cast("int").alias("line_number"), "line",
                              F.lit(None).cast("string").alias("file_reason")))
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def classify_events(lines_df, rules: EventRules, line_reader: str | None = None):
    """Parse each line against the event contract. Adds typed event columns, `quarantine_reason` (null for an
    accepted event; otherwise the first rule the record broke) and `read_by_line_reader` (whether `line_reader` read
    the line).

    `line_reader`: the name of tidal's event line reader in the session (tidal.spark.event_line_reader), or None.
    It reads a plainly well-formed event line in one pass and returns null for any other line; only those lines take
    the variant path below, and a line it read skips the checks only a malformed record can fail. Both paths give
    the same rows (benchmarks/features/classify_ab.py checks it on good, bad and fuzzed lines)."""
    from pyspark.sql import functions as F

    if line_reader:
        df = lines_df.withColumn("_plain", F.when(F.col("file_reason").isNull(),
                                                  F.call_function(line_reader, F.col("line"))))
        plain, is_plain = F.col("_plain"), F.col("_plain").isNotNull()
    else:
        df, plain, is_plain = lines_df, None, F.lit(False)
    # A line the reader read is null here, so the variant path costs it nothing.
    variant_line = F.when(~is_plain, F.col("line")) if line_reader else F.col("line")
    df = df.withColumn("_marker", end_marker(variant_line))  # once per line: the parse and the check read it
    df = df.withColumn("_wrapped", parse_with_end_marker(variant_line, F.col("_marker")))
    # Each field is looked up in the record once (`_f_<name>`); its type and its typed values are read from that.
    # A lookup per use cost ~0.3 us more per line (benchmarks/features/RESULTS.md, "2026-12-05: each field looked
    # up once"). The path goes through the wrapper's element 0: a variant_get to 'variant' copies what it returns,
    # and taking the record out first copied every record whole ("2026-12-05 (late afternoon): where the
    # classification's CPU goes": 0.87-0.92x the classification's time without that copy).
    fields = (*REQUIRED_STRING_FIELDS, "value", "event_time", "context")
    # The context's type is read from its JSON text below: its type name would spell out every nested field.
    typed_fields = tuple(name for name in fields if name != "context")
    df = df.select("*", *[F.expr(f"variant_get(_wrapped, '$[0].{name}', 'variant')").alias(f"_f_{name}")
                          for name in fields])

    def as_type(name: str, sql_type: str):
        return F.expr(f"try_variant_get(_f_{name}, '$', '{sql_type}')")

    def either(read: str, variant_value):
        return F.when(is_plain, plain[read]).otherwise(variant_value) if line_reader else variant_value

    df = df.select(
        "*",
        *[F.expr(f"schema_of_variant(_f_{name})").alias(f"_t_{name}") for name in typed_fields],
        *[either(name, as_type(name, "string")).alias(name) for name in REQUIRED_STRING_FIELDS],
        either("value", as_type("value", "double")).alias("value"),
        either("context", F.expr("to_json(_f_context)")).alias("context"),
    )
    # event_time: ISO-8601 string, or a number of unix seconds.
    event_time = F.when(is_numeric_type(F.col("_t_event_time")),
                        F.timestamp_seconds(as_type("event_time", "double"))) \
        .otherwise(timestamp_from_text(as_type("event_time", "string")))
    if line_reader:
        event_time = F.when(is_plain & plain["time_seconds"].isNotNull(),
                            F.timestamp_seconds(plain["time_seconds"])) \
            .when(is_plain, timestamp_from_text(plain["time_text"])).otherwise(event_time)
    df = df.withColumn("event_time", event_time)

    checks: list[tuple[Any, Any]] = [(F.col("file_reason").isNotNull(), F.col("file_reason"))]
    # A line the reader read has passed every check of the record's form (its own are stricter).
    checks += [(~is_plain & condition, label) for condition, label in form_checks()] if line_reader else form_checks()
    checks += value_checks(rules)
    reason = F.lit(None).cast("string")
    for condition, label in reversed(checks):
        reason = F.when(F.coalesce(condition, F.lit(False)), label).otherwise(reason)
    # The helper columns by name, not from df.columns: on Spark Connect that asks the server to analyse the whole
    # plan, ~0.1 s a call on a warm server, on every micro-batch's critical path.
    return df.withColumn("quarantine_reason", reason).withColumn("read_by_line_reader", is_plain).drop(
        "_plain", "_marker", "_wrapped", *[f"_f_{name}" for name in fields], *[f"_t_{name}" for name in typed_fields])


def form_checks() -> list[tuple[Any, Any]]:
    """The checks of a record's form, in order, over classify_events' variant helper columns: one JSON object, and
    each field present and of its type."""
    from pyspark.sql import functions as F

    checks: list[tuple[Any, Any]] = [
        (~ends_at_its_marker(F.col("_wrapped"), F.col("_marker")), F.lit("malformed_json")),
        # A parsed line that starts with "{" is an object; only other lines pay for the whole value's schema.
        (~F.when(F.col("line").startswith("{"), F.lit(True))
         .otherwise(F.expr("schema_of_variant(variant_get(_wrapped, '$[0]', 'variant'))").startswith("OBJECT")),
         F.lit("not_a_json_object")),
    ]
    for name in (*REQUIRED_STRING_FIELDS, "event_time"):
        checks.append((F.col(f"_t_{name}").isNull() | (F.col(f"_t_{name}") == "VOID"), F.lit(f"missing_{name}")))
    for name in REQUIRED_STRING_FIELDS:
        checks.append((F.col(f"_t_{name}") != "STRING", F.lit(f"wrong_type_{name}")))
    return checks + [
        (F.col("_t_value").isNotNull() & (F.col("_t_value") != "VOID") & ~is_numeric_type(F.col("_t_value")),
         F.lit("wrong_type_value")),
        # JSON null is "null"; an object's JSON starts with "{", and any other value's cannot.
        (F.col("context").isNotNull() & (F.col("context") != "null") & ~F.col("context").startswith("{"),
         F.lit("wrong_type_context")),
    ]


def value_checks(rules: EventRules) -> list[tuple[Any, Any]]:
    """The checks of a well-formed record's values, in order, over its typed columns."""
    from pyspark.sql import functions as F

    checks: list[tuple[Any, Any]] = []
    for name in REQUIRED_STRING_FIELDS:
        checks.append((F.trim(F.col(name)) == "", F.lit(f"empty_{name}")))
        checks.append((F.length(F.col(name)) > rules.max_id_length, F.lit(f"oversized_{name}")))
    return checks + [
        (~F.col("event_type").isin(list(rules.event_types)), F.lit("unknown_event_type")),
        (F.col("event_time").isNull(), F.lit("unparseable_event_time")),
        (F.col("event_time") < F.lit("1970-01-01 00:00:00").cast("timestamp"), F.lit("event_time_before_1970")),
        (F.unix_timestamp(F.col("event_time")) > F.lit(rules.now_epoch_s + rules.max_future_skew_s),
         F.lit("future_event_time")),
    ]


def timestamp_from_text(text):
    """An ISO-8601 event time. It must start with its year: Spark would read a bare time ("10:15:00") as today's, so
    the same record would classify differently on another day's replay."""
    from pyspark.sql import functions as F

    return F.when(text.rlike(r"^\s*[+-]?[0-9]{4}"), F.try_to_timestamp(text))


# The names schema_of_variant gives a JSON number: an integer by its size, a double, or DECIMAL(p,s).
NUMERIC_VARIANT_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE")


def is_numeric_type(variant_type):
    """Whether a schema_of_variant name is a number's. A set lookup and a prefix, not a regex per line."""
    return variant_type.isin(*NUMERIC_VARIANT_TYPES) | variant_type.startswith("DECIMAL")


def end_marker(line):
    """The string the line is parsed next to: its own MD5, which no line can hold (see parse_with_end_marker)."""
    from pyspark.sql import functions as F

    return F.md5(line)


def parse_with_end_marker(line, marker):
    """The line parsed as the JSON array `[<line>,"<end marker>"]`: element 0 is the line's value (when the line
    is exactly one JSON value), and the marker shows whether anything followed that value.

    try_parse_json reads a line's first value and ignores whatever follows it, so `{...}{...}`, `{...},{...}` and
    `{...} junk` would all parse, and the second of two records glued onto one line would be dropped without a
    trace. Inside the array the parser must read the whole line:
    - one value, then only whitespace: the array is [value, marker];
    - junk or a second value without a comma: the array is invalid, so null;
    - a comma and more values: the marker moves to index 2 or later;
    - a `]` that closes the array inside the line (`{...}],"x"`): element 1 comes from the line, and it would have
      to be the line's own MD5 to pass, which a line cannot contain.
    One parse does both jobs, at any nesting depth, where a regex over the line cost more than the parse itself
    (benchmarks/features/RESULTS.md, "2026-12-04 night"). The wrapper uses up one level of the parser's nesting
    limit."""
    from pyspark.sql import functions as F

    return F.try_parse_json(F.concat(F.lit("["), line, F.lit(',"'), marker, F.lit('"]')))


def ends_at_its_marker(wrapped, marker):
    """True where the wrapped parse holds exactly one value from the line (see parse_with_end_marker); false for
    an unparseable line and for a line with anything after its first value."""
    from pyspark.sql import functions as F

    return F.coalesce(F.try_variant_get(wrapped, "$[1]", "string") == marker, F.lit(False))


EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "value", "event_time")


def example_columns(accepted_df, event_type_weights: dict[str, float], keep: tuple[str, ...] = ()):
    """Accepted events -> one row per event with the example's own columns (those that need no other event), and
    the input columns named in `keep`."""
    from pyspark.sql import functions as F

    weight_map = F.create_map(*[x for t, w in sorted(event_type_weights.items()) for x in (F.lit(t), F.lit(float(w)))])
    return accepted_df.select(
        *EVENT_COLUMNS,
        F.col("event_time").cast("double").alias("timestamp"),
        F.coalesce(weight_map[F.col("event_type")], F.lit(1.0)).alias("event_weight"),
        F.hour("event_time").alias("hour_of_day"),
        *[k for k in keep if k not in EVENT_COLUMNS],
    )


def training_examples(accepted_df, event_type_weights: dict[str, float], window_keys: tuple[str, ...] = ()):
    """Accepted events -> one training example per event with its numeric features (the drift test reads these).

    The per-batch counts are over the whole input frame, or per value of `window_keys` (to compute many windows in
    one pass, e.g. one per landing file). The features job takes its counts from the entity state instead
    (`jobs.features.state.entity_features`): two window functions are two shuffles of every example."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    return example_columns(accepted_df, event_type_weights, keep=window_keys).select(
        "*",
        F.count("*").over(Window.partitionBy(*window_keys, "user_id")).alias("user_batch_events"),
        F.count("*").over(Window.partitionBy(*window_keys, "item_id")).alias("item_batch_events"),
    ).drop(*[k for k in window_keys if k not in EVENT_COLUMNS])


def dedupe_with_watermark(parsed_df, seen_df, watermark: datetime | None):
    """Classified records + the dedupe state (event_id, event_time of accepted events still above the watermark) ->
    the same records with `status` in accepted | duplicate | quarantined.

    - A valid event older than the watermark (the newest event time seen in earlier batches minus
      `features.allowed_lateness_s`) is quarantined as "late": the state no longer holds ids that old, so it could
      not be told from a duplicate, and dropping it silently is not allowed.
    - A late event inside the allowed lateness is accepted like any other.
    - A duplicate is the same event_id delivered earlier: in an earlier batch (the state), or earlier in this batch
      (file name, then line). First delivery wins, whatever the copies' event times, so the outcome does not depend
      on how a restarted stream groups files into micro-batches.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = parsed_df
    if watermark is not None:
        is_late = (F.col("quarantine_reason").isNull()
                   & (F.col("event_time") < F.lit(watermark.timestamp()).cast("timestamp")))
        df = df.withColumn("quarantine_reason", F.when(is_late, F.lit("late")).otherwise(F.col("quarantine_reason")))
    is_valid = F.col("quarantine_reason").isNull()
    # Only a quarantined record is ever written with its raw line: the dedupe shuffle need not carry the others.
    df = df.withColumn("line", F.when(~is_valid, F.col("line")))
    first_in_batch = Window.partitionBy("event_id", is_valid).orderBy("source_file", "line_number")
    ranked = df.withColumn("_rank", F.row_number().over(first_in_batch))
    seen = seen_df.select("event_id").distinct().withColumn("_seen", F.lit(True))
    ranked = ranked.join(seen, "event_id", "left")
    return ranked.withColumn(
        "status",
        F.when(~is_valid, F.lit("quarantined"))
        .when((F.col("_rank") > 1) | F.col("_seen").isNotNull(), F.lit("duplicate"))
        .otherwise(F.lit("accepted")),
    ).drop("_rank", "_seen")
