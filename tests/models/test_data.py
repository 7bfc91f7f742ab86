"""Loaders: generic schema (CSV/Parquet, unix or ISO-8601 time) and the MovieLens layout."""
import pandas as pd
import pytest

from models.data import load_interactions, load_items, sort_by_time


def test_generic_csv_with_iso_timestamps_and_string_ids(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp,value,event_type\n"
                    "007,a,2024-01-01T00:00:10Z,1.5,click\n"
                    "7,b,2024-01-01T00:00:00+00:00,,view\n")
    frame = load_interactions(path)
    assert list(frame["user_id"]) == ["007", "7"]  # ids stay strings: "007" != "7"
    assert list(frame["timestamp"]) == [1704067210.0, 1704067200.0]
    assert frame["value"].iloc[0] == 1.5 and pd.isna(frame["value"].iloc[1])
    assert list(sort_by_time(frame)["item_id"]) == ["b", "a"]


def test_parquet_with_unix_seconds(tmp_path):
    pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [1.7e9]}).to_parquet(tmp_path / "e.parquet")
    frame = load_interactions(tmp_path / "e.parquet")
    assert frame["timestamp"].tolist() == [1.7e9] and frame["user_id"].tolist() == ["u"]


def test_movielens_layout(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n31,"Dangerous Minds (1995)",Drama\n'
                                         "32,Untitled,(no genres listed)\n")
    frame = load_interactions(tmp_path / "ratings.csv")
    assert frame.iloc[0].to_dict() == {"user_id": "1", "item_id": "31", "timestamp": 1260759144.0, "value": 2.5}
    items = load_items(tmp_path / "movies.csv")
    assert items["categories"].tolist() == ["Drama", ""]
    assert items["title"].tolist()[0] == "Dangerous Minds (1995)"


def test_stable_sort_keeps_file_order_on_ties():
    frame = pd.DataFrame({"user_id": list("abcd"), "item_id": list("wxyz"), "timestamp": [2.0, 1.0, 2.0, 1.0]})
    assert sort_by_time(frame)["user_id"].tolist() == ["b", "d", "a", "c"]


def test_missing_column_is_an_error(tmp_path):
    (tmp_path / "bad.csv").write_text("user_id,timestamp\nu,1\n")
    with pytest.raises(ValueError, match="item_id"):
        load_interactions(tmp_path / "bad.csv")
