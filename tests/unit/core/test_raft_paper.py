"""The replication core against the sentences of the Raft paper that it implements.

Each test is named after, and quotes, the sentence it checks: from "In
Search of an Understandable Consensus Algorithm (Extended Version)" (Ongaro
& Ousterhout 2014), or, where marked, from Ongaro's dissertation "Consensus:
Bridging Theory and Practice" (2014).
"""

from __future__ import annotations

import random

import pytest

from backend.core.raft import (
    AppendEntries,
    AppendResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    NotLeader,
    ProposalDropped,
    RaftNode,
    RequestVote,
    Role,
    Snapshot,
    TimeoutNow,
    VoteResponse,
    bootstrap_state,
)
from backend.core.raft.log import LogCorruptedError
from tests.unit.core.raft_harness import Net, all_of, drain, new_node, options, state_with, tick


def log_terms(node: RaftNode) -> list[int | None]:
    return [node.log.term(i) for i in range(node.log.first_index, node.last_index + 1)]


def make_leader(node: RaftNode) -> None:
    """Win an election with forged votes from every other voter."""
    node.campaign()
    for message in drain(node)[0]:
        if isinstance(message, RequestVote):
            node.step(VoteResponse(message.dst, node.id, message.term, True, message.pre_vote))
    if node.role is Role.CANDIDATE and node.options.pre_vote:
        for message in drain(node)[0]:
            node.step(VoteResponse(message.dst, node.id, message.term, True))
    assert node.is_leader
    drain(node)


# ---- §5.1 Raft basics ----------------------------------------------------------


def test_when_servers_start_up_they_begin_as_followers() -> None:
    """ "When servers start up, they begin as followers." (§5.2)"""
    node = new_node(1)
    assert node.role is Role.FOLLOWER
    assert node.leader is None


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_a_server_with_a_smaller_current_term_updates_it_to_the_larger_value(role: Role) -> None:
    """ "Current terms are exchanged whenever servers communicate; if one server's current term
    is smaller than the other's, then it updates its current term to the larger value. If a
    candidate or leader discovers that its term is out of date, it immediately reverts to
    follower state." (§5.1)"""
    node = new_node(1)
    if role is Role.CANDIDATE:
        node.campaign()
    elif role is Role.LEADER:
        make_leader(node)
    assert node.role is role
    node.step(AppendEntries(2, 1, 9, 0, 0, (), 0))
    assert (node.term, node.role, node.leader) == (9, Role.FOLLOWER, 2)


@pytest.mark.parametrize("pre_vote", [False, True])
def test_if_a_server_receives_a_request_with_a_stale_term_number_it_rejects_it(
    pre_vote: bool,
) -> None:
    """ "If a server receives a request with a stale term number, it rejects the request." (§5.1)"""
    node = new_node(1, state=state_with([1, 2, 3], [2, 2], term=3), pre_vote=pre_vote)
    before = log_terms(node)
    node.step(AppendEntries(2, 1, 2, 3, 2, (Entry(4, 2, b"x"),), 3))
    node.step(RequestVote(2, 1, 2, 10, 2))
    messages, _, _ = drain(node)
    assert log_terms(node) == before
    assert node.vote is None and node.leader is None and node.commit_index == 1
    # the stale candidate always hears the newer term; a stale leader does too with pre-vote
    # (without it, etcd's behaviour: the next election tells it)
    expected = [(AppendResponse, 3)] if pre_vote else []
    assert [(type(m), m.term) for m in messages] == [*expected, (VoteResponse, 3)]
    assert not all_of(VoteResponse, messages[-1:])[0].granted


def test_a_vote_request_with_a_stale_term_is_answered_with_the_current_term() -> None:
    """RequestVote RPC, Results: "term: currentTerm, for candidate to update itself"
    (Figure 2). The simulator found why it matters (seed 15527): a candidate that only this
    server can elect, campaigning below this server's term, otherwise never catches up."""
    node = new_node(3, state=state_with([3, 4], [], term=29))
    node.step(RequestVote(4, 3, 27, 73, 4))
    assert drain(node)[0] == [VoteResponse(3, 4, 29, False)]
    candidate = new_node(4, state=state_with([3, 4], [4, 4], term=26))
    candidate.campaign()
    candidate.step(VoteResponse(3, 4, 29, False))
    assert (candidate.term, candidate.role) == (29, Role.FOLLOWER)


