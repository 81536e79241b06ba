"""MQTT topic filters as NATS subjects, as NATS 2.9's MQTT gateway maps them, and what it cannot."""

from __future__ import annotations

import pytest

from backend.core.nats_subjects import UnsupportedTopic, filter_subjects, topic_subject


def test_levels_become_tokens_and_wildcards_become_nats_wildcards() -> None:
    assert filter_subjects("taskring/v1/ring/announce") == ("taskring.v1.ring.announce",)
    assert filter_subjects("taskring/v1/ring/host/+") == ("taskring.v1.ring.host.*",)
    assert filter_subjects("taskring/v1/raft/+/reply/cache-node-1/+") == (
        "taskring.v1.raft.*.reply.cache-node-1.*",
    )
    assert filter_subjects("a") == ("a",)


def test_a_final_hash_also_covers_its_parent_level() -> None:
    # MQTT's a/# matches `a` too; the gateway subscribes to both `a.>` and `a` for it.
    assert filter_subjects("taskring/v1/heartbeat/#") == (
        "taskring.v1.heartbeat.>",
        "taskring.v1.heartbeat",
    )
    assert filter_subjects("#") == (">",)


def test_characters_that_are_special_in_nats_subjects_are_other_characters_in_mqtt() -> None:
    for level in ("cache-node-a_b", "g-1", "x~y", "émile"):
        assert filter_subjects(f"t/{level}") == (f"t.{level}",)


@pytest.mark.parametrize(
    ("topic_filter", "reason"),
    [
        ("taskring/v1/ring/host/cache-node-a.b", "refuses topics with '.'"),
        ("taskring/v1/ring/host/with space", "refuses topics with '.' or whitespace"),
        ("taskring/v1/ring/host/tab\there", "whitespace"),
        ("taskring/v1/ring/host/*", "is a wildcard in NATS"),
        ("taskring/v1/ring/host/>", "is a wildcard in NATS"),
        ("taskring//v1", "empty topic levels"),
        ("/taskring", "empty topic levels"),
        ("taskring/", "empty topic levels"),
        ("taskring/#/x", "'#' must be the last level"),
        ("taskring/a+/x", "a wildcard must be a whole level"),
        ("taskring/a#", "a wildcard must be a whole level"),
    ],
)
def test_what_nats_cannot_carry_faithfully_is_refused_with_the_reason(
    topic_filter: str, reason: str
) -> None:
    with pytest.raises(UnsupportedTopic, match=reason) as refused:
        filter_subjects(topic_filter)
    assert repr(topic_filter) in str(refused.value)


def test_a_topic_to_publish_on_has_one_subject_and_no_wildcards() -> None:
    assert topic_subject("taskring/v1/sync/changes") == "taskring.v1.sync.changes"
    for topic in ("taskring/+/x", "taskring/#"):
        with pytest.raises(UnsupportedTopic, match="no wildcards"):
            topic_subject(topic)
