"""MQTT topic filters as the NATS subjects NATS's MQTT gateway turns them into.

NATS (2.9) serves MQTT clients by mapping each topic onto a NATS subject, and
checks a user's permissions against that subject: `/` becomes `.`, and in a
filter `+` becomes `*` and `#` becomes `>` (server/mqtt.go,
mqttToNATSSubjectConversion). So a permission list is the ACL's topic filters
put through the same mapping. The mapping cannot say everything a topic can:

- `.` is NATS's separator, so NATS 2.9 refuses any topic with a `.` (or a
  space) in it (2.10 maps `.` to `//`); a rule naming one could never be used,
  so it is refused here with the reason rather than written.
- A level that is exactly `*` or `>` is an ordinary character in MQTT but a
  wildcard in NATS: as a permission it would grant more than the rule says.
- Empty levels (`a//b`, a leading or trailing `/`) get an encoding of their own
  in the gateway; taskring's topics have none, so they are refused too.

In MQTT `a/#` also matches `a` itself, and the gateway subscribes to both
`a.>` and `a` for it, so such a filter yields both subjects.
"""

from __future__ import annotations

import re

MQTT_SEPARATOR = "/"
NATS_SEPARATOR = "."
MQTT_ONE_LEVEL, MQTT_ALL_LEVELS = "+", "#"
NATS_ONE_TOKEN, NATS_ALL_TOKENS = "*", ">"
# What NATS 2.9's gateway refuses in a topic, and what a subject token cannot hold.
_UNSUPPORTED = re.compile(r"[.\s]")


class UnsupportedTopic(ValueError):
    """An MQTT topic filter that has no faithful NATS subject."""


def filter_subjects(topic_filter: str) -> tuple[str, ...]:
    """The NATS subjects a permission needs to cover what `topic_filter` matches in MQTT.

    `taskring/v1/ring/host/+` -> (`taskring.v1.ring.host.*`,);
    `taskring/v1/heartbeat/#` -> (`taskring.v1.heartbeat.>`, `taskring.v1.heartbeat`).
    """
    levels = topic_filter.split(MQTT_SEPARATOR)
    tokens = [
        _token(level, topic_filter, last=index == len(levels) - 1)
        for index, level in enumerate(levels)
    ]
    subject = NATS_SEPARATOR.join(tokens)
    if tokens[-1] == NATS_ALL_TOKENS and len(tokens) > 1:
        return subject, NATS_SEPARATOR.join(tokens[:-1])
    return (subject,)


def _token(level: str, topic_filter: str, last: bool) -> str:
    if not level:
        raise UnsupportedTopic(f"{topic_filter!r}: empty topic levels are not supported on NATS")
    if _UNSUPPORTED.search(level):
        raise UnsupportedTopic(
            f"{topic_filter!r}: NATS 2.9's MQTT gateway refuses topics with '.' or whitespace;"
            " rename the component (ids may not contain '.' on NATS)"
        )
    if level in (NATS_ONE_TOKEN, NATS_ALL_TOKENS):
        raise UnsupportedTopic(f"{topic_filter!r}: the level {level!r} is a wildcard in NATS")
    if level == MQTT_ONE_LEVEL:
        return NATS_ONE_TOKEN
    if level == MQTT_ALL_LEVELS:
        if not last:
            raise UnsupportedTopic(f"{topic_filter!r}: '#' must be the last level")
        return NATS_ALL_TOKENS
    if MQTT_ONE_LEVEL in level or MQTT_ALL_LEVELS in level:
        raise UnsupportedTopic(f"{topic_filter!r}: a wildcard must be a whole level")
    return level


def topic_subject(topic: str) -> str:
    """The NATS subject a message published on `topic` (no wildcards) travels on."""
    if MQTT_ONE_LEVEL in topic or MQTT_ALL_LEVELS in topic:
        raise UnsupportedTopic(f"{topic!r}: a topic to publish on has no wildcards")
    return filter_subjects(topic)[0]