# ---- §5.2 Leader election ----------------------------------------------------------


def test_leaders_send_periodic_heartbeats_to_all_followers_to_maintain_their_authority() -> None:
    """ "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries) to all
    followers in order to maintain their authority." (§5.2; here a Heartbeat message)"""
    node = new_node(1, heartbeat_ticks=2)
    make_leader(node)
    node.tick()
    assert drain(node)[0] == []
    node.tick()
    beats = drain(node)[0]
    assert sorted((type(m), m.dst) for m in beats) == [(Heartbeat, 2), (Heartbeat, 3)]
    assert all(m.term == node.term for m in beats)


def test_if_a_follower_receives_no_communication_it_begins_an_election() -> None:
    """ "If a follower receives no communication over a period of time called the election
    timeout, then it assumes there is no viable leader and begins an election to choose a new
    leader. To begin an election, a follower increments its current term and transitions to
    candidate state. It then votes for itself and issues RequestVote RPCs in parallel to each
    of the other servers in the cluster." (§5.2)"""
    node = new_node(1, state=state_with([1, 2, 3], [2, 2], term=2))
    tick(node, 2 * node.options.election_ticks)
    assert node.role is Role.CANDIDATE
    assert (node.term, node.vote) == (3, 1)
    votes = drain(node)[0]
    assert sorted(m.dst for m in votes) == [2, 3]
    assert all(m == RequestVote(1, m.dst, 3, 3, 2) for m in votes)


def test_a_follower_that_hears_from_its_leader_does_not_start_an_election() -> None:
    """ "A server remains in follower state as long as it receives valid RPCs from a leader or
    candidate." (§5.2)"""
    node = new_node(1)
    for _ in range(10 * node.options.election_ticks):
        node.tick()
        node.step(Heartbeat(2, 1, 1, 1))
    assert node.role is Role.FOLLOWER and node.leader == 2


@pytest.mark.parametrize(
    ("size", "granted", "role"),
    [
        (1, set(), Role.LEADER),
        (3, {2}, Role.LEADER),
        (3, set(), Role.CANDIDATE),
        (5, {2}, Role.CANDIDATE),
        (5, {2, 3}, Role.LEADER),
        (5, {2, 3, 4, 5}, Role.LEADER),
    ],
)
def test_a_candidate_wins_an_election_if_it_receives_votes_from_a_majority(
    size: int, granted: set[int], role: Role
) -> None:
    """ "A candidate wins an election if it receives votes from a majority of the servers in the
    full cluster for the same term." (§5.2)"""
    node = new_node(1, range(1, size + 1))
    node.campaign()
    drain(node)
    for voter in sorted(granted):
        node.step(VoteResponse(voter, 1, node.term, True))
    assert node.role is role


def test_a_candidate_that_a_majority_rejects_returns_to_follower() -> None:
    """ "...the candidate ... loses the election" once a majority has voted for others; it then
    waits as a follower instead of holding out for votes that cannot come. (§5.2)"""
    node = new_node(1, range(1, 6))
    node.campaign()
    for voter in (2, 3, 4):
        node.step(VoteResponse(voter, 1, node.term, False))
    assert node.role is Role.FOLLOWER


def test_each_server_votes_for_at_most_one_candidate_in_a_given_term() -> None:
    """ "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis." (§5.2)"""
    node = new_node(1)
    node.step(RequestVote(2, 1, 2, 1, 1))
    node.step(RequestVote(3, 1, 2, 1, 1))
    node.step(RequestVote(2, 1, 2, 1, 1))  # a repeated request gets the same answer
    answers = [(m.dst, m.granted) for m in all_of(VoteResponse, drain(node)[0])]
    assert answers == [(2, True), (3, False), (2, True)]
    assert node.vote == 2


