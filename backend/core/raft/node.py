"""One Raft server as a pure state machine: messages and ticks in, a Ready of I/O out.

Raft with pre-vote, check-quorum, leadership transfer, ReadIndex and
single-server membership changes, modelled on etcd's raft library (the papers
and the role changes: docs/architecture.md, "Raft"). It does no I/O, reads no
clock, and draws election timeouts from an injected random.Random:

    node.step(message)      a message from a peer
    node.tick()             one unit of logical time (heartbeat and election timers)
    node.propose(data)      the leader appends a client command
    node.read_index(ctx)    ask for a linearizable read point
    if node.has_ready():
        ready = node.ready()        persist, send, apply (see ready.py)
        node.advance(ready)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from backend.core.raft.errors import NotLeader, ProposalDropped
from backend.core.raft.log import RaftLog
from backend.core.raft.membership import ConfChange, Config
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
)
from backend.core.raft.progress import Progress, ProgressState
from backend.core.raft.readonly import PendingRead, ReadIndexQueue
from backend.core.raft.ready import ReadState, Ready
from backend.core.raft.state import Entry, HardState, PersistentState, Role, Snapshot, SoftState
from backend.core.raft.wire import want_node_id

_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)


@dataclass(frozen=True, slots=True)
class RaftOptions:
    election_ticks: int = 10  # followers wait this many ticks (randomised up to 2x) for a leader
    heartbeat_ticks: int = 1  # the leader sends heartbeats this often
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 1  # unacknowledged AppendEntries per follower while replicating
    max_msg_bytes: int = 1 << 20  # entries per AppendEntries (at least one is always sent)
    max_apply_bytes: int = 16 << 20  # committed entries per Ready

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.max_inflight < 1 or self.max_msg_bytes < 1 or self.max_apply_bytes < 1:
            raise ValueError("flow-control limits must be positive")


class RaftNode:
    def __init__(
        self,
        node_id: int,
        state: PersistentState,
        rng: random.Random,
        options: RaftOptions | None = None,
    ) -> None:
        self.id = want_node_id(node_id, "node id")
        self.options = options or RaftOptions()
        self._rng = rng
        hard = state.hard_state
        self.log = RaftLog(state.snapshot or Snapshot.empty(), state.entries, hard.commit)
        self.term = hard.term
        self.vote = hard.vote
        self.role = Role.FOLLOWER
        self.leader: int | None = None
        self._messages: list[Message] = []
        self._read_states: list[ReadState] = []
        self._progress: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._transferee: int | None = None
        self._reads = ReadIndexQueue()
        self._reads_waiting_commit: list[tuple[bytes, int]] = []
        self._bcast_append = False
        self._bcast_heartbeat = False
        self._prev_hard = hard
        self._prev_soft = self.soft_state
        self._outstanding: Ready | None = None
        self._snapshot_wanted = False

    # ---- what the application may look at ------------------------------------

    @property
    def config(self) -> Config:
        return self.log.config()

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    @property
    def soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role, self.log.config())

    def progress(self) -> dict[int, Progress]:
        """The leader's view of each member (empty unless leader); for status pages."""
        return dict(self._progress)

    # ---- inputs ---------------------------------------------------------------

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, message: Message) -> None:
        """Feed one message from a peer. Late, repeated and reordered messages are harmless."""
        if message.dst != self.id:
            raise ValueError(f"message for node {message.dst} delivered to node {self.id}")
        if message.term > self.term:
            if not self._accept_higher_term(message):
                return
        elif message.term < self.term:
            self._answer_stale(message)
            return
        if isinstance(message, RequestVote):
            self._on_vote_request(message)
        elif self.role is Role.LEADER:
            self._step_leader(message)
        elif self.role is Role.FOLLOWER:
            self._step_follower(message)
        else:
            self._step_candidate(message)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index. It is ours if the entry committed at that
        index has the term this node had when proposing (`node.term`)."""
        if not isinstance(data, bytes) or not data:
            raise ValueError("a proposal must be non-empty bytes")
        self._check_can_propose()
        index = self.log.last_index + 1
        self._append_entries([Entry(index, self.term, data)])
        return index

    def propose_config_change(self, change: ConfChange) -> int:
        """Append a membership change (one voter at a time); returns its index."""
        self._check_can_propose()
        if self.log.last_config_index() > self.log.committed:
            raise ProposalDropped(
                f"the membership change at index {self.log.last_config_index()} "
                "has not committed yet"
            )
        if self.log.term(self.log.committed) != self.term:
            # the single-server change bug fix (raft-dev, 2015): a new leader must commit
            # an entry of its own term before it may change the configuration
            raise ProposalDropped("the leader has not committed an entry in its term yet")
        config = self.log.config().apply(change)
        index = self.log.last_index + 1
        self._append_entries([Entry(index, self.term, config=config)])
        return index

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; it arrives as a ReadState(index, ctx) in a Ready.

        Lost requests are not retried: the application times out and asks again.
        """
        if not isinstance(ctx, bytes):
            raise ValueError("a read context must be bytes")
        if self.role is Role.LEADER:
            self._on_read_request(ctx, self.id)
        elif self.leader is None:
            raise NotLeader(None)
        else:
            self._send(ReadIndexRequest(self.id, self.leader, self.term, ctx))

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to `target` once its log is up to date (dissertation §3.10)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id or target == self._transferee:
            return
        if target not in self.log.config().voters:
            raise ValueError(f"node {target} is not a voter")
        self._transferee = target
        self._election_elapsed = 0  # the transfer gets one election timeout to finish
        if self._progress[target].match == self.log.last_index:
            self._send(TimeoutNow(self.id, target, self.term))
        else:
            self._send_append(target, send_if_empty=True)

    def campaign(self) -> None:
        """Start an election now instead of waiting for the timeout."""
        if self.role is not Role.LEADER:
            self._campaign(pre_vote=self.options.pre_vote)

    def compact(self, index: int, data: bytes | None) -> Snapshot:
        """Replace the log through applied `index` by the application's snapshot `data`.

        Returns the snapshot; the application saves it, then may drop its log files
        up to it. Any applied index after the current snapshot will do, not only the
        latest (etcd's raft likewise compacts to any index <= applied). With `data`
        None the application keeps the bytes: when a follower needs the snapshot,
        `snapshot_wanted` names its index until `snapshot_data` hands them over.
        """
        snapshot = self.log.compact(index, data)
        self._snapshot_wanted = False
        return snapshot

    @property
    def snapshot_wanted(self) -> int | None:
        """The index of the snapshot whose bytes a follower is waiting for, if any."""
        if self._snapshot_wanted and not self.log.snapshot_loaded:
            return self.log.snapshot.index
        return None

    def snapshot_data(self, snapshot: Snapshot) -> None:
        """The bytes of the snapshot compacted without them; sent to whoever needs them.
        Ignored unless `snapshot` is the current one."""
        if not self.log.attach_data(snapshot):
            return
        self._snapshot_wanted = False
        if self.role is Role.LEADER:
            for peer in sorted(self._progress):
                behind = self.log.term(self._progress[peer].next - 1) is None
                if peer != self.id and behind:
                    self._send_append(peer, send_if_empty=True)

    # ---- outputs --------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        self._flush_broadcasts()
        return bool(
            self.soft_state != self._prev_soft
            or self.hard_state != self._prev_hard
            or self.log.unstable_from <= self.log.last_index
            or self.log.pending_snapshot is not None
            or self._messages
            or self._read_states
            or min(self.log.committed, self.log.stable_index) > self.log.applied
        )

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready before asking for another")
        self._flush_broadcasts()
        soft, hard = self.soft_state, self.hard_state
        entries = tuple(self.log.unstable_entries())
        snapshot = self.log.pending_snapshot
        ready = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=tuple(self.log.next_committed(self.options.max_apply_bytes)),
            messages=tuple(self._messages),
            read_states=tuple(self._read_states),
            must_sync=bool(entries)
            or snapshot is not None
            or (hard.term, hard.vote) != (self._prev_hard.term, self._prev_hard.vote),
        )
        self._messages, self._read_states = [], []
        self._prev_soft, self._prev_hard = soft, hard
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The application has persisted, sent and applied `ready`."""
        if ready is not self._outstanding:
            raise RuntimeError("advance() takes the Ready most recently returned by ready()")
        self._outstanding = None
        if ready.snapshot is not None:
            self.log.stable_snapshot_to(ready.snapshot.index)
            self.log.applied_to(ready.snapshot.index)
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
        if ready.committed_entries:
            self.log.applied_to(ready.committed_entries[-1].index)
        if self.role is Role.LEADER:
            self._on_leader_persisted()

    # ---- term rules (Figure 2, "All Servers") ---------------------------------

    def _accept_higher_term(self, message: Message) -> bool:
        if isinstance(message, RequestVote):
            if not message.transfer and self._in_lease():
                # dissertation §4.2.3: a server that hears from a leader within the minimum
                # election timeout ignores vote requests, so removed servers cannot disrupt
                return False
            if message.pre_vote:
                return True  # a pre-vote never changes our term
        if isinstance(message, VoteResponse) and message.pre_vote and message.granted:
            return True  # carries the term the candidate will campaign in, not a real term
        leader = message.src if isinstance(message, _FROM_LEADER) else None
        self._become_follower(message.term, leader)
        return True

    def _answer_stale(self, message: Message) -> None:
        if isinstance(message, AppendEntries | Heartbeat) and (
            self.options.check_quorum or self.options.pre_vote
        ):
            # tell a deposed leader the new term; with pre-vote or check-quorum it could
            # otherwise keep a partitioned higher-term server from ever rejoining
            self._send(AppendResponse(self.id, message.src, self.term, 0, reject=True))
        elif isinstance(message, RequestVote):
            # Figure 2, RequestVote results: "term: currentTerm, for candidate to update
            # itself". Without it a candidate that only we can elect may campaign below our
            # term for ever while we campaign elsewhere (found by the simulator, seed 15527)
            self._send(VoteResponse(self.id, message.src, self.term, False, message.pre_vote))

    def _in_lease(self) -> bool:
        return (
            self.options.check_quorum
            and self.leader is not None
            and self._election_elapsed < self.options.election_ticks
        )

    # ---- elections (§5.2, dissertation §9.6 pre-vote) -------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._timeout:
            self._election_elapsed = 0
            self._campaign(pre_vote=self.options.pre_vote)

    def _promotable(self) -> bool:
        if self.log.pending_snapshot is not None:
            return False
        return self.id in self.log.config().voters or self._needed_until_committed()

    def _needed_until_committed(self) -> bool:
        """Dissertation §4.2.2: "a server that is not part of its own latest configuration
        should still start new elections, as it might still be needed until the Cnew entry
        is committed" (it may hold the only up-to-date log). Its own vote does not count."""
        change = self.log.last_config_index()
        return change > self.log.committed and self.id in self.log.config_at(change - 1).voters

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        if not self._promotable():
            return
        if pre_vote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        config = self.log.config()
        self._votes = {self.id: True} if self.id in config.voters else {}
        if config.has_quorum(self._votes):
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return
        last_index, last_term = self.log.last_index, self.log.last_term
        for peer in sorted(config.voters - {self.id}):
            self._send(RequestVote(self.id, peer, term, last_index, last_term, pre_vote, transfer))

    def _on_vote_request(self, message: RequestVote) -> None:
        # Figure 2, RequestVote receiver: grant if votedFor is null or candidateId, and the
        # candidate's log is at least as up-to-date as ours (§5.4.1)
        can_vote = (
            self.vote == message.src
            or (self.vote is None and self.leader is None)
            or (message.pre_vote and message.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(message.last_index, message.last_term):
            self._send(VoteResponse(self.id, message.src, message.term, True, message.pre_vote))
            if not message.pre_vote:
                self.vote = message.src
                self._election_elapsed = 0
        else:
            self._send(VoteResponse(self.id, message.src, self.term, False, message.pre_vote))

    def _step_candidate(self, message: Message) -> None:
        if isinstance(message, _FROM_LEADER):
            # §5.2: "If the leader's term ... is at least as large as the candidate's current
            # term, then the candidate recognizes the leader as legitimate"
            self._become_follower(message.term, message.src)
            self._step_follower(message)
        elif isinstance(message, VoteResponse):
            self._on_vote_response(message)

    def _on_vote_response(self, message: VoteResponse) -> None:
        pre = self.role is Role.PRE_CANDIDATE
        if message.pre_vote != pre:
            return
        if pre and message.granted and message.term != self.term + 1:
            return
        config = self.log.config()
        if message.src not in config.voters or message.src in self._votes:
            return
        self._votes[message.src] = message.granted
        granted = sum(self._votes.values())
        rejected = len(self._votes) - granted
        if granted >= config.quorum:
            if pre:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
        elif rejected > len(config.voters) - config.quorum:
            self._become_follower(self.term, None)

    # ---- role changes -----------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes = {}
        self._transferee = None
        self._progress = {}
        self._reads.clear()
        self._reads_waiting_commit = []
        self._bcast_append = self._bcast_heartbeat = False

    def _random_timeout(self) -> int:
        ticks = self.options.election_ticks
        return self._rng.randrange(ticks, 2 * ticks)

    def _become_follower(self, term: int, leader: int | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {}
        self._timeout = self._random_timeout()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._sync_progress(newcomers_active=False)
        # §8: "each leader commit a blank no-op entry into the log at the start of its term"
        self._append_entries([Entry(self.log.last_index + 1, self.term)])

    def _sync_progress(self, newcomers_active: bool = True) -> None:
        """Track exactly the current members (the configuration takes effect on append).

        A server added by a membership change counts as active for one election
        timeout, so check-quorum does not depose the leader while it starts up.
        """
        members = self.log.config().members | self._leaving_members()
        for node in sorted(members - self._progress.keys()):
            progress = Progress(self.log.last_index + 1, self.options.max_inflight)
            if node == self.id:
                progress.match = self.log.stable_index
                progress.become_replicate()
            progress.recent_active = newcomers_active or node == self.id
            self._progress[node] = progress
        for node in self._progress.keys() - members:
            del self._progress[node]

    def _leaving_members(self) -> frozenset[int]:
        """Servers the uncommitted latest configuration removes: the leader keeps replicating
        to them until the change commits, so they learn they were removed (§4.2.2)."""
        change = self.log.last_config_index()
        if change <= self.log.committed:
            return frozenset()
        return self.log.config_at(change - 1).members - self.log.config().members

    def _release_removed(self) -> None:
        """The removal committed: once a removed server holds the change, tell it the commit
        index and forget it. One that stays silent is forgotten at the next quorum check."""
        config_index = self.log.last_config_index()
        for node in sorted(self._progress.keys() - self.log.config().members):
            progress = self._progress[node]
            if node == self.id:
                del self._progress[node]  # a leader that removed itself steps down next
            elif progress.match >= config_index:
                commit = min(progress.match, self.log.committed)
                self._send(Heartbeat(self.id, node, self.term, commit, self._reads.seq))
                del self._progress[node]

    def _removal_committed(self) -> bool:
        return self.log.last_config_index() <= self.log.committed and bool(
            self._progress.keys() - self.log.config().members
        )

    # ---- the leader ------------------------------------------------------------

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        self._tick_snapshots()
        if self._election_elapsed >= self.options.election_ticks:
            self._election_elapsed = 0
            if self.options.check_quorum and not self._check_quorum():
                return
            if self._removal_committed():
                self._sync_progress()  # removed servers that never answered are let go
            self._transferee = None  # a transfer that took a whole timeout has failed
        if self._heartbeat_elapsed >= self.options.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeats()

    def _check_quorum(self) -> bool:
        """Dissertation §6.2: step down if no majority was heard from in an election timeout."""
        active = [node for node, pr in self._progress.items() if pr.recent_active]
        if not self.log.config().has_quorum([*active, self.id]):
            self._become_follower(self.term, None)
            return False
        for node, progress in self._progress.items():
            if node != self.id:
                progress.recent_active = False
        return True

    def _tick_snapshots(self) -> None:
        for progress in self._progress.values():
            if progress.state is ProgressState.SNAPSHOT:
                progress.snapshot_ticks += 1
                if progress.snapshot_ticks >= 2 * self.options.election_ticks:
                    progress.snapshot_failed()

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee is not None:
            raise ProposalDropped(f"leadership is moving to node {self._transferee}")
        if self.id not in self.log.config().members:
            raise ProposalDropped("this node is being removed from the group")

    def _append_entries(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        if any(entry.config is not None for entry in entries):
            self._sync_progress()
        self._bcast_append = True

    def _step_leader(self, message: Message) -> None:
        if isinstance(message, AppendResponse):
            self._on_append_response(message)
        elif isinstance(message, HeartbeatResponse):
            self._on_heartbeat_response(message)
        elif isinstance(message, ReadIndexRequest):
            self._on_read_request(message.ctx, message.src)

    def _on_append_response(self, message: AppendResponse) -> None:
        progress = self._progress.get(message.src)
        if progress is None:
            return
        progress.recent_active = True
        if message.reject:
            self._on_append_rejected(progress, message)
            return
        moved = progress.maybe_update(message.index)
        if not moved and not (
            progress.match == message.index and progress.state is ProgressState.PROBE
        ):
            return  # old news: a late or repeated response
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state is ProgressState.SNAPSHOT:
            if progress.match + 1 >= self.log.first_index:
                progress.become_probe()
                progress.become_replicate()
        else:
            progress.inflights.free_le(message.index)
        if self._maybe_commit():
            self._on_commit_advanced()
        if self.role is not Role.LEADER:
            return
        if self._removal_committed():
            self._release_removed()
            if message.src not in self._progress:
                return
        while self._send_append(message.src, send_if_empty=False):
            pass
        if message.src == self._transferee and progress.match == self.log.last_index:
            self._send(TimeoutNow(self.id, message.src, self.term))

    def _on_append_rejected(self, progress: Progress, message: AppendResponse) -> None:
        # §5.3: "After a rejection, the leader decrements nextIndex and retries", skipping
        # whole terms using the follower's hint
        hint = message.hint_index
        if message.hint_term > 0:
            hint, _ = self.log.find_conflict_by_term(message.hint_index, message.hint_term)
        if progress.maybe_decr_to(message.index, hint):
            if progress.state is ProgressState.REPLICATE:
                progress.become_probe()
            self._send_append(message.src, send_if_empty=True)

    def _on_heartbeat_response(self, message: HeartbeatResponse) -> None:
        progress = self._progress.get(message.src)
        if progress is None:
            return
        progress.recent_active = True
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.inflights.full():
            # the window may be full of lost messages; let one more through so the
            # follower answers, accepting or rejecting
            progress.inflights.free_first_one()
        if progress.match < self.log.last_index or progress.state is ProgressState.PROBE:
            self._send_append(message.src, send_if_empty=True)
        if message.read_seq:
            self._reads.ack(message.src, message.read_seq)
            self._release_reads()

    def _on_leader_persisted(self) -> None:
        progress = self._progress.get(self.id)
        if (
            progress is not None
            and progress.maybe_update(self.log.stable_index)
            and self._maybe_commit()
        ):
            self._on_commit_advanced()

    def _maybe_commit(self) -> bool:
        """§5.3/§5.4.2: commit the highest index stored on a majority, but only by counting
        replicas for an entry of the leader's current term."""
        match = {node: progress.match for node, progress in self._progress.items()}
        index = self.log.config().committed_index(match)
        if index > self.log.committed and self.log.term(index) == self.term:
            self.log.commit_to(index)
            return True
        return False

    def _on_commit_advanced(self) -> None:
        self._bcast_append = True
        if self._reads_waiting_commit and self.log.term(self.log.committed) == self.term:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for ctx, requester in waiting:
                self._on_read_request(ctx, requester)
        config = self.log.config()
        if self._removal_committed():
            self._release_removed()
        if self.id not in config.voters and self.log.last_config_index() <= self.log.committed:
            self._step_down_removed(config)

    def _step_down_removed(self, config: Config) -> None:
        """Dissertation §4.2.2: a leader removed from the configuration steps down once the
        change commits; hand over to an up-to-date voter so no election timeout is lost."""
        self._flush_broadcasts()
        successor = max(
            (node for node in sorted(config.voters) if node in self._progress),
            key=lambda node: self._progress[node].match,
            default=None,
        )
        if successor is not None and self._progress[successor].match == self.log.last_index:
            self._send(TimeoutNow(self.id, successor, self.term))
        self._become_follower(self.term, None)

    def _send_append(self, to: int, send_if_empty: bool) -> bool:
        progress = self._progress[to]
        if progress.is_paused():
            return False
        prev_index = progress.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            return self._send_snapshot(to, progress)
        entries: list[Entry] = []
        if progress.next <= self.log.last_index:
            entries = self.log.slice(progress.next, self.log.last_index, self.options.max_msg_bytes)
        if not entries and not send_if_empty:
            return False
        self._send(
            AppendEntries(
                self.id, to, self.term, prev_index, prev_term, tuple(entries), self.log.committed
            )
        )
        progress.sent_entries(entries[-1].index if entries else None)
        return True

    def _send_snapshot(self, to: int, progress: Progress) -> bool:
        # §7: "the leader must occasionally send snapshots to followers that lag behind"
        if not progress.recent_active:
            return False
        if not self.log.snapshot_loaded:
            # etcd's ErrSnapshotTemporarilyUnavailable: ask the application for the
            # bytes and try again when they come (or at the follower's next response)
            self._snapshot_wanted = True
            return False
        snapshot = self.log.snapshot
        self._send(InstallSnapshot(self.id, to, self.term, snapshot))
        progress.become_snapshot(snapshot.index)
        return True

    def _bcast_heartbeats(self) -> None:
        for peer in sorted(self._progress):
            if peer != self.id:
                commit = min(self._progress[peer].match, self.log.committed)
                self._send(Heartbeat(self.id, peer, self.term, commit, self._reads.seq))

    def _flush_broadcasts(self) -> None:
        """Send what many proposals or reads since the last Ready asked for, once."""
        if self.role is not Role.LEADER:
            self._bcast_append = self._bcast_heartbeat = False
            return
        if self._bcast_append:
            self._bcast_append = False
            for peer in sorted(self._progress):
                if peer != self.id and self._send_append(peer, send_if_empty=True):
                    while self._send_append(peer, send_if_empty=False):
                        pass
        if self._bcast_heartbeat:
            self._bcast_heartbeat = False
            self._bcast_heartbeats()

    # ---- reads (dissertation §6.4) ---------------------------------------------

    def _on_read_request(self, ctx: bytes, requester: int) -> None:
        if self.log.term(self.log.committed) != self.term:
            # until the leader commits an entry of its term it may not know the latest
            # commit index (§8); the read waits for the no-op to commit
            self._reads_waiting_commit.append((ctx, requester))
            return
        self._reads.add(ctx, self.log.committed, requester)
        self._bcast_heartbeat = True
        self._release_reads()

    def _release_reads(self) -> None:
        for read in self._reads.release(self.log.config(), self.id):
            self._answer_read(read)

    def _answer_read(self, read: PendingRead) -> None:
        if read.requester == self.id:
            self._read_states.append(ReadState(read.index, read.ctx))
        else:
            self._send(ReadIndexResponse(self.id, read.requester, self.term, read.index, read.ctx))

    # ---- the follower ------------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        if isinstance(message, _FROM_LEADER):
            self._election_elapsed = 0
            self.leader = message.src
            if isinstance(message, AppendEntries):
                self._on_append(message)
            elif isinstance(message, Heartbeat):
                self._on_heartbeat(message)
            else:
                self._on_snapshot(message)
        elif isinstance(message, TimeoutNow):
            self._campaign(pre_vote=False, transfer=True)
        elif isinstance(message, ReadIndexResponse):
            self._read_states.append(ReadState(message.index, message.ctx))

    def _on_append(self, message: AppendEntries) -> None:
        if message.prev_index < self.log.committed:
            # everything up to our commit index is known to match; say how far we are
            self._reply_append(message.src, self.log.committed)
            return
        last_new = self.log.maybe_append(
            message.prev_index, message.prev_term, message.commit, message.entries
        )
        if last_new is not None:
            self._reply_append(message.src, last_new)
            return
        # Figure 2, AppendEntries receiver step 2: "Reply false if log doesn't contain an
        # entry at prevLogIndex whose term matches prevLogTerm"
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(message.prev_index, self.log.last_index), message.prev_term
        )
        self._send(
            AppendResponse(
                self.id, message.src, self.term, message.prev_index, True, hint_index, hint_term
            )
        )

    def _reply_append(self, to: int, index: int) -> None:
        self._send(AppendResponse(self.id, to, self.term, index))

    def _on_heartbeat(self, message: Heartbeat) -> None:
        self.log.commit_to(min(message.commit, self.log.last_index))
        self._send(HeartbeatResponse(self.id, message.src, self.term, message.read_seq))

    def _on_snapshot(self, message: InstallSnapshot) -> None:
        snapshot = message.snapshot
        if snapshot.index <= self.log.committed:
            self._reply_append(message.src, self.log.committed)
            return
        if self.log.match_term(snapshot.index, snapshot.term):
            # §7: "If the follower receives a snapshot that describes a prefix of its log,
            # log entries covered by the snapshot are deleted but entries following the
            # snapshot are still valid and must be retained"
            self.log.commit_to(snapshot.index)
            self._reply_append(message.src, self.log.committed)
            return
        self.log.restore(snapshot)
        self._reply_append(message.src, self.log.last_index)

    def _send(self, message: Message) -> None:
        self._messages.append(message)
