// The cluster page: a live drawing of the Chord ring (every cache node at its
// positions, the fingers of the selected node, key counts), the replica groups with
// their leaders, the portals, and the route of the last traced request. It polls
// GET /api/cluster every second, so a node killed with kill -9 disappears within the
// few seconds its heartbeats take to go stale, and the change log says so. It also
// polls GET /api/components for process ids: under `taskring up` a killed node is
// restarted before it goes stale, and only its new process id tells.

import { html, nothing, render, svg, type SVGTemplateResult, type TemplateResult } from "lit-html";
import { repeat } from "lit-html/directives/repeat.js";
import type { Page } from "../main";
import {
  type CacheNode,
  type Cluster,
  type Fault,
  type ReplicaGroup,
  type RouteStep,
  changes,
  clockwise,
  distinctRuns,
  fingerTarget,
  fraction,
  isPosition,
  ownerOf,
  owningPosition,
  parseCluster,
  parsePids,
  pointOnRing,
  restarts,
  routeSteps,
} from "../lib/cluster";
import { type TracedRequest, loadTrace, onTrace } from "../lib/trace";
import { ago, cssProps } from "../lib/ui";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 3000;
const MAX_LOG = 30;
const SIZE = 560;
const CENTER = SIZE / 2;
const RADIUS = 170;
const LABEL_HEIGHT = 13;
const LABEL_CHAR_WIDTH = 7; // 11px bold sans-serif, about
const LABEL_GAP = 4;
const KEY_ARC = RADIUS + 16;
const PALETTE = ["#4f46e5", "#0d9488", "#d97706", "#db2777", "#2563eb", "#65a30d", "#9333ea", "#dc2626", "#0891b2", "#a16207"];

interface LogEntry {
  at: number;
  text: string;
}

interface Label {
  x: number;
  y: number;
  anchor: "start" | "middle" | "end";
}

/** The last traced request as the ring shows it now. */
interface TracedRoute {
  key: string | null; // the client's CID: the request's position on the ring
  steps: RouteStep[];
  owner: CacheNode | null; // the owner the trace names, if it is on the ring
  ownerPosition: string | null;
  ownerNow: CacheNode | null; // who owns the key on the ring as it is now
}

export class ClusterPage implements Page {
  readonly name = "cluster";
  readonly title = "Cluster";
  private root: HTMLElement | null = null;
  private cluster: Cluster | null = null;
  private fetchedAt = 0;
  private error = "";
  private selected: string | null = null;
  private trace: TracedRequest | null = loadTrace();
  private log: LogEntry[] = [];
  private timer = 0;
  private stopTrace: (() => void) | null = null;
  private polling = false;
  private sawRing = false; // cache nodes were seen since the page opened
  private pids: Map<string, number> | null = null;
  private colors = new Map<string, string>(); // kept per node id, so a departure recolours no one

  mount(root: HTMLElement): void {
    this.root = root;
    this.polling = true;
    this.trace = loadTrace();
    this.stopTrace = onTrace((traced) => {
      this.trace = traced;
      this.render();
    });
    this.render();
    void this.poll();
  }

  unmount(): void {
    this.polling = false;
    window.clearTimeout(this.timer);
    this.stopTrace?.();
    this.root = null;
  }

  private async poll(): Promise<void> {
    if (!this.polling) return;
    try {
      const components = fetchJson("/api/components").catch(() => null);
      this.update(parseCluster(await fetchJson("/api/cluster")));
      this.noteRestarts(await components);
      this.error = "";
    } catch (error) {
      const reason = error instanceof Error && error.name !== "TimeoutError" ? error.message : "no answer in time";
      this.error = `Cannot reach the web server (${reason}); retrying every second.`;
    }
    this.render();
    if (this.polling) this.timer = window.setTimeout(() => void this.poll(), POLL_MS);
  }

  private update(next: Cluster): void {
    if (this.cluster) this.addToLog(changes(this.cluster, next));
    this.cluster = next;
    this.sawRing ||= next.cacheNodes.length > 0;
    this.fetchedAt = Date.now();
    if (this.selected && !next.cacheNodes.some((n) => n.id === this.selected)) this.selected = null;
    if (!this.selected && next.cacheNodes.length) this.selected = next.cacheNodes[0].id;
  }