def test_a_candidate_that_hears_from_a_legitimate_leader_returns_to_follower() -> None:
    """ "While waiting for votes, a candidate may receive an AppendEntries RPC from another server
    claiming to be leader. If the leader's term (included in its RPC) is at least as large as
    the candidate's current term, then the candidate recognizes the leader as legitimate and
    returns to follower state." (§5.2)"""
    node = new_node(1)
    node.campaign()
    term = node.term
    node.step(AppendEntries(2, 1, term, 1, 1, (), 1))
    assert (node.role, node.term, node.leader) == (Role.FOLLOWER, term, 2)


def test_a_candidate_rejects_an_rpc_from_a_leader_with_a_smaller_term() -> None:
    """ "If the term in the RPC is smaller than the candidate's current term, then the candidate
    rejects the RPC and continues in candidate state." (§5.2)"""
    node = new_node(1)
    node.campaign()
    node.step(AppendEntries(2, 1, node.term - 1, 1, 1, (), 1))
    assert node.role is Role.CANDIDATE


def test_a_candidate_that_neither_wins_nor_loses_times_out_and_starts_a_new_election() -> None:
    """ "When this happens, each candidate will time out and start a new election by
    incrementing its term and initiating another round of RequestVote RPCs." (§5.2)"""
    node = new_node(1)
    node.campaign()
    drain(node)
    tick(node, 2 * node.options.election_ticks)
    assert node.role is Role.CANDIDATE and node.term == 3
    assert sorted(m.dst for m in drain(node)[0] if isinstance(m, RequestVote)) == [2, 3]


def test_election_timeouts_are_chosen_randomly_from_a_fixed_interval() -> None:
    """ "Raft uses randomized election timeouts to ensure that split votes are rare ... election
    timeouts are chosen randomly from a fixed interval (e.g., 150-300ms)." (§5.2)"""
    ticks = options().election_ticks
    seen = set()
    for seed in range(200):
        node = RaftNode(1, bootstrap_state([1, 2, 3]), random.Random(seed), options())
        elapsed = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            elapsed += 1
        seen.add(elapsed)
    assert seen == set(range(ticks, 2 * ticks))


def test_a_split_vote_is_resolved_by_randomized_timeouts() -> None:
    """ "...in most cases only a single server will time out; it wins the election and sends
    heartbeats before any other servers time out." (§5.2)"""
    for seed in range(20):
        net = Net.of(5, seed=seed)
        for _ in range(100):
            net.tick_all()
            if net.leader():
                break
        leader = net.leader()
        assert leader is not None, f"seed {seed}: no leader"
        assert all(n.leader == leader.id for n in net.nodes.values())


# ---- §5.3 Log replication --------------------------------------------------------------


def test_the_leader_appends_the_command_and_issues_append_entries_in_parallel() -> None:
    """ "The leader appends the command to its log as a new entry, then issues AppendEntries RPCs
    in parallel to each of the other servers to replicate the entry." (§5.3)"""
    net = Net.of(3)
    leader = net.elect(1)
    index = leader.propose(b"x")
    assert leader.log.entry(index) == Entry(index, leader.term, b"x")
    sends = [m for m in drain(leader)[0] if isinstance(m, AppendEntries)]
    assert sorted(m.dst for m in sends) == [2, 3]
    assert all(m.entries == (Entry(index, leader.term, b"x"),) for m in sends)


def test_many_proposals_between_readys_travel_in_one_message_per_follower() -> None:
    """Batching: commands proposed before the next Ready share one AppendEntries per follower
    and one persistence step ("the leader ... can batch" entries, §10.2.2 of the dissertation)."""
    net = Net.of(3)
    leader = net.elect(1)
    first = leader.propose(b"a")
    for value in (b"b", b"c", b"d"):
        leader.propose(value)
    ready = leader.ready()
    assert [e.index for e in ready.entries] == list(range(first, first + 4))
    sends = [m for m in ready.messages if isinstance(m, AppendEntries)]
    assert sorted(m.dst for m in sends) == [2, 3]
    assert all(len(m.entries) == 4 for m in sends)
    leader.advance(ready)


def test_a_log_entry_is_committed_once_the_leader_has_replicated_it_on_a_majority() -> None:
    """ "A log entry is committed once the leader that created the entry has replicated it on a
    majority of the servers." (§5.3)"""
    leader = new_node(1, range(1, 6))
    make_leader(leader)
    index = leader.propose(b"x")
    drain(leader)
    leader.step(AppendResponse(2, 1, leader.term, index))
    assert leader.commit_index < index  # leader + 1 of 5
    leader.step(AppendResponse(3, 1, leader.term, index))
    assert leader.commit_index == index


