// The cluster as GET /api/cluster describes it (CONTRACT section 4), read defensively,
// and the geometry of drawing the Chord ring: a 64-bit position is an angle.

export interface CacheNode {
  id: string;
  positions: string[]; // 16 hex digits each
  successors: string[];
  fingers: Finger[];
  keys: number;
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

export interface Cluster {
  cacheNodes: CacheNode[];
  replicaGroups: ReplicaGroup[];
  portals: Portal[];
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
  return { cacheNodes, replicaGroups, portals };
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

/** A node's place for a trace step: a cache node's first position, else null. */
export function nodePosition(id: string, nodes: CacheNode[]): string | null {
  return nodes.find((n) => n.id === id)?.positions[0] ?? null;
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