  /** Restarts are not in /api/cluster: a process id that changed between two polls is one. */
  private noteRestarts(json: unknown): void {
    if (json === null) return;
    const pids = parsePids(json);
    if (this.pids) this.addToLog(restarts(this.pids, pids));
    this.pids = pids;
  }

  private addToLog(lines: string[]): void {
    const now = Date.now();
    for (const text of lines) this.log.unshift({ at: now, text });
    this.log = this.log.slice(0, MAX_LOG);
  }

  /** Each node keeps the colour it was first drawn in; a new node takes one no live node has. */
  private colorsOf(nodes: CacheNode[]): Map<string, string> {
    const ids = nodes.map((n) => n.id).sort();
    const taken = new Set<string>();
    const colors = new Map<string, string>();
    // Keep earlier colours first, then give the newcomers what is left.
    for (const id of ids) {
      const kept = this.colors.get(id);
      if (kept && !taken.has(kept)) {
        colors.set(id, kept);
        taken.add(kept);
      }
    }
    for (const [i, id] of ids.entries()) {
      if (colors.has(id)) continue;
      const color = PALETTE.find((c) => !taken.has(c)) ?? PALETTE[i % PALETTE.length];
      colors.set(id, color);
      taken.add(color);
    }
    for (const [id, color] of colors) this.colors.set(id, color);
    return colors;
  }

  private select(id: string): void {
    this.selected = id;
    this.render();
  }

  private render(): void {
    if (!this.root) return;
    render(this.view(), this.root);
  }

  private view(): TemplateResult {
    const cluster = this.cluster;
    return html`
      <section class="page-head">
        <div>
          <h1>Cluster</h1>
          <p class="muted">The ring, the replica groups and the portals, live.</p>
        </div>
        <div class="head-actions">
          <span class="pill ${this.error ? "pill-reconnecting" : cluster ? "pill-live" : "pill-connecting"}" role="status" data-testid="cluster-status">
            <span class="dot" aria-hidden="true"></span>${this.error ? "Offline" : cluster ? `Updated ${ago(this.fetchedAt)}` : "Loading…"}
          </span>
        </div>
      </section>
      ${this.error ? html`<p class="banner banner-error" role="alert">${this.error}</p>` : nothing}
      ${cluster ? this.faultsBanner(cluster.faults) : nothing}
      ${cluster ? this.content(cluster) : this.loadingView()}
    `;
  }

  private loadingView(): TemplateResult {
    return html`<div class="cluster-grid" aria-busy="true">
      <div class="card ring-card"><div class="skeleton ring-skeleton"></div></div>
      <div class="card"><span class="skeleton"></span><span class="skeleton short"></span></div>
      <p class="visually-hidden" role="status">Loading the cluster…</p>
    </div>`;
  }

  private content(cluster: Cluster): TemplateResult {
    const nodes = cluster.cacheNodes;
    return html`
      <div class="cluster-grid">
        <section class="card ring-card" aria-labelledby="ring-title">
          <h2 id="ring-title" class="card-title">Chord ring
            <span class="muted small" data-testid="ring-summary">${plural(nodes.length, "cache node")} · ${plural(totalKeys(nodes), "key")}</span></h2>
          ${nodes.length ? this.ring(nodes) : this.emptyRing()}
        </section>
        <aside class="side">
          ${nodes.length ? this.nodeDetails(nodes) : nothing}
          ${this.traceCard(nodes)}
        </aside>
      </div>
      ${nodes.length ? this.nodesTable(nodes) : nothing}
      <div class="two-columns">
        ${this.groupsCard(cluster.replicaGroups, nodes.length > 0)}
        ${this.portalsCard(cluster)}
      </div>
      ${cluster.faults.length ? this.faultsCard(cluster.faults) : nothing}
      ${this.logCard()}
    `;
  }

  // ---- faults injected by `taskring chaos` ------------------------------------------------