def test_committing_an_entry_also_commits_all_preceding_entries() -> None:
    """ "This also commits all preceding entries in the leader's log, including entries created
    by previous leaders." (§5.3)"""
    leader = new_node(1, state=state_with([1, 2, 3], [2, 2, 3], term=3))
    make_leader(leader)
    noop = leader.last_index
    leader.step(AppendResponse(2, 1, leader.term, noop))
    assert leader.commit_index == noop
    _, applied, _ = drain(leader)
    # entry 1 was committed before; entries 2-4 of terms 2 and 3 commit with the no-op
    assert [(e.index, e.term) for e in applied] == [(2, 2), (3, 2), (4, 3), (noop, leader.term)]


def test_once_a_follower_learns_an_entry_is_committed_it_applies_it_in_log_order() -> None:
    """ "The leader keeps track of the highest index it knows to be committed, and it includes
    that index in future AppendEntries RPCs (including heartbeats) so that the other servers
    eventually find out. Once a follower learns that a log entry is committed, it applies the
    entry to its local state machine (in log order)." (§5.3)"""
    net = Net.of(3)
    leader = net.elect(1)
    for value in (b"a", b"b", b"c"):
        leader.propose(value)
    net.flush()
    net.tick_all()  # a heartbeat carries the final commit index
    for node_id in (1, 2, 3):
        assert net.data_applied(node_id) == [b"a", b"b", b"c"]
        indexes = [e.index for e in net.applied[node_id]]
        assert indexes == list(range(1, len(indexes) + 1))


def test_a_follower_refuses_new_entries_if_it_lacks_the_preceding_entry() -> None:
    """ "If the follower does not find an entry in its log with the same index and term, then
    it refuses the new entries." (§5.3)"""
    node = new_node(2, state=state_with([1, 2, 3], [2, 2], term=3, commit=1))
    node.step(AppendEntries(1, 2, 3, 3, 3, (Entry(4, 3, b"x"),), 3))  # wrong term at 3
    node.step(AppendEntries(1, 2, 3, 9, 3, (Entry(10, 3, b"x"),), 3))  # nothing at 9
    answers = all_of(AppendResponse, drain(node)[0])
    assert [(m.reject, m.index) for m in answers] == [(True, 3), (True, 9)]
    assert log_terms(node) == [1, 2, 2]
    assert node.commit_index == 1
    # the hints point at the last entry whose term is at most the leader's at that index
    assert [(m.hint_index, m.hint_term) for m in answers] == [(3, 2), (3, 2)]


FIGURE_7_LEADER = [1, 1, 4, 4, 5, 5, 6, 6, 6]  # after the shared entry at index 1, term 1
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 4],
    "c": [1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 4, 4, 4, 4],
    "f": [1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE_7_FOLLOWERS))
def test_the_leader_forces_followers_logs_to_duplicate_its_own(case: str) -> None:
    """ "In Raft, the leader handles inconsistencies by forcing the followers' logs to duplicate
    its own. This means that conflicting entries in follower logs will be overwritten with
    entries from the leader's log." ... "the leader must find the latest log entry where the two
    logs agree, delete any entries in the follower's log after that point, and send the follower
    all of the leader's entries after that point." (§5.3, Figure 7)"""
    leader = new_node(1, state=state_with([1, 2, 3], FIGURE_7_LEADER, term=8))
    follower = new_node(2, state=state_with([1, 2, 3], FIGURE_7_FOLLOWERS[case], term=8))
    voter = new_node(3, state=state_with([1, 2, 3], [], term=8))
    net = Net([leader, follower, voter])
    leader_log = [leader.log.entry(i) for i in range(1, leader.last_index + 1)]
    net.elect(1)
    net.tick_all(3)
    assert [follower.log.entry(i) for i in range(1, follower.last_index + 1)] == [
        leader.log.entry(i) for i in range(1, leader.last_index + 1)
    ]
    # "a leader never overwrites or deletes entries in its own log; it only appends" (§5.3)
    assert [leader.log.entry(i) for i in range(1, len(leader_log) + 1)] == leader_log


