"""The replication core of the durable tier: Raft as a pure state machine (no I/O).

Feed it messages (`step`) and ticks (`tick`); take `Ready`s of entries to
persist, messages to send and entries to apply; call `advance`. See node.py
for the cycle and ready.py for the order of I/O. Storage lives in
backend.adapters.disk, transport in the replica process.
"""

from backend.core.raft.errors import NotLeader, ProposalDropped, RaftError
from backend.core.raft.log import LogCorruptedError, RaftLog
from backend.core.raft.membership import ChangeOp, ConfChange, Config, ConfigChangeError
from backend.core.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
    message_from_wire,
    message_to_wire,
)
from backend.core.raft.node import RaftNode, RaftOptions
from backend.core.raft.progress import Progress, ProgressState
from backend.core.raft.ready import ReadState, Ready
from backend.core.raft.state import (
    Entry,
    HardState,
    PersistentState,
    Role,
    Snapshot,
    SoftState,
    bootstrap_state,
)

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "ChangeOp",
    "ConfChange",
    "Config",
    "ConfigChangeError",
    "Entry",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "LogCorruptedError",
    "Message",
    "NotLeader",
    "PersistentState",
    "Progress",
    "ProgressState",
    "ProposalDropped",
    "RaftError",
    "RaftLog",
    "RaftNode",
    "RaftOptions",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "RequestVote",
    "Role",
    "Snapshot",
    "SoftState",
    "TimeoutNow",
    "VoteResponse",
    "bootstrap_state",
    "message_from_wire",
    "message_to_wire",
]