  private faultsBanner(faults: Fault[]): TemplateResult | typeof nothing {
    const active = faults.filter((f) => f.active);
    if (!active.length) return nothing;
    return html`<div class="banner banner-error" role="status" data-testid="active-faults">
      <strong>${plural(active.length, "fault")} injected now:</strong>
      <ul>${active.map((f) => html`<li data-fault=${f.id} data-kind=${f.kind}>${faultLabel(f)}
        <span class="muted small">since ${clockTime(f.injectedAt)}</span></li>`)}</ul>
    </div>`;
  }

  private faultsCard(faults: Fault[]): TemplateResult {
    return html`
      <section class="card faults-card" aria-labelledby="faults-title" data-testid="faults">
        <h2 id="faults-title" class="card-title">Faults <span class="muted small">from taskring chaos</span></h2>
        <ul class="log">${faults.map((f) => html`<li data-fault=${f.id} data-state=${faultState(f)}>
          ${faultLabel(f)} <span class="muted small">${faultTimes(f)}</span></li>`)}</ul>
      </section>
    `;
  }

  // ---- the ring ------------------------------------------------------------------------

  private emptyRing(): TemplateResult {
    if (this.sawRing) {
      return html`<div class="empty ring-empty" data-testid="empty-ring">
        <svg viewBox="0 0 48 48" aria-hidden="true"><circle cx="24" cy="24" r="16" stroke-dasharray="4 4" /></svg>
        <p><strong>No cache node is sending heartbeats.</strong></p>
        <p class="muted">The ring was here a moment ago; the change log below says when each node left. Requests
          fail as unavailable until cache nodes are back.</p>
      </div>`;
    }
    return html`<div class="empty ring-empty" data-testid="empty-ring">
      <svg viewBox="0 0 48 48" aria-hidden="true"><circle cx="24" cy="24" r="16" stroke-dasharray="4 4" /></svg>
      <p><strong>No cache nodes: this system runs in local storage mode.</strong></p>
      <p class="muted">Each portal keeps the full tables in memory, and the portals converge by publishing every change
        over MQTT. With ring storage, the cache nodes appear here on their Chord ring.</p>
    </div>`;
  }

  private ring(nodes: CacheNode[]): TemplateResult {
    const colors = this.colorsOf(nodes);
    const selected = nodes.find((n) => n.id === this.selected) ?? null;
    const maxKeys = Math.max(1, ...nodes.map((n) => n.keys));
    const labels = placeLabels(nodes, maxKeys);
    const traced = this.tracedRoute(nodes);
    return html`
      <svg class="ring" viewBox="0 0 ${SIZE} ${SIZE}" role="group" aria-label="The Chord ring: cache nodes at their positions">
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M0 0L10 5L0 10z" class="arrow-head" />
          </marker>
          <marker id="route-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M0 0L10 5L0 10z" class="route-head" />
          </marker>
        </defs>
        <circle class="ring-track" cx=${CENTER} cy=${CENTER} r=${RADIUS} />
        ${this.ticks()}
        ${selected ? this.fingers(selected, nodes) : nothing}
        ${traced ? this.route(traced) : nothing}
        ${repeat(nodes, (node) => node.id, (node) => this.nodeMarks(node, colors.get(node.id)!, node.id === this.selected, maxKeys, labels.get(node.id) ?? null))}
        ${traced ? this.routeEnds(traced, maxKeys) : nothing}
      </svg>
    `;
  }

  private ticks(): SVGTemplateResult {
    const labels = ["0000…", "4000…", "8000…", "c000…"];
    return svg`${labels.map((label, i) => {
      const angle = (i / 4) * 2 * Math.PI - Math.PI / 2;
      const [x1, y1] = [CENTER + (RADIUS - 6) * Math.cos(angle), CENTER + (RADIUS - 6) * Math.sin(angle)];
      const [x2, y2] = [CENTER + (RADIUS + 6) * Math.cos(angle), CENTER + (RADIUS + 6) * Math.sin(angle)];
      const [lx, ly] = [CENTER + (RADIUS - 24) * Math.cos(angle), CENTER + (RADIUS - 24) * Math.sin(angle) + 4];
      return svg`<line class="tick" x1=${x1} y1=${y1} x2=${x2} y2=${y2} /><text class="tick-label" x=${lx} y=${ly} text-anchor="middle">${label}</text>`;
    })}`;
  }

