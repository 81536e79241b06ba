"""The durable tier's replica groups, as pure code (no I/O, no asyncio).

    group.py          which group holds a key (rendezvous hashing over group ids)
    state_machine.py  what replicas apply: KeyValueState plus the answer table that
                      makes retried requests apply once; snapshots
    wire.py           propose / read / answers between a group and its users
    core.py           one replica: RaftNode + state machine + who waits for what
    proposer.py       the groups' user side: leader finding, retries, honest outcomes

The process around ReplicaCore is backend/processes/replica.py (`taskring replica`).
"""

from backend.core.replica.core import ReplicaCore, Send
from backend.core.replica.group import check_group_id, check_groups, default_groups, group_for
from backend.core.replica.proposer import Done, GroupProposer
from backend.core.replica.state_machine import OpResult, Outcome, Proposal, ReplicaStateMachine

__all__ = [
    "Done",
    "GroupProposer",
    "OpResult",
    "Outcome",
    "Proposal",
    "ReplicaCore",
    "ReplicaStateMachine",
    "Send",
    "check_group_id",
    "check_groups",
    "default_groups",
    "group_for",
]