def test_when_a_leader_comes_to_power_next_index_is_just_after_its_last_entry() -> None:
    """ "When a leader first comes to power, it initializes all nextIndex values to the index
    just after the last one in its log." (§5.3)"""
    node = new_node(1, state=state_with([1, 2, 3], [2, 2, 2, 2], term=2))
    last = node.last_index
    node.campaign()
    drain(node)
    node.step(VoteResponse(2, 1, node.term, True))
    probes = [m for m in drain(node)[0] if isinstance(m, AppendEntries)]
    assert sorted(m.dst for m in probes) == [2, 3]
    assert all(m.prev_index == last and m.entries[0].index == last + 1 for m in probes)


def test_after_a_rejection_the_leader_decrements_next_index_and_retries() -> None:
    """ "After a rejection, the leader decrements nextIndex and retries the AppendEntries RPC.
    Eventually nextIndex will reach a point where the leader and follower logs match." (§5.3)"""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolate(3)
    for n in range(20):
        leader.propose(f"v{n}".encode())
        net.flush()
    net.heal()
    net.tick_all(3)
    assert net.nodes[3].last_index == leader.last_index
    rejections = [m for m in net.sent if isinstance(m, AppendResponse) and m.reject]
    assert rejections, "node 3 first refused entries it had no predecessor for"


def test_append_entries_is_idempotent() -> None:
    """ "If a follower receives an AppendEntries request that includes log entries already
    present in its log, it ignores those entries in the new request." (§5.5; Raft RPCs are
    idempotent, so MQTT's at-least-once delivery is harmless)"""
    node = new_node(2)
    request = AppendEntries(1, 2, 2, 1, 1, (Entry(2, 2, b"a"), Entry(3, 2, b"b")), 1)
    node.step(request)
    shorter = AppendEntries(1, 2, 2, 1, 1, (Entry(2, 2, b"a"),), 1)
    node.step(shorter)  # a late, shorter copy must not truncate
    node.step(request)
    assert log_terms(node) == [1, 2, 2]
    answers = [m.index for m in all_of(AppendResponse, drain(node)[0])]
    assert answers == [3, 2, 3]


def test_a_follower_never_truncates_committed_entries() -> None:
    """State Machine Safety rests on it: "if a server has applied a log entry at a given index
    to its state machine, no other server will ever apply a different log entry for the same
    index" (§5.4.3). A message that would do so is a broken invariant, not input to obey."""
    node = new_node(2, state=state_with([1, 2, 3], [2, 2], term=2, commit=3))
    with pytest.raises(LogCorruptedError):
        node.log.maybe_append(2, 2, 3, [Entry(3, 3, b"x")])


# ---- §5.4 Safety --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (3, 2, True),  # the same log
        (4, 2, True),  # longer, same last term
        (2, 2, False),  # shorter, same last term
        (2, 3, True),  # later last term wins even if shorter
        (9, 1, False),  # earlier last term loses even if longer
    ],
)
def test_the_voter_denies_its_vote_if_its_own_log_is_more_up_to_date(
    last_index: int, last_term: int, granted: bool
) -> None:
    """ "the voter denies its vote if its own log is more up-to-date than that of the candidate."
    ... "If the logs have last entries with different terms, then the log with the later term
    is more up-to-date. If the logs end with the same term, then whichever log is longer is
    more up-to-date." (§5.4.1)"""
    node = new_node(1, state=state_with([1, 2, 3], [2, 2], term=2))
    node.step(RequestVote(2, 1, 3, last_index, last_term))
    [answer] = all_of(VoteResponse, drain(node)[0])
    assert answer.granted is granted


def test_raft_never_commits_entries_from_previous_terms_by_counting_replicas() -> None:
    """ "Raft never commits log entries from previous terms by counting replicas. Only log
    entries from the leader's current term are committed by counting replicas; once an entry
    from the current term has been committed in this way, then all prior entries are committed
    indirectly because of the Log Matching Property." (§5.4.2, Figure 8)"""
    leader = new_node(1, state=state_with([1, 2, 3], [2], term=3))
    make_leader(leader)
    old, noop = 2, leader.last_index
    leader.step(AppendResponse(2, 1, leader.term, old))
    assert leader.commit_index == 1  # entry 2 (term 2) is on a majority but not committed
    leader.step(AppendResponse(2, 1, leader.term, noop))
    assert leader.commit_index == noop