  private nodeMarks(node: CacheNode, color: string, selected: boolean, maxKeys: number, label: Label | null): SVGTemplateResult {
    const [first, ...virtual] = node.positions;
    if (!first) return svg``;
    const radius = dotRadius(node, maxKeys);
    const [x, y] = pointOnRing(first, CENTER, CENTER, RADIUS);
    const state = node.member ? "" : ", joining the ring";
    const describe = `${node.id}: ${plural(node.keys, "key")}, ${plural(node.positions.length, "position")} from ${first}${state}`;
    const choose = () => this.select(node.id);
    // Every position of a node is a point on the ring; the first one, largest, is where
    // the node is labelled and where its fingers start (Chord's view of it as a host).
    return svg`
      ${virtual.map((p) => {
        const [vx, vy] = pointOnRing(p, CENTER, CENTER, RADIUS);
        return svg`<circle class="vnode" cx=${vx} cy=${vy} r="4" fill=${color} opacity=${selected ? 0.95 : 0.6}
          @click=${choose}><title>${node.id} at ${p}</title></circle>`;
      })}
      <g class="node ${selected ? "node-selected" : ""} ${node.member ? "" : "node-joining"}" role="button" tabindex="0"
        data-node=${node.id} data-keys=${node.keys} aria-pressed=${selected ? "true" : "false"} aria-label=${describe}
        @click=${choose} @keydown=${(e: KeyboardEvent) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } }}>
        <circle class="node-halo" cx=${x} cy=${y} r=${radius + 5} />
        <circle class="node-dot" cx=${x} cy=${y} r=${radius} fill=${color} />
        ${label
          ? svg`<text class="node-label" x=${label.x} y=${label.y} text-anchor=${label.anchor}>${node.id}<tspan class="node-keys"
              dx="5">${node.keys.toLocaleString("en")}</tspan></text>`
          : nothing}
        <title>${describe}</title>
      </g>`;
  }

  private fingers(node: CacheNode, nodes: CacheNode[]): SVGTemplateResult {
    const from = node.positions[0];
    if (!from) return svg``;
    const [x1, y1] = pointOnRing(from, CENTER, CENTER, RADIUS);
    const seen = new Set<string>();
    return svg`${node.fingers.map((finger) => {
      const target = fingerTarget(finger, nodes);
      if (!target.position || target.position === from || seen.has(target.position)) return nothing;
      seen.add(target.position);
      const [x2, y2] = pointOnRing(target.position, CENTER, CENTER, RADIUS - 10);
      const [cx, cy] = [CENTER + ((x1 + x2) / 2 - CENTER) * 0.35, CENTER + ((y1 + y2) / 2 - CENTER) * 0.35];
      return svg`<path class="finger" data-target=${target.node?.id ?? ""} d="M${x1} ${y1} Q${cx} ${cy} ${x2} ${y2}"
        marker-end="url(#arrow)"><title>finger of ${node.id} to ${target.node?.id ?? "?"} at ${target.position}</title></path>`;
    })}`;
  }

  private tracedRoute(nodes: CacheNode[]): TracedRoute | null {
    const trace = this.trace;
    // A portal that answered by itself (local storage, or `watch` in any mode) took no route on the ring.
    if (!trace || trace.group === "local") return null;
    const key = isPosition(trace.cid) ? trace.cid.toLowerCase() : null;
    const owner = nodes.find((n) => n.id === trace.owner) ?? null;
    return {
      key,
      steps: routeSteps(trace.route, trace.owner, key, nodes),
      owner,
      ownerPosition: owner ? (key ? owningPosition(owner, key) : owner.positions[0] ?? null) : null,
      ownerNow: key ? ownerOf(key, nodes) : null,
    };
  }

