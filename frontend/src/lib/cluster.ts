// The cluster as GET /api/cluster describes it (docs/protocol.md, Web), read defensively,
// and the geometry of drawing the Chord ring: a 64-bit position is an angle.

export interface CacheNode {
  id: string;
  positions: string[]; // 16 hex digits each
  successors: string[];
  fingers: Finger[];
  keys: number;
  member: boolean; // false while the node is still joining the ring
}

export interface Finger {
  start: string | null; // the ring position the finger aims at, if given
  node: string | null; // the node it points to, if given
  position: string | null; // that node's position, if known
}

export interface Member {
  id: string;
  role: string;
  commitIndex: number | null;
}

export interface ReplicaGroup {
  id: string;
  members: Member[];
  leader: string | null;
}

export interface Portal {
  id: string;
  kind: string;
  address: string;
}

/** A fault `taskring chaos` injected, as the web process heard of it (times: epoch seconds). */
export interface Fault {
  id: string;
  kind: string;
  role: string;
  target: string;
  option: string;
  injectedAt: number | null;
  healedAt: number | null;
  skipped: string | null;
  active: boolean;
}

export interface Cluster {
  cacheNodes: CacheNode[];
  replicaGroups: ReplicaGroup[];
  portals: Portal[];
  faults: Fault[]; // newest first
}

const HEX16 = /^[0-9a-f]{16}$/i;

export function isPosition(value: unknown): value is string {
  return typeof value === "string" && HEX16.test(value);
}

/** Where a position sits on the ring: 0 at the top, growing clockwise, in [0, 1). */
export function fraction(position: string): number {
  // 13 hex digits are 52 bits: as much as a double holds exactly, plenty for a drawing.
  return parseInt(position.slice(0, 13), 16) / 2 ** 52;
}

export function pointOnRing(position: string, cx: number, cy: number, r: number): [number, number] {
  const angle = fraction(position) * 2 * Math.PI - Math.PI / 2;
  return [cx + r * Math.cos(angle), cy + r * Math.sin(angle)];
}

function text(value: unknown): string {
  return typeof value === "string" ? value : value === null || value === undefined ? "" : String(value);
}

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function finger(value: unknown): Finger {
  if (isPosition(value)) return { start: null, node: null, position: value.toLowerCase() };
  if (typeof value === "string") return { start: null, node: value, position: null };
  if (typeof value === "object" && value !== null) {
    const entry = value as Record<string, unknown>;
    const node = entry.node ?? entry.id ?? entry.successor ?? null;
    const position = entry.position ?? entry.node_position ?? null;
    return {
      start: isPosition(entry.start) ? entry.start.toLowerCase() : null,
      node: node === null ? null : text(node),
      position: isPosition(position) ? position.toLowerCase() : null,
    };
  }
  return { start: null, node: null, position: null };
}

function member(value: unknown): Member {
  const entry = (typeof value === "object" && value !== null ? value : { id: value }) as Record<string, unknown>;
  const commit = entry.commit_index;
  return {
    id: text(entry.id),
    role: text(entry.role) || "member",
    commitIndex: typeof commit === "number" ? commit : null,
  };
}

/** /api/cluster's JSON as typed values; anything missing becomes empty rather than an error. */
export function parseCluster(json: unknown): Cluster {
  const body = (typeof json === "object" && json !== null ? json : {}) as Record<string, unknown>;
  const cacheNodes = list(body.cache_nodes).map((raw) => {
    const node = (raw ?? {}) as Record<string, unknown>;
    return {
      id: text(node.id),
      positions: list(node.positions).filter(isPosition).map((p) => p.toLowerCase()),
      successors: list(node.successors).map(text),
      fingers: list(node.fingers).map(finger),
      keys: typeof node.keys === "number" ? node.keys : 0,
      // Older views did not say; a node that reports itself counts as a member.
      member: node.member !== false,
    };
  });
  const replicaGroups = list(body.replica_groups).map((raw) => {
    const group = (raw ?? {}) as Record<string, unknown>;
    return {
      id: text(group.id),
      members: list(group.members).map(member),
      leader: group.leader === null || group.leader === undefined || group.leader === "" ? null : text(group.leader),
    };
  });
  const portals = list(body.portals).map((raw) => {
    const portal = (raw ?? {}) as Record<string, unknown>;
    return { id: text(portal.id), kind: text(portal.kind), address: text(portal.address) };
  });
  const chaos = (typeof body.chaos === "object" && body.chaos !== null ? body.chaos : {}) as Record<string, unknown>;
  const faults = list(chaos.recent).map((raw) => {
    const fault = (raw ?? {}) as Record<string, unknown>;
    const time = (value: unknown) => (typeof value === "number" ? value : null);
    return {
      id: text(fault.id),
      kind: text(fault.kind),
      role: text(fault.role),
      target: text(fault.target),
      option: text(fault.option),
      injectedAt: time(fault.injected_at),
      healedAt: time(fault.healed_at),
      skipped: fault.skipped ? text(fault.skipped) : null,
      active: fault.active === true,
    };
  });
  return { cacheNodes, replicaGroups, portals, faults };
}

