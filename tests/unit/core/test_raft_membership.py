"""Membership changes, against the sentences of chapter 4 of Ongaro's dissertation.

"Consensus: Bridging Theory and Practice" (2014): single-server changes
(§4.1), catching up new servers as non-voting members (§4.2.1), removing the
leader (§4.2.2), disruptive servers (§4.2.3).
"""

from __future__ import annotations

import random

import pytest

from backend.core.raft import (
    AppendEntries,
    ConfChange,
    Config,
    ConfigChangeError,
    Entry,
    HardState,
    PersistentState,
    ProposalDropped,
    RaftNode,
    Role,
    TimeoutNow,
    VoteResponse,
)
from tests.unit.core.raft_harness import Net, drain, new_node, options, state_with


def empty_node(node_id: int, **overrides: object) -> RaftNode:
    """A server that has never been part of the group: it learns everything from the leader."""
    return RaftNode(node_id, PersistentState(), random.Random(node_id), options(**overrides))


def commit_change(net: Net, change: ConfChange) -> int:
    leader = net.leader()
    assert leader is not None
    index = leader.propose_config_change(change)
    net.flush()
    net.tick_all()
    assert leader.commit_index >= index
    return index


def test_a_server_always_uses_the_latest_configuration_in_its_log() -> None:
    """ "a server always uses the latest configuration in its log, regardless of whether the
    entry is committed." (§4.1) And so, when that entry is overwritten, the server "must fall
    back to the previous configuration in its log"."""
    node = new_node(2)
    proposed = Config.of([1, 2, 3, 4])
    node.step(AppendEntries(1, 2, 2, 1, 1, (Entry(2, 2, config=proposed),), 1))
    assert node.commit_index == 1
    assert node.config == proposed
    node.step(AppendEntries(3, 2, 3, 1, 1, (Entry(2, 3, b"other"),), 1))
    assert node.config == Config.of([1, 2, 3])


def test_the_leader_does_not_begin_a_change_until_the_previous_one_commits() -> None:
    """Single-server changes are safe only one at a time: "the leader ... [does not] begin
    another change until [the previous one] has been committed" (§4.1)."""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolate(2)
    net.isolate(3)
    leader.propose_config_change(ConfChange.add_learner(4))
    with pytest.raises(ProposalDropped, match="has not committed"):
        leader.propose_config_change(ConfChange.add_learner(5))


def test_a_new_leader_commits_an_entry_of_its_term_before_changing_membership() -> None:
    """The fix to the single-server change bug (Ongaro, raft-dev, July 2015): "a leader may not
    append a new configuration entry until it has committed an entry from its current term"."""
    node = new_node(1, state=state_with([1, 2, 3], [2], term=2, commit=1))
    node.campaign()
    drain(node)
    node.step(VoteResponse(2, 1, node.term, True))
    assert node.is_leader and node.commit_index < node.last_index
    with pytest.raises(ProposalDropped, match="not committed an entry in its term"):
        node.propose_config_change(ConfChange.add_learner(4))


def test_a_new_server_catches_up_as_a_learner_and_is_not_counted_in_majorities() -> None:
    """ "the new server joins the cluster as a non-voting member. The leader replicates log
    entries to it, but it is not yet counted toward majorities for the purpose of elections or
    commitment." (§4.2.1)"""
    net = Net.of(3)
    leader = net.elect(1)
    for n in range(5):
        leader.propose(f"v{n}".encode())
    net.flush()
    learner = empty_node(4)
    net.add(learner)
    commit_change(net, ConfChange.add_learner(4))
    net.tick_all(2)
    assert learner.last_index == leader.last_index
    assert net.data_applied(4) == net.data_applied(1)
    assert learner.config.learners == {4}
    # commitment needs a majority of the three voters, never the learner
    net.isolate(2)
    net.isolate(3)
    index = leader.propose(b"needs a voter")
    net.flush()
    assert learner.last_index == index and leader.commit_index < index
    # and a learner never stands for election
    for _ in range(10 * learner.options.election_ticks):
        learner.tick()
    assert learner.role is Role.FOLLOWER


def test_replacing_a_server_is_add_learner_then_promote_then_remove() -> None:
    """A replacement is three single-server steps, each safe on its own (§4.1, §4.2.1)."""
    net = Net.of(3)
    leader = net.elect(1)
    leader.propose(b"before")
    net.flush()
    net.add(empty_node(4))
    commit_change(net, ConfChange.add_learner(4))
    commit_change(net, ConfChange.add_voter(4))
    assert leader.config == Config.of([1, 2, 3, 4])
    commit_change(net, ConfChange.remove(3))
    assert leader.config == Config.of([1, 2, 4])
    del net.nodes[3]
    net.isolate(2)  # the majority of {1, 2, 4} now needs the new server
    index = leader.propose(b"after")
    net.flush()
    net.tick_all()
    assert leader.commit_index >= index
    assert net.data_applied(4) == [b"before", b"after"]


def test_adding_a_voter_grows_the_majority() -> None:
    """With four voters a majority is three (§4.1)."""
    net = Net.of(3)
    leader = net.elect(1)
    net.add(empty_node(4))
    commit_change(net, ConfChange.add_voter(4))
    net.isolate(3)
    net.isolate(4)
    index = leader.propose(b"x")
    net.flush()
    assert leader.commit_index < index  # leader + node 2 is not a majority of four
    net.heal()
    net.tick_all()
    assert leader.commit_index >= index