  /** The hops from the entry node to the owner as chords; a one-hop route as the key's arc to its owner. */
  private route(traced: TracedRoute): SVGTemplateResult {
    const positions = distinctRuns(traced.steps.map((s) => s.position).filter((p): p is string => p !== null));
    const arc = traced.key && traced.ownerPosition ? keyArc(traced.key, traced.ownerPosition) : null;
    if (positions.length < 2) {
      // No arrowhead: on an arc this short it would hide the owner; the owner's ring marks the end.
      return arc ? svg`<path class="route route-one-hop" d=${arc}><title>the key, clockwise to its owner</title></path>` : svg``;
    }
    const points = positions.map((p) => pointOnRing(p, CENTER, CENTER, RADIUS - 8));
    const d = points
      .map(([x, y], i) => {
        if (i === 0) return `M${x} ${y}`;
        const [px, py] = points[i - 1];
        const [cx, cy] = [CENTER + ((x + px) / 2 - CENTER) * 0.55, CENTER + ((y + py) / 2 - CENTER) * 0.55];
        return `Q${cx} ${cy} ${x} ${y}`;
      })
      .join(" ");
    return svg`${arc ? svg`<path class="route-arc" d=${arc} />` : nothing}
      <path class="route" d=${d} marker-end="url(#route-arrow)"><title>route of the last traced request</title></path>`;
  }

