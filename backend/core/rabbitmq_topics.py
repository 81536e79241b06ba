"""MQTT topic filters as the routing-key regular expressions RabbitMQ authorises with.

RabbitMQ's MQTT plugin (3.10) publishes every MQTT message to a topic exchange
(`amq.topic` unless `mqtt.exchange` says otherwise) with the topic as routing
key, `/` turned into `.`; a subscription binds the client's queue with the
filter as binding key, `+` turned into `*` (`#` stays `#`). Topic
authorisation then matches a user's "write" regular expression against the
routing key of each publish and its "read" one against the binding key of
each subscription. So a rule becomes an anchored regular expression that
accepts exactly the keys of the topics, and of the filters, the MQTT rule
covers:

- a literal level is itself, escaped;
- `+` is one level of anything but a `#`: a topic's name, or a subscriber's
  `*` (its own `+`), never its `#`, which would reach below the rule's level;
- a final `#` is "nothing more, or a `.` and anything", since MQTT's `a/#`
  also matches `a`.

What a routing key cannot say is refused with the reason, as for NATS
(backend/core/nats_subjects.py): a `.` in a level (it would be read as a
separator, so a rule could grant another topic), a level that is exactly `*`
or `#` (a wildcard in AMQP), and empty levels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MQTT_SEPARATOR = "/"
AMQP_SEPARATOR = "."
MQTT_ONE_LEVEL, MQTT_ALL_LEVELS = "+", "#"
AMQP_ONE_WORD, AMQP_ALL_WORDS = "*", "#"
ONE_LEVEL = r"[^.#]+"  # a topic's level, or a subscriber's `*`; never `#`
REST = r"(?:\..*)?"  # MQTT's final `#`: the parent level itself, or anything below it
# A regular expression no routing key matches: MQTT topics and filters are never empty.
# (An empty string would not do: RabbitMQ may read it as "no restriction".)
NOTHING = "^$"
_UNSUPPORTED = re.compile(r"[.\s]")


class UnsupportedTopic(ValueError):
    """An MQTT topic filter that has no faithful RabbitMQ routing-key expression."""


def filter_regex(topic_filter: str) -> str:
    """The unanchored regular expression for the routing and binding keys `topic_filter`
    covers: `taskring/v1/ring/host/+` -> `taskring\\.v1\\.ring\\.host\\.[^.#]+`."""
    levels = topic_filter.split(MQTT_SEPARATOR)
    parts: list[str] = []
    for index, level in enumerate(levels):
        last = index == len(levels) - 1
        if level == MQTT_ALL_LEVELS:
            if not last:
                raise UnsupportedTopic(f"{topic_filter!r}: '#' must be the last level")
            if not parts:
                return ".*"
            return r"\.".join(parts) + REST
        parts.append(_level(level, topic_filter))
    return r"\.".join(parts)


def _level(level: str, topic_filter: str) -> str:
    if not level:
        raise UnsupportedTopic(f"{topic_filter!r}: empty topic levels are not supported")
    if _UNSUPPORTED.search(level):
        raise UnsupportedTopic(
            f"{topic_filter!r}: RabbitMQ's routing keys use '.' as separator, so a level"
            " may hold no '.' or whitespace (component ids may not contain '.')"
        )
    if level in (AMQP_ONE_WORD, AMQP_ALL_WORDS):
        raise UnsupportedTopic(f"{topic_filter!r}: the level {level!r} is an AMQP wildcard")
    if level == MQTT_ONE_LEVEL:
        return ONE_LEVEL
    if MQTT_ONE_LEVEL in level or MQTT_ALL_LEVELS in level:
        raise UnsupportedTopic(f"{topic_filter!r}: a wildcard must be a whole level")
    return re.escape(level)


def filters_regex(topic_filters: Iterable[str]) -> str:
    """One anchored regular expression for all of `topic_filters`; NOTHING for none."""
    alternatives = list(dict.fromkeys(filter_regex(f) for f in topic_filters))
    if not alternatives:
        return NOTHING
    return "^(?:" + "|".join(alternatives) + ")$"


def routing_key(topic_or_filter: str) -> str:
    """The key RabbitMQ's MQTT plugin uses for a topic (publish) or filter (subscribe)."""
    levels = topic_or_filter.split(MQTT_SEPARATOR)
    words = [AMQP_ONE_WORD if level == MQTT_ONE_LEVEL else level for level in levels]
    return AMQP_SEPARATOR.join(words)
