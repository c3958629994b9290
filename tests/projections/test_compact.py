"""FalkorDB's compact replies, decoded as the views' reads need them. Pure; the replies
below are as redis-py hands them over (``tests/projections/test_falkordb_views.py``
reads every view through the real server)."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from stageline.projections.compact import UnexpectedValue, decode, rows


def test_every_scalar_list_and_map_a_view_returns_is_decoded() -> None:
    cell = [
        10,
        [
            b"id", [2, b"r\xc3\xa9"],
            b"n", [3, 7],
            b"f", [5, b"1.5"],
            b"ok", [4, b"true"],
            b"no", [4, b"false"],
            b"none", [1, None],
            b"stages", [6, [[2, b"a"], [2, b"b"]]],
            b"nested", [10, [b"k", [6, [[3, 1], [1, None]]]]],
        ],
    ]  # fmt: skip
    assert decode(cell) == {
        "id": "ré",
        "n": 7,
        "f": 1.5,
        "ok": True,
        "no": False,
        "none": None,
        "stages": ["a", "b"],
        "nested": {"k": [1, None]},
    }


def test_a_node_or_any_type_no_read_returns_is_refused_naming_it() -> None:
    with pytest.raises(UnexpectedValue, match="type 8"):
        decode([8, [1, [0], [[0, 2, b"x"]]]])


def test_rows_of_a_reply_and_of_one_without_rows() -> None:
    header = [[1, b"a"], [1, b"b"]]
    stats = [b"Cached execution: 1", b"Query internal execution time: 0.1 milliseconds"]
    assert rows([header, [[[3, 1], [2, b"x"]], [[1, None], [6, []]]], stats]) == [
        [1, "x"],
        [None, []],
    ]
    assert rows([header, [], stats]) == []
    assert rows([stats]) == []  # a query with no RETURN answers only its statistics


def test_an_error_the_query_met_as_it_ran_is_raised() -> None:
    error = ResponseError("Division by zero")
    with pytest.raises(ResponseError, match="Division by zero"):
        rows([[[1, b"a"]], [], error])
