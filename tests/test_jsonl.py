"""atom.jsonl: the one JSON Lines reader and writer."""

from __future__ import annotations

import json

import pytest

from atom import jsonl
from atom.data.records import DataError


def test_write_append_and_read_back_in_order(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert jsonl.write(path, [{"a": 1}, {"a": "x\u2028y"}]) == 2  # U+2028 inside a string does not end a line
    assert jsonl.append(path, iter([{"a": 3}]), sync=True) == 1
    assert list(jsonl.read(path)) == [{"a": 1}, {"a": "x\u2028y"}, {"a": 3}]
    assert jsonl.write(path, []) == 0 and list(jsonl.read(path)) == []  # write replaces


def test_a_bad_record_names_file_and_line_with_the_callers_error(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"reward": 1}) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match=r"demos\.jsonl:3: not a demo \(JSONDecodeError"):
        list(jsonl.read(path, what="a demo", error=DataError))
    with pytest.raises(ValueError, match=r"demos\.jsonl:1: not a demo \(KeyError\('turns'\)\)"):
        list(jsonl.read(path, lambda row: row["turns"], "a demo"))
