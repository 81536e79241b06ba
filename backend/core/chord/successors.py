"""Successor lists: Zave's rule for building one from a successor's own list.

A position's list holds its next r live positions in ring order. Whenever it
hears from a successor s (on joining, in stabilize, or when a leaving successor
hands over), its new list is s followed by s's list minus the last entry
("s + butLast(s.succList)", Zave 2015, section 3). In a ring of at most r
positions the list runs all the way round and ends with the position itself;
it then stops there, so no entry appears twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from backend.core.chord.messages import Peer


def successor_list(
    me: Peer,
    first: Peer,
    rest: Iterable[Peer],
    length: int,
    usable: Callable[[Peer], bool] | None = None,
) -> list[Peer]:
    """`first`, then `rest` in order, cut at `length`, at `me`, or at a repeat."""
    result = [first]
    if first == me:
        return result
    for peer in rest:
        if len(result) >= length or peer in result:
            break
        if usable is not None and peer != me and not usable(peer):
            continue
        result.append(peer)
        if peer == me:
            break
    return result