def test_a_removed_leader_steps_down_once_the_change_is_committed() -> None:
    """ "the leader steps down (returns to follower state) once the Cnew entry is committed" ...
    "the leader manages a cluster that does not include itself while it is committing Cnew; it
    replicates log entries but does not count itself in majorities." (§4.2.2)"""
    net = Net.of(3)
    leader = net.elect(1)
    index = leader.propose_config_change(ConfChange.remove(1))
    assert leader.is_leader and leader.commit_index < index
    net.flush()
    assert leader.role is Role.FOLLOWER
    assert any(isinstance(m, TimeoutNow) and m.src == 1 for m in net.sent)
    assert all(m.src != m.dst for m in net.sent)  # seed 33: it once told itself of the commit
    successor = net.leader()
    assert successor is not None and successor.id in (2, 3)
    assert successor.config == Config.of([2, 3])
    for _ in range(10 * leader.options.election_ticks):
        leader.tick()
    assert leader.role is Role.FOLLOWER  # not a member: it never campaigns


@pytest.mark.parametrize("pre_vote", [False, True])
def test_a_server_not_in_its_latest_configuration_still_starts_elections_until_committed(
    pre_vote: bool,
) -> None:
    """ "a server that is not part of its own latest configuration should still start new
    elections, as it might still be needed until the Cnew entry is committed ... It does not
    count its own vote in elections unless it is part of its latest configuration." (§4.2.2)

    The simulator found this (seed 56): a leader removed itself, crashed before the change
    committed, and the only up-to-date log was on the server that had left."""
    both = Config.of([2, 3])
    shared = [Entry(1, 1, config=both), Entry(2, 2, b"")]
    leaving = PersistentState(
        HardState(2, 3, 2), None, (*shared, Entry(3, 2, config=Config.of([2])))
    )
    staying = PersistentState(HardState(2, 3, 2), None, tuple(shared))
    rng = random.Random
    net = Net(
        [
            RaftNode(2, staying, rng(2), options(pre_vote=pre_vote)),
            RaftNode(3, leaving, rng(3), options(pre_vote=pre_vote)),
        ]
    )
    for _ in range(20 * net.nodes[2].options.election_ticks):
        net.tick_all()
        if net.nodes[2].is_leader:
            break
    assert net.nodes[2].is_leader
    assert net.nodes[2].config == Config.of([2])
    assert net.nodes[2].commit_index >= 3
    assert net.nodes[3].role is Role.FOLLOWER


def test_a_removed_server_that_knows_it_is_removed_never_campaigns() -> None:
    net = Net.of(3)
    net.elect(1)
    commit_change(net, ConfChange.remove(3))
    removed = net.nodes[3]
    assert 3 not in removed.config.members
    before = len(net.sent)
    for _ in range(10 * removed.options.election_ticks):
        removed.tick()
    net.flush()
    assert removed.role is Role.FOLLOWER
    assert [m for m in net.sent[before:] if m.src == 3] == []


@pytest.mark.parametrize(("check_quorum", "disrupted"), [(True, False), (False, True)])
def test_removed_servers_do_not_disrupt_the_cluster(check_quorum: bool, disrupted: bool) -> None:
    """ "if a server receives a RequestVote request within the minimum election timeout of
    hearing from a current leader, it does not update its term or grant its vote." (§4.2.3)
    A server removed before it heard of its removal keeps timing out; with the lease it cannot
    depose the leader of the remaining servers (without it, it can: the control case)."""
    net = Net.of(3, check_quorum=check_quorum)
    leader = net.elect(1)
    net.cut |= {(1, 3), (3, 1)}  # the leader cannot tell node 3; node 2 can still hear it
    commit_change(net, ConfChange.remove(3))
    assert net.nodes[3].config == Config.of([1, 2, 3])  # it never heard
    term = leader.term
    for _ in range(5 * leader.options.election_ticks):
        net.tick_all()
    assert (net.nodes[1].term != term or net.nodes[2].term != term) is disrupted
    if not disrupted:
        assert leader.is_leader


def test_demoting_a_voter_to_learner_removes_it_from_majorities() -> None:
    net = Net.of(3)
    leader = net.elect(1)
    commit_change(net, ConfChange.add_learner(3))
    assert leader.config == Config(frozenset({1, 2}), frozenset({3}))
    net.isolate(3)
    index = leader.propose(b"x")
    net.flush()
    assert leader.commit_index >= index  # {1, 2} is a majority of the two voters


def test_a_snapshot_carries_the_configuration_as_of_its_index() -> None:
    """A snapshot "includes ... the latest configuration as of the last included index" so a
    server restored from it knows the membership (§5 of the dissertation, Figure 5.1)."""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolate(3)
    net.add(empty_node(4))
    commit_change(net, ConfChange.add_learner(4))
    for n in range(3):
        leader.propose(f"v{n}".encode())
    net.flush()
    snapshot = leader.compact(leader.applied_index, b"state")
    assert snapshot.config == Config(frozenset({1, 2, 3}), frozenset({4}))
    net.heal()
    net.tick_all(3)
    assert net.snapshots[3].config == snapshot.config
    assert net.nodes[3].config == leader.config


@pytest.mark.parametrize(
    ("config", "change", "error"),
    [
        (Config.of([1, 2]), ConfChange.add_voter(2), "already a voter"),
        (Config.of([1], [2]), ConfChange.add_learner(2), "already a learner"),
        (Config.of([1, 2]), ConfChange.remove(3), "not a member"),
        (Config.of([1]), ConfChange.remove(1), "last voter"),
        (Config.of([1]), ConfChange.add_learner(1), "last voter"),
    ],
)
def test_changes_that_make_no_sense_are_refused(
    config: Config, change: ConfChange, error: str
) -> None:
    with pytest.raises(ConfigChangeError, match=error):
        config.apply(change)


def test_a_server_cannot_be_both_voter_and_learner() -> None:
    with pytest.raises(ConfigChangeError):
        Config.of([1, 2], [2])