# ---- §5.5 and §7 -------------------------------------------------------------------------


def test_raft_handles_follower_crashes_by_retrying_indefinitely() -> None:
    """ "If a follower or candidate crashes, then future RequestVote and AppendEntries RPCs sent
    to it will fail. Raft handles these failures by retrying indefinitely; if the crashed server
    restarts, then the RPC will complete successfully." (§5.5)"""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolate(2)
    leader.propose(b"while 2 was down")
    net.flush()
    net.tick_all(5)
    net.heal()
    net.tick_all(2)
    assert net.data_applied(2) == [b"while 2 was down"]


def test_the_leader_sends_snapshots_to_followers_that_lag_behind() -> None:
    """ "the leader must occasionally send snapshots to followers that lag behind. This happens
    when the leader has already discarded the next log entry that it needs to send to a
    follower." (§7)"""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolate(3)
    for n in range(10):
        leader.propose(f"v{n}".encode())
    net.flush()
    snapshot = leader.compact(leader.applied_index, b"state-at-%d" % leader.applied_index)
    assert leader.log.first_index == snapshot.index + 1
    net.heal()
    net.tick_all(3)
    sent = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.dst == 3]
    assert [m.snapshot for m in sent] == [snapshot]
    assert net.snapshots[3] == snapshot
    follower = net.nodes[3]
    assert follower.applied_index == leader.commit_index
    assert follower.config == leader.config


def test_a_snapshot_whose_bytes_are_on_disk_is_sent_once_the_application_hands_them_over() -> None:
    """A snapshot taken in the background compacts the log without its bytes; a follower
    that lags behind it gets it once the application has read them back (etcd's raft:
    ErrSnapshotTemporarilyUnavailable, then a retry)."""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolate(3)
    for n in range(10):
        leader.propose(f"v{n}".encode())
    net.flush()
    older = leader.applied_index - 4  # the state as of a moment ago: entries after it stay
    snapshot = leader.compact(older, None)
    assert (leader.log.first_index, leader.last_index) == (older + 1, older + 4)
    assert leader.snapshot_wanted is None  # nobody needs it yet
    net.heal()
    net.tick_all(3)
    assert not [m for m in net.sent if isinstance(m, InstallSnapshot)]  # never without bytes
    assert leader.snapshot_wanted == older
    leader.snapshot_data(Snapshot(older - 1, snapshot.term, snapshot.config, b"stale"))
    assert leader.snapshot_wanted == older  # not the current snapshot: ignored
    full = Snapshot(older, snapshot.term, snapshot.config, b"state-at-%d" % older)
    leader.snapshot_data(full)
    assert leader.snapshot_wanted is None
    net.flush()
    net.tick_all(3)
    sent = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.dst == 3]
    assert [m.snapshot for m in sent] == [full]
    follower = net.nodes[3]
    assert follower.applied_index == leader.commit_index
    assert follower.log.snapshot == full


def test_a_follower_given_a_snapshot_with_new_information_discards_its_entire_log() -> None:
    """ "Usually the snapshot will contain new information not already in the recipient's log.
    In this case, the follower discards its entire log; it is all superseded by the snapshot and
    may possibly have uncommitted entries that conflict with the snapshot." (§7)"""
    node = new_node(2, state=state_with([1, 2, 3], [2, 2], term=3))
    snapshot = Snapshot(5, 3, node.config, b"state")
    node.step(InstallSnapshot(1, 2, 3, snapshot))
    assert (node.log.first_index, node.last_index, node.commit_index) == (6, 5, 5)
    ready = node.ready()
    assert ready.snapshot == snapshot and ready.must_sync
    assert [(m.index, m.reject) for m in all_of(AppendResponse, ready.messages)] == [(5, False)]
    node.advance(ready)
    assert node.applied_index == 5