  /** The key's place on the ring and the owner's position, drawn above the nodes. */
  private routeEnds(traced: TracedRoute, maxKeys: number): SVGTemplateResult {
    const key = traced.key;
    const owner = traced.owner && traced.ownerPosition ? pointOnRing(traced.ownerPosition, CENTER, CENTER, RADIUS) : null;
    // Around the node's dot and its selection halo when the owning position is its first one.
    const ring = traced.owner && traced.ownerPosition === traced.owner.positions[0] ? dotRadius(traced.owner, maxKeys) + 9 : 8;
    const [kx, ky] = key ? pointOnRing(key, CENTER, CENTER, KEY_ARC) : [0, 0];
    return svg`
      ${owner
        ? svg`<circle class="route-owner" data-node=${traced.owner!.id} cx=${owner[0]} cy=${owner[1]} r=${ring}>
            <title>${traced.owner!.id} owns the key at ${traced.ownerPosition}</title></circle>`
        : nothing}
      ${key
        ? svg`<g class="route-key" data-key=${key}>
            <path d="M${kx} ${ky - 6}L${kx + 6} ${ky}L${kx} ${ky + 6}L${kx - 6} ${ky}z" />
            <title>key ${key}: the client's CID, its position on the ring</title></g>`
        : nothing}`;
  }

  // ---- side panel --------------------------------------------------------------------

  private nodeDetails(nodes: CacheNode[]): TemplateResult {
    const node = nodes.find((n) => n.id === this.selected);
    if (!node) return html`<section class="card"><p class="muted">Select a node to see its fingers.</p></section>`;
    return html`
      <section class="card" aria-labelledby="node-title" data-testid="node-details">
        <h2 id="node-title" class="card-title">${node.id}</h2>
        <dl class="facts">
          <dt>Keys</dt><dd data-testid="node-keys">${node.keys.toLocaleString("en")}</dd>
          <dt>State</dt><dd>${node.member ? "member of the ring" : html`<span class="badge badge-warning">joining</span>`}</dd>
          <dt>Positions</dt><dd>${node.positions.length > 1
            ? html`<details><summary>${node.positions.length}, from <code class="mono small">${node.positions[0]}</code></summary>
                <p class="mono small positions">${node.positions.join(", ")}</p></details>`
            : html`<code class="mono small">${node.positions[0] ?? "—"}</code>`}</dd>
          <dt>Successors</dt><dd>${distinctRuns(node.successors).map((id) => (id === node.id ? "itself" : id)).join(" → ") || "—"}</dd>
        </dl>
        <h3 class="small-title">Fingers${node.positions[0] ? html` <span class="muted small">from <code class="mono">${node.positions[0]}</code></span>` : nothing}</h3>
        ${node.fingers.length
          ? html`<ol class="fingers" data-testid="fingers">${node.fingers.map((f, i) => {
              const target = fingerTarget(f, nodes);
              const id = target.node?.id ?? f.node ?? "";
              return html`<li data-target=${id}><span class="muted">${i + 1}.</span> ${f.start ? html`<code class="mono small">${f.start}</code> → ` : nothing}
                ${id || target.position || "?"}${id === node.id ? html` <span class="muted small">(itself)</span>` : nothing}
                ${target.position ? html`<span class="muted small mono">at ${target.position}</span>` : nothing}</li>`;
            })}</ol>`
          : html`<p class="muted">No finger table reported${node.member ? "" : ": the node is still joining"}.</p>`}
      </section>
    `;
  }

  private traceCard(nodes: CacheNode[]): TemplateResult {
    const trace = this.trace;
    const local = trace?.group === "local";
    const traced = nodes.length ? this.tracedRoute(nodes) : null;
    const moved = traced?.ownerNow && trace && traced.ownerNow.id !== trace.owner ? traced.ownerNow.id : null;
    const stepNote = (id: string) =>
      local ? html` <span class="muted small">(portal)</span>`
      : nodes.some((n) => n.id === id) ? nothing
      : html` <span class="muted small">(${nodes.length ? "no longer on the ring" : "cache node"})</span>`;
    return html`
      <section class="card" aria-labelledby="trace-title" data-testid="trace">
        <h2 id="trace-title" class="card-title">Last traced request</h2>
        ${trace
          ? html`
              <p class="trace-head"><code class="mono">${trace.op}</code>
                <span class="badge ${trace.ok ? "badge-success" : "badge-danger"}">${trace.ok ? "ok" : "failed"}</span>
                <span class="muted small">${ago(trace.at)}</span></p>
              ${isPosition(trace.cid) && !local
                ? html`<p class="muted small">Key <code class="mono" data-testid="trace-key">${trace.cid}</code> (the client's CID, its place on the ring)</p>`
                : nothing}
              <ol class="route-steps" aria-label="Route">
                ${trace.route.map((id, i) => html`<li class=${id === trace.owner ? "owner" : ""} data-node=${id}>
                  <span class="step">${i + 1}</span>${id}${stepNote(id)}
                  ${id === trace.owner ? html`<span class="badge badge-accent">owner</span>` : nothing}</li>`)}
              </ol>
              ${trace.route.length === 1 && trace.route[0] === trace.owner && !local
                ? html`<p class="muted small">The portal sent it straight to the key's owner: one hop.</p>`
                : nothing}
              ${moved ? html`<p class="muted small">The ring has changed since: <strong>${moved}</strong> owns this key now.</p>` : nothing}
              <p class="muted small" data-testid="trace-group">${groupLine(trace.group, nodes.length > 0)}</p>`
          : html`<p class="muted">No traced request yet. Requests from the <a href="/" data-nav>Tasks page</a> are traced,
              and their route through the cluster shows here.</p>`}
      </section>
    `;
  }

  // ---- tables --------------------------------------------------------------------------

  private nodesTable(nodes: CacheNode[]): TemplateResult {
    const colors = this.colorsOf(nodes);
    const maxKeys = Math.max(1, ...nodes.map((n) => n.keys));
    return html`
      <section class="card table-card" aria-labelledby="nodes-title">
        <h2 id="nodes-title" class="card-title card-title-padded">Cache nodes</h2>
        <table class="table" aria-label="Cache nodes">
          <thead><tr><th scope="col">Node</th><th scope="col">Keys</th><th scope="col">Positions</th><th scope="col">Successor</th><th scope="col">Fingers</th></tr></thead>
          <tbody>${repeat(nodes, (n) => n.id, (n) => html`
            <tr class=${n.id === this.selected ? "selected" : ""} data-node=${n.id}>
              <th scope="row" data-label="Node">
                <button class="link-button" aria-pressed=${n.id === this.selected ? "true" : "false"} @click=${() => this.select(n.id)}>
                  <span class="swatch" style=${cssProps({ background: colors.get(n.id) ?? "" })}></span>${n.id}</button>
                ${n.member ? nothing : html`<span class="badge badge-warning">joining</span>`}</th>
              <td data-label="Keys"><span class="bar"><span style=${cssProps({ width: `${(100 * n.keys) / maxKeys}%` })}></span></span><span
                class="keys">${n.keys.toLocaleString("en")}</span></td>
              <td data-label="Positions">${n.positions.length}</td>
              <td data-label="Successor">${successorText(n)}</td>
              <td data-label="Fingers">${n.fingers.length}</td>
            </tr>`)}</tbody>
        </table>
      </section>
    `;
  }

