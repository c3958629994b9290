"""The built-in memory-ingest stages are deterministic pure functions."""

from __future__ import annotations

import pytest

from stageline.actors.builtin.memory import (
    EntityMentioned,
    classify,
    extract,
    normalize,
    summarize,
)
from stageline.actors.stage import StageContext, StageError

CTX = StageContext("w", "r", "s", 1, {"max_words": 5})


def test_normalize_cleans_whitespace_and_control_characters() -> None:
    result = normalize({"text": "  Hello\x00\tworld \n\n again "}, CTX)
    assert result.output == {"text": "Hello world again"}
    assert result.metadata == {"chars": 17, "words": 3}


@pytest.mark.parametrize("text", ["", "   \n\t ", None, 42])
def test_normalize_rejects_empty_or_non_text_permanently(text: object) -> None:
    with pytest.raises(StageError) as err:
        normalize({"text": text}, CTX)
    assert err.value.permanent


@pytest.mark.parametrize(
    ("text", "memory_type"),
    [
        ("How do we deploy?", "question"),
        ("Need to call Bob", "task"),
        ("I prefer tea", "preference"),
        ("Met Carol yesterday", "event"),
        ("Redis is fast", "fact"),
        ("Carrots, onions", "note"),
    ],
)
def test_classify_rules(text: str, memory_type: str) -> None:
    assert classify({"text": text}, CTX).output == {"memory_type": memory_type}


def test_extract_prefers_longest_pattern_and_records_spans() -> None:
    text = "Grace Hopper visited New York with Bob"
    result = extract({"text": text}, CTX)
    mentions = [e for e in result.events if isinstance(e, EntityMentioned)]
    assert [(m.entity, m.entity_type) for m in mentions] == [
        ("Grace Hopper", "person"),
        ("New York", "place"),
        ("Bob", "person"),
    ]
    assert all(text[m.start : m.end] == m.surface for m in mentions)


def test_extract_matches_whole_words_only() -> None:
    assert extract({"text": "Bobby uses Pythonic idioms"}, CTX).events == []


def test_summarize_cuts_to_max_words() -> None:
    result = summarize({"text": "One two three four five six seven. Second sentence."}, CTX)
    assert result.output["summary"] == "One two three four five ..."