/** The ring position a finger points at: its node's position at or after its start. */
export function fingerTarget(f: Finger, nodes: CacheNode[]): { node: CacheNode | null; position: string | null } {
  const byId = f.node ? nodes.find((n) => n.id === f.node) ?? null : null;
  if (f.position) {
    return { node: byId ?? nodes.find((n) => n.positions.includes(f.position!)) ?? null, position: f.position };
  }
  if (!byId || byId.positions.length === 0) return { node: byId, position: null };
  if (!f.start) return { node: byId, position: byId.positions[0] };
  const sorted = [...byId.positions].sort();
  return { node: byId, position: sorted.find((p) => p >= f.start!) ?? sorted[0] };
}

const RING = 2n ** 64n;

/** How far clockwise `to` lies from `from`, in [0, 2^64). */
export function clockwise(from: string, to: string): bigint {
  return (((BigInt(`0x${to}`) - BigInt(`0x${from}`)) % RING) + RING) % RING;
}

/** The position of `node` that owns `key`: its first position at or after the key, wrapping. */
export function owningPosition(node: CacheNode, key: string): string | null {
  return closest(node.positions, (p) => clockwise(key, p));
}

/** The position of `node` closest before `key`: where a Chord lookup for the key leaves it. */
export function precedingPosition(node: CacheNode, key: string): string | null {
  return closest(node.positions, (p) => clockwise(p, key));
}

function closest(positions: string[], distance: (p: string) => bigint): string | null {
  let best: string | null = null;
  let bestDistance = RING;
  for (const p of positions) {
    const d = distance(p);
    if (d < bestDistance) [best, bestDistance] = [p, d];
  }
  return best;
}

/** The cache node whose positions own `key` among the nodes shown, if any. */
export function ownerOf(key: string, nodes: CacheNode[]): CacheNode | null {
  let best: CacheNode | null = null;
  let bestDistance = RING;
  for (const node of nodes) {
    const p = owningPosition(node, key);
    const d = p === null ? RING : clockwise(key, p);
    if (d < bestDistance) [best, bestDistance] = [node, d];
  }
  return best;
}

export interface RouteStep {
  id: string;
  node: CacheNode | null; // null when the step is not a cache node on the ring (a portal, a node gone)
  position: string | null; // where on the ring the step is drawn
}

/**
 * Where each step of a traced route sits on the ring. A request is routed towards its key,
 * so every cache node on the way is drawn at its position closest before the key, and the
 * owner at the position that owns it. Without a key, a node's first position stands in.
 */
export function routeSteps(route: string[], owner: string, key: string | null, nodes: CacheNode[]): RouteStep[] {
  return route.map((id, i) => {
    const node = nodes.find((n) => n.id === id) ?? null;
    if (!node) return { id, node, position: null };
    const last = i === route.length - 1 && id === owner;
    const position = key ? (last ? owningPosition(node, key) : precedingPosition(node, key)) : node.positions[0] ?? null;
    return { id, node, position };
  });
}

/** Successor ids with runs of the same node collapsed: virtual nodes repeat a host. */
export function distinctRuns(ids: string[]): string[] {
  return ids.filter((id, i) => i === 0 || ids[i - 1] !== id);
}

/** What changed between two views, as sentences for the change log. */
export function changes(before: Cluster, after: Cluster): string[] {
  const lines: string[] = [];
  const diff = (kind: string, a: string[], b: string[]) => {
    for (const id of b) if (!a.includes(id)) lines.push(`${kind} ${id} joined`);
    for (const id of a) if (!b.includes(id)) lines.push(`${kind} ${id} left (no heartbeat)`);
  };
  diff("cache node", before.cacheNodes.map((n) => n.id), after.cacheNodes.map((n) => n.id));
  diff("portal", before.portals.map((p) => p.id), after.portals.map((p) => p.id));
  for (const group of after.replicaGroups) {
    const old = before.replicaGroups.find((g) => g.id === group.id);
    if (old && old.leader !== group.leader) {
      lines.push(
        group.leader
          ? `group ${group.id}: ${group.leader} is the leader${old.leader ? ` (was ${old.leader})` : ""}`
          : `group ${group.id}: no leader (was ${old.leader})`,
      );
    }
  }
  return lines;
}

/** The process id of every live component, keyed "kind/id", from GET /api/components. */
export function parsePids(json: unknown): Map<string, number> {
  // A JSON list of components; older web processes wrapped it in {"components": [...]}.
  const body = (typeof json === "object" && json !== null ? json : {}) as Record<string, unknown>;
  const pids = new Map<string, number>();
  for (const raw of Array.isArray(json) ? json : list(body.components)) {
    const entry = (raw ?? {}) as Record<string, unknown>;
    if (entry.alive === true && typeof entry.pid === "number") pids.set(`${text(entry.kind)}/${text(entry.id)}`, entry.pid);
  }
  return pids;
}

const KIND_NAMES: Record<string, string> = {
  "cache-node": "cache node",
  "client-portal": "portal",
  "admin-portal": "portal",
};

/**
 * Components that came back as a new process between two looks. A supervisor restarts a
 * process killed with kill -9 within a second, faster than its heartbeats go stale, so
 * this is how such a crash shows.
 */
export function restarts(before: Map<string, number>, after: Map<string, number>): string[] {
  const lines: string[] = [];
  for (const [key, pid] of after) {
    const old = before.get(key);
    if (old === undefined || old === pid) continue;
    const [kind, ...id] = key.split("/");
    lines.push(`${KIND_NAMES[kind] ?? kind} ${id.join("/")} restarted (process ${old} → ${pid})`);
  }
  return lines;
}