  private groupsCard(groups: ReplicaGroup[], ring: boolean): TemplateResult {
    return html`
      <section class="card" aria-labelledby="groups-title" data-testid="replica-groups">
        <h2 id="groups-title" class="card-title">Replica groups</h2>
        ${groups.length === 0
          ? html`<p class="muted">${ring
              ? "No replica groups are running yet: the cache nodes hold every key in memory, so nothing is on disk."
              : "No replica groups: in local storage mode nothing is replicated to disk."}</p>`
          : groups.map((group) => html`
              <div class="group">
                <h3 class="group-title">${group.id}
                  ${group.leader
                    ? html`<span class="muted small">leader <strong>${group.leader}</strong></span>`
                    : html`<span class="badge badge-warning">no leader</span>`}</h3>
                <ul class="members">${group.members.map((m) => html`
                  <li class=${m.id === group.leader ? "leader" : ""}>
                    <span>${m.id}</span>
                    <span class="badge ${m.id === group.leader || m.role === "leader" ? "badge-accent" : "badge-neutral"}">${m.role}</span>
                    ${m.commitIndex !== null ? html`<span class="muted small mono">commit ${m.commitIndex}</span>` : nothing}
                  </li>`)}</ul>
              </div>`)}
      </section>
    `;
  }

  private portalsCard(cluster: Cluster): TemplateResult {
    const portals = [...cluster.portals].sort((a, b) => a.kind.localeCompare(b.kind) || a.id.localeCompare(b.id));
    return html`
      <section class="card" aria-labelledby="portals-title" data-testid="portals">
        <h2 id="portals-title" class="card-title">Portals <span class="muted small">${portals.length} live</span></h2>
        ${portals.length === 0
          ? html`<p class="muted">No portal is sending heartbeats. Start the system with <code>taskring up</code>.</p>`
          : html`<ul class="portal-list">${repeat(portals, (p) => `${p.kind}/${p.id}`, (p) => html`
              <li data-portal=${p.id}><span class="dot dot-live" aria-hidden="true"></span><strong>${p.id}</strong>
                <span class="badge badge-neutral">${p.kind === "client-portal" ? "TCP" : p.kind === "admin-portal" ? "gRPC" : p.kind}</span>
                <code class="mono small muted">${p.address}</code></li>`)}</ul>`}
      </section>
    `;
  }

  private logCard(): TemplateResult {
    return html`
      <section class="card" aria-labelledby="log-title">
        <h2 id="log-title" class="card-title">Changes</h2>
        ${this.log.length === 0
          ? html`<p class="muted">Nothing has changed since this page opened. Joins, departures, restarts and new leaders show here.</p>`
          : html`<ul class="log" aria-live="polite" data-testid="change-log">${this.log.map((entry) => html`
              <li><time class="muted small">${new Date(entry.at).toLocaleTimeString()}</time> ${entry.text}</li>`)}</ul>`}
      </section>
    `;
  }
}

function faultLabel(f: Fault): string {
  const option = f.option ? ` (${f.option})` : "";
  return `${f.kind} ${f.target || f.role}${option}`;
}

function faultState(f: Fault): string {
  return f.skipped !== null ? "skipped" : f.active ? "active" : f.healedAt !== null ? "healed" : "unknown";
}

function clockTime(epochSeconds: number | null): string {
  return epochSeconds === null ? "?" : new Date(epochSeconds * 1000).toLocaleTimeString();
}