def test_a_snapshot_of_a_prefix_of_the_log_keeps_the_entries_that_follow() -> None:
    """ "If instead the follower receives a snapshot that describes a prefix of its log (due to
    retransmission or by mistake), then log entries covered by the snapshot are deleted but
    entries following the snapshot are still valid and must be retained." (§7)"""
    node = new_node(2, state=state_with([1, 2, 3], [2, 2, 2, 2], term=2))
    node.step(InstallSnapshot(1, 2, 2, Snapshot(3, 2, node.config, b"state")))
    assert node.last_index == 5 and node.commit_index == 3
    ready = node.ready()
    assert ready.snapshot is None
    node.advance(ready)


def test_each_server_takes_snapshots_independently_covering_committed_entries() -> None:
    """ "Each server takes snapshots independently, covering just the committed entries in its
    log." (§7)"""
    net = Net.of(3)
    leader = net.elect(1)
    for n in range(4):
        leader.propose(f"v{n}".encode())
    net.flush()
    follower = net.nodes[2]
    with pytest.raises(ValueError, match="applied"):
        follower.compact(follower.last_index + 1, b"")
    snapshot = follower.compact(follower.applied_index, b"mine")
    assert snapshot.index == follower.applied_index and leader.log.first_index == 1


# ---- §8 Client interaction ------------------------------------------------------------------


def test_each_leader_commits_a_blank_no_op_entry_at_the_start_of_its_term() -> None:
    """ "Raft handles this by having each leader commit a blank no-op entry into the log at the
    start of its term." (§8)"""
    net = Net.of(3)
    leader = net.elect(2)
    noop = leader.log.entry(leader.last_index)
    assert (noop.term, noop.data, noop.config) == (leader.term, b"", None)
    assert leader.commit_index == noop.index


def test_a_leader_must_check_whether_it_has_been_deposed_before_a_read() -> None:
    """ "a leader must check whether it has been deposed before processing a read-only request
    (its information may be stale if a more recent leader has been elected). Raft handles this
    by having the leader exchange heartbeat messages with a majority of the cluster before
    responding to read-only requests." (§8; the ReadIndex protocol of dissertation §6.4)"""
    net = Net.of(3)
    leader = net.elect(1)
    leader.propose(b"x")
    net.flush()
    leader.read_index(b"read-1")
    ready = leader.ready()
    assert ready.read_states == ()  # not before a majority answers a heartbeat
    assert sorted(m.dst for m in ready.messages if isinstance(m, Heartbeat)) == [2, 3]
    leader.advance(ready)
    for message in ready.messages:
        net.nodes[message.dst].step(message)
    net.flush()
    assert [(r.index, r.ctx) for r in net.reads[1]] == [(leader.commit_index, b"read-1")]

    net.isolate(1)
    leader.read_index(b"read-2")
    net.flush()
    net.nodes[2].campaign()
    net.flush()
    assert [r.ctx for r in net.reads[1]] == [b"read-1"]  # a deposed leader never answers


def test_a_new_leader_answers_reads_only_after_committing_its_no_op() -> None:
    """ "First, a leader must have the latest information on which entries are committed ...
    at the start of its term, it may not know which those are." (§8)"""
    node = new_node(1, state=state_with([1, 2, 3], [2, 2], term=2))
    make_leader(node)
    node.read_index(b"early")
    assert not any(isinstance(m, Heartbeat) for m in drain(node)[0])
    node.step(AppendResponse(2, 1, node.term, node.last_index))
    messages, _, _ = drain(node)
    beats = [m for m in messages if isinstance(m, Heartbeat)]
    node.step(HeartbeatResponse(2, 1, node.term, beats[0].read_seq))
    assert [(r.index, r.ctx) for r in drain(node)[2]] == [(node.last_index, b"early")]


def test_followers_can_serve_reads_through_the_leaders_read_index() -> None:
    """Dissertation §6.4: "followers could also help offload the processing of read-only
    queries": a follower asks the leader for its read index."""
    net = Net.of(3)
    net.elect(1)
    net.nodes[1].propose(b"x")
    net.flush()
    net.nodes[3].read_index(b"from-3")
    net.flush()
    assert [(r.index, r.ctx) for r in net.reads[3]] == [(net.nodes[1].commit_index, b"from-3")]


