"""The Chord ring, pure: identifiers, successor lists, fingers, ring maintenance, routing.

No I/O and no clock: a ChordHost (one cache node, V virtual positions) takes
messages and ticks and returns messages to send and effects to act on. See
host.py for the caller's loop and outputs.py for what comes back.
"""

from __future__ import annotations

from backend.core.chord.config import ChordConfig
from backend.core.chord.host import ChordHost
from backend.core.chord.ids import (
    MASK,
    RING_BITS,
    RING_SIZE,
    between,
    between_right,
    distance,
    finger_start,
    format_position,
    owner_index,
    successor_list_length,
    vnode_position,
)
from backend.core.chord.messages import (
    Gone,
    LeaveToPredecessor,
    LeaveToSuccessor,
    Lookup,
    LookupAck,
    LookupReply,
    Message,
    Notify,
    Peer,
    Ping,
    Pong,
    StabilizeQuery,
    StabilizeReply,
    decode,
)
from backend.core.chord.node import IDLE, JOINING, LEFT, LOST, MEMBER, ChordNode
from backend.core.chord.outputs import (
    Dropped,
    Effect,
    Isolated,
    Joined,
    Output,
    Owned,
    RangeChanged,
    Send,
    hosts_visited,
)

__all__ = [
    "IDLE",
    "JOINING",
    "LEFT",
    "LOST",
    "MASK",
    "MEMBER",
    "RING_BITS",
    "RING_SIZE",
    "ChordConfig",
    "ChordHost",
    "ChordNode",
    "Dropped",
    "Effect",
    "Gone",
    "Isolated",
    "Joined",
    "LeaveToPredecessor",
    "LeaveToSuccessor",
    "Lookup",
    "LookupAck",
    "LookupReply",
    "Message",
    "Notify",
    "Output",
    "Owned",
    "Peer",
    "Ping",
    "Pong",
    "RangeChanged",
    "Send",
    "StabilizeQuery",
    "StabilizeReply",
    "between",
    "between_right",
    "decode",
    "distance",
    "finger_start",
    "format_position",
    "hosts_visited",
    "owner_index",
    "successor_list_length",
    "vnode_position",
]