function faultTimes(f: Fault): string {
  if (f.skipped !== null) return `skipped: ${f.skipped}`;
  const healed = f.healedAt !== null ? `, healed ${clockTime(f.healedAt)}` : f.active ? ", still on" : "";
  return `injected ${clockTime(f.injectedAt)}${healed}`;
}

async function fetchJson(path: string): Promise<unknown> {
  const response = await fetch(path, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), cache: "no-store" });
  if (!response.ok) throw new Error(`${path} answered HTTP ${response.status}`);
  return response.json();
}


function totalKeys(nodes: CacheNode[]): number {
  return nodes.reduce((sum, n) => sum + n.keys, 0);
}

function plural(count: number, noun: string): string {
  return `${count.toLocaleString("en")} ${noun}${count === 1 ? "" : "s"}`;
}

function dotRadius(node: CacheNode, maxKeys: number): number {
  return 6 + 6 * Math.sqrt(node.keys / maxKeys);
}

/** The first successor, saying so when it is another position of the same node. */
function successorText(node: CacheNode): string {
  const next = node.successors[0];
  if (!next) return "—";
  return next === node.id ? "itself (another position)" : next;
}

function groupLine(group: string, ring: boolean): string {
  if (group === "local") {
    return ring
      ? "Replica group: none (the portal answered this itself, without the ring)."
      : "Replica group: none (local storage: the portal itself answered).";
  }
  if (!group) return "Replica group: none yet (the owner holds the key in memory; replica groups are not running).";
  return `Replica group: ${group}.`;
}

/** An arc along the outside of the ring, clockwise from the key to the position that owns it. */
function keyArc(key: string, owner: string): string {
  const [x1, y1] = pointOnRing(key, CENTER, CENTER, KEY_ARC);
  const [x2, y2] = pointOnRing(owner, CENTER, CENTER, KEY_ARC);
  const turn = Number(clockwise(key, owner) >> 11n) / 2 ** 53;
  if (turn < 1e-4) return `M${x1} ${y1} L${x2} ${y2}`; // the key sits on the owner's position
  return `M${x1} ${y1} A${KEY_ARC} ${KEY_ARC} 0 ${turn > 0.5 ? 1 : 0} 1 ${x2} ${y2}`;
}

/** Label each node at its first position, pushed outwards until it overlaps no other label. */
function placeLabels(nodes: CacheNode[], maxKeys: number): Map<string, Label> {
  const placed: { box: [number, number, number, number]; id: string; label: Label }[] = [];
  if (nodes.length > 16) return new Map(); // too many to read: the table names them
  const ordered = [...nodes].filter((n) => n.positions.length).sort((a, b) => fraction(a.positions[0]) - fraction(b.positions[0]));
  for (const node of ordered) {
    const text = `${node.id} ${node.keys.toLocaleString("en")}`;
    const width = text.length * LABEL_CHAR_WIDTH;
    let label: Label = { x: 0, y: 0, anchor: "middle" };
    let box: [number, number, number, number] = [0, 0, 0, 0];
    for (let out = dotRadius(node, maxKeys) + 14, tries = 0; tries < 8; out += LABEL_HEIGHT, tries++) {
      const [x, y] = pointOnRing(node.positions[0], CENTER, CENTER, RADIUS + out);
      // Labels grow away from the ring: rightwards on its right half, leftwards on its left.
      const anchor = x > CENTER + 24 ? "start" : x < CENTER - 24 ? "end" : "middle";
      const left = anchor === "start" ? x : anchor === "end" ? x - width : x - width / 2;
      label = { x, y: y + 4, anchor };
      box = [left - LABEL_GAP, y - LABEL_HEIGHT / 2, left + width + LABEL_GAP, y + LABEL_HEIGHT / 2];
      if (!placed.some((p) => overlaps(p.box, box))) break;
    }
    placed.push({ box, id: node.id, label });
  }
  return new Map(placed.map((p) => [p.id, p.label]));
}

function overlaps(a: [number, number, number, number], b: [number, number, number, number]): boolean {
  return a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
}