def test_a_follower_without_a_leader_refuses_reads_and_proposals() -> None:
    node = new_node(1)
    with pytest.raises(NotLeader) as refused:
        node.read_index(b"r")
    assert refused.value.leader is None
    node.step(Heartbeat(2, 1, 1, 1))
    with pytest.raises(NotLeader) as refused:
        node.propose(b"x")
    assert refused.value.leader == 2


# ---- dissertation extensions: pre-vote, check-quorum, leases, transfer -------------------


def test_pre_vote_keeps_a_partitioned_server_from_inflating_its_term() -> None:
    """Dissertation §9.6: "a candidate would first ask other servers whether its log was
    up-to-date enough to get their vote. Only if the candidate believed it could get votes from
    a majority of the cluster would it increment its term and start a normal election." """
    for pre_vote, disrupts in ((True, False), (False, True)):
        net = Net.of(3, pre_vote=pre_vote)
        leader = net.elect(1)
        term = leader.term
        net.isolate(3)
        for _ in range(5 * leader.options.election_ticks):
            net.nodes[3].tick()
            net.flush()
        assert (net.nodes[3].term > term) is disrupts
        net.heal()
        net.tick_all(3 * leader.options.election_ticks)
        new_leader = net.leader()
        assert new_leader is not None and (new_leader.term > term) is disrupts


def test_check_quorum_makes_a_leader_without_a_majority_step_down() -> None:
    """Dissertation §6.2: "a leader ... steps down if an election timeout elapses without a
    successful round of heartbeats to a majority of its cluster." """
    net = Net.of(3, check_quorum=True)
    leader = net.elect(1)
    net.tick_all(leader.options.election_ticks)
    assert leader.is_leader
    net.isolate(1)
    net.tick_all(2 * leader.options.election_ticks)
    assert leader.role is Role.FOLLOWER


def test_a_server_that_heard_from_a_leader_recently_ignores_vote_requests() -> None:
    """Dissertation §4.2.3: "if a server receives a RequestVote request within the minimum
    election timeout of hearing from a current leader, it does not update its term or grant its
    vote." """
    node = new_node(2, check_quorum=True)
    node.step(Heartbeat(1, 2, 1, 1))
    node.step(RequestVote(3, 2, 5, 10, 4))
    assert (node.term, node.vote) == (1, None)
    assert drain(node)[0] == [HeartbeatResponse(2, 1, 1, 0)]
    tick(node, node.options.election_ticks)
    node.step(RequestVote(3, 2, 5, 10, 4))
    assert (node.term, node.vote) == (5, 3)


def test_leadership_transfer_hands_over_with_timeout_now() -> None:
    """Dissertation §3.10: "The prior leader sends a TimeoutNow request to the target server.
    This request has the same effect as the target server's election timer firing: the target
    server starts a new election (incrementing its term)." """
    net = Net.of(3, check_quorum=True, pre_vote=True)
    leader = net.elect(1)
    term = leader.term
    leader.transfer_leadership(2)
    with pytest.raises(ProposalDropped):
        leader.propose(b"during transfer")
    net.flush()
    assert any(isinstance(m, TimeoutNow) and m.dst == 2 for m in net.sent)
    assert net.nodes[2].is_leader and net.nodes[2].term == term + 1
    assert leader.role is Role.FOLLOWER


# ---- the Ready contract ---------------------------------------------------------------


def test_ready_must_be_advanced_before_the_next_and_messages_wait_for_persistence() -> None:
    """Entries and votes reach the disk before the messages that promise them leave."""
    node = new_node(1)
    node.step(RequestVote(2, 1, 2, 1, 1))
    ready = node.ready()
    assert ready.hard_state is not None and ready.hard_state.vote == 2 and ready.must_sync
    assert [type(m) for m in ready.messages] == [VoteResponse]
    assert not node.has_ready()
    with pytest.raises(RuntimeError):
        node.ready()
    node.advance(ready)
    with pytest.raises(RuntimeError):
        node.advance(ready)


def test_a_message_for_another_node_or_an_empty_proposal_is_refused() -> None:
    node = new_node(1)
    with pytest.raises(ValueError, match="delivered to node 1"):
        node.step(Heartbeat(2, 3, 1, 1))
    make_leader(node)
    with pytest.raises(ValueError):
        node.propose(b"")
