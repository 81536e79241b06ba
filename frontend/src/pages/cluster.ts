// The cluster page: a live drawing of the Chord ring (every cache node at its
// positions, the fingers of the selected node, key counts), the replica groups with
// their leaders, the portals, and the route of the last traced request. It polls
// GET /api/cluster every second, so a node killed with kill -9 disappears within the
// few seconds its heartbeats take to go stale, and the change log says so.

import { html, nothing, render, svg, type SVGTemplateResult, type TemplateResult } from "lit-html";
import { repeat } from "lit-html/directives/repeat.js";
import type { Page } from "../main";
import {
  type CacheNode,
  type Cluster,
  type ReplicaGroup,
  changes,
  fingerTarget,
  nodePosition,
  parseCluster,
  pointOnRing,
} from "../lib/cluster";
import { type TracedRequest, loadTrace, onTrace } from "../lib/trace";
import { ago } from "../lib/ui";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 3000;
const MAX_LOG = 30;
const SIZE = 560;
const CENTER = SIZE / 2;
const RADIUS = 160;
const PALETTE = ["#4f46e5", "#0d9488", "#d97706", "#db2777", "#2563eb", "#65a30d", "#9333ea", "#dc2626", "#0891b2", "#a16207"];

interface LogEntry {
  at: number;
  text: string;
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
      const response = await fetch("/api/cluster", {
        signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
        cache: "no-store",
      });
      if (!response.ok) throw new Error(`/api/cluster answered HTTP ${response.status}`);
      this.update(parseCluster(await response.json()));
      this.error = "";
    } catch (error) {
      const reason = error instanceof Error && error.name !== "TimeoutError" ? error.message : "no answer in time";
      this.error = `Cannot reach the web server (${reason}); retrying every second.`;
    }
    this.render();
    if (this.polling) this.timer = window.setTimeout(() => void this.poll(), POLL_MS);
  }

  private update(next: Cluster): void {
    if (this.cluster) {
      const now = Date.now();
      for (const text of changes(this.cluster, next)) this.log.unshift({ at: now, text });
      this.log = this.log.slice(0, MAX_LOG);
    }
    this.cluster = next;
    this.fetchedAt = Date.now();
    if (this.selected && !next.cacheNodes.some((n) => n.id === this.selected)) this.selected = null;
    if (!this.selected && next.cacheNodes.length) this.selected = next.cacheNodes[0].id;
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
            <span class="muted small">${nodes.length} cache ${nodes.length === 1 ? "node" : "nodes"} · ${totalKeys(nodes).toLocaleString("en")} keys</span></h2>
          ${nodes.length ? this.ring(nodes) : this.emptyRing()}
        </section>
        <aside class="side">
          ${nodes.length ? this.nodeDetails(nodes) : nothing}
          ${this.traceCard(nodes)}
        </aside>
      </div>
      ${nodes.length ? this.nodesTable(nodes) : nothing}
      <div class="two-columns">
        ${this.groupsCard(cluster.replicaGroups)}
        ${this.portalsCard(cluster)}
      </div>
      ${this.logCard()}
    `;
  }

  // ---- the ring ------------------------------------------------------------------------

  private emptyRing(): TemplateResult {
    return html`<div class="empty ring-empty" data-testid="empty-ring">
      <svg viewBox="0 0 48 48" aria-hidden="true"><circle cx="24" cy="24" r="16" stroke-dasharray="4 4" /></svg>
      <p><strong>No cache nodes: this system runs in local storage mode.</strong></p>
      <p class="muted">Each portal keeps the full tables in memory, and the portals converge by publishing every change
        over MQTT. With ring storage, the cache nodes appear here on their Chord ring.</p>
    </div>`;
  }

  private ring(nodes: CacheNode[]): TemplateResult {
    const colors = colorsOf(nodes);
    const selected = nodes.find((n) => n.id === this.selected) ?? null;
    const maxKeys = Math.max(1, ...nodes.map((n) => n.keys));
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
        ${this.route(nodes)}
        ${nodes.map((node) => this.nodeMarks(node, colors.get(node.id)!, node.id === this.selected, maxKeys, nodes.length))}
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

  private nodeMarks(node: CacheNode, color: string, selected: boolean, maxKeys: number, count: number): SVGTemplateResult {
    const [first, ...virtual] = node.positions;
    if (!first) return svg``;
    const radius = 6 + 6 * Math.sqrt(node.keys / maxKeys);
    const [x, y] = pointOnRing(first, CENTER, CENTER, RADIUS);
    const [lx, ly] = pointOnRing(first, CENTER, CENTER, RADIUS + radius + 10);
    // Labels grow away from the ring: rightwards on its right half, leftwards on its left.
    const anchor = lx > CENTER + 24 ? "start" : lx < CENTER - 24 ? "end" : "middle";
    const choose = () => this.select(node.id);
    return svg`
      ${virtual.map((p) => {
        const [vx, vy] = pointOnRing(p, CENTER, CENTER, RADIUS);
        return svg`<circle class="vnode" cx=${vx} cy=${vy} r="4" fill=${color} opacity=${selected ? 0.9 : 0.55}><title>${node.id} at ${p}</title></circle>`;
      })}
      <g class="node ${selected ? "node-selected" : ""}" role="button" tabindex="0" data-node=${node.id}
        aria-pressed=${selected ? "true" : "false"} aria-label=${`${node.id}, ${node.keys} keys, at ${first}`}
        @click=${choose} @keydown=${(e: KeyboardEvent) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } }}>
        <circle class="node-halo" cx=${x} cy=${y} r=${radius + 5} />
        <circle class="node-dot" cx=${x} cy=${y} r=${radius} fill=${color} />
        ${count <= 16 ? svg`<text class="node-label" x=${lx} y=${ly + 4} text-anchor=${anchor}>${node.id}</text>` : nothing}
        <title>${node.id}: ${node.keys} keys, at ${first}</title>
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
      return svg`<path class="finger" d="M${x1} ${y1} Q${cx} ${cy} ${x2} ${y2}" marker-end="url(#arrow)" />`;
    })}`;
  }

  private route(nodes: CacheNode[]): SVGTemplateResult {
    const points = (this.trace?.route ?? [])
      .map((id) => nodePosition(id, nodes))
      .filter((p): p is string => p !== null)
      .map((p) => pointOnRing(p, CENTER, CENTER, RADIUS + 10));
    if (points.length < 2) return svg``;
    const d = points.map(([x, y], i) => `${i ? "L" : "M"}${x} ${y}`).join(" ");
    return svg`<path class="route" d=${d} marker-end="url(#route-arrow)" />`;
  }

  // ---- side panel --------------------------------------------------------------------

  private nodeDetails(nodes: CacheNode[]): TemplateResult {
    const node = nodes.find((n) => n.id === this.selected);
    if (!node) return html`<section class="card"><p class="muted">Select a node to see its fingers.</p></section>`;
    return html`
      <section class="card" aria-labelledby="node-title" data-testid="node-details">
        <h2 id="node-title" class="card-title">${node.id}</h2>
        <dl class="facts">
          <dt>Keys</dt><dd>${node.keys.toLocaleString("en")}</dd>
          <dt>Positions</dt><dd class="mono small">${node.positions.join(", ") || "—"}</dd>
          <dt>Successors</dt><dd>${node.successors.join(" → ") || "—"}</dd>
        </dl>
        <h3 class="small-title">Fingers</h3>
        ${node.fingers.length
          ? html`<ol class="fingers">${node.fingers.map((f, i) => {
              const target = fingerTarget(f, nodes);
              return html`<li><span class="muted">${i + 1}.</span> ${f.start ? html`<code class="mono small">${f.start}</code> → ` : nothing}
                ${target.node?.id ?? f.node ?? target.position ?? "?"}</li>`;
            })}</ol>`
          : html`<p class="muted">No finger table reported.</p>`}
      </section>
    `;
  }

  private traceCard(nodes: CacheNode[]): TemplateResult {
    const trace = this.trace;
    return html`
      <section class="card" aria-labelledby="trace-title" data-testid="trace">
        <h2 id="trace-title" class="card-title">Last traced request</h2>
        ${trace
          ? html`
              <p class="trace-head"><code class="mono">${trace.op}</code>
                <span class="badge ${trace.ok ? "badge-success" : "badge-danger"}">${trace.ok ? "ok" : "failed"}</span>
                <span class="muted small">${ago(trace.at)}</span></p>
              <ol class="route-steps" aria-label="Route">
                ${trace.route.map((id, i) => html`<li class=${id === trace.owner ? "owner" : ""}>
                  <span class="step">${i + 1}</span>${id}${nodes.some((n) => n.id === id) ? nothing : html` <span class="muted small">(portal)</span>`}
                  ${id === trace.owner ? html`<span class="badge badge-accent">owner</span>` : nothing}</li>`)}
              </ol>
              <p class="muted small">Replica group <strong>${trace.group}</strong>${trace.group === "local" ? " (local storage: the portal itself answered)" : ""}</p>`
          : html`<p class="muted">No traced request yet. Requests from the <a href="/" data-nav>Tasks page</a> are traced,
              and their route through the cluster shows here.</p>`}
      </section>
    `;
  }

  // ---- tables --------------------------------------------------------------------------

  private nodesTable(nodes: CacheNode[]): TemplateResult {
    const colors = colorsOf(nodes);
    const maxKeys = Math.max(1, ...nodes.map((n) => n.keys));
    return html`
      <section class="card table-card" aria-labelledby="nodes-title">
        <h2 id="nodes-title" class="card-title card-title-padded">Cache nodes</h2>
        <table class="table" aria-label="Cache nodes">
          <thead><tr><th scope="col">Node</th><th scope="col">Keys</th><th scope="col">Positions</th><th scope="col">Successor</th><th scope="col">Fingers</th></tr></thead>
          <tbody>${repeat(nodes, (n) => n.id, (n) => html`
            <tr class=${n.id === this.selected ? "selected" : ""}>
              <th scope="row" data-label="Node">
                <button class="link-button" aria-pressed=${n.id === this.selected ? "true" : "false"} @click=${() => this.select(n.id)}>
                  <span class="swatch" style="background:${colors.get(n.id)}"></span>${n.id}</button></th>
              <td data-label="Keys"><span class="bar"><span style="width:${(100 * n.keys) / maxKeys}%"></span></span>${n.keys.toLocaleString("en")}</td>
              <td data-label="Positions">${n.positions.length}</td>
              <td data-label="Successor">${n.successors[0] ?? "—"}</td>
              <td data-label="Fingers">${n.fingers.length}</td>
            </tr>`)}</tbody>
        </table>
      </section>
    `;
  }

  private groupsCard(groups: ReplicaGroup[]): TemplateResult {
    return html`
      <section class="card" aria-labelledby="groups-title" data-testid="replica-groups">
        <h2 id="groups-title" class="card-title">Replica groups</h2>
        ${groups.length === 0
          ? html`<p class="muted">No replica groups: in local storage mode nothing is replicated to disk.</p>`
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
          ? html`<p class="muted">Nothing has changed since this page opened. Joins, departures and new leaders show here.</p>`
          : html`<ul class="log" aria-live="polite" data-testid="change-log">${this.log.map((entry) => html`
              <li><time class="muted small">${new Date(entry.at).toLocaleTimeString()}</time> ${entry.text}</li>`)}</ul>`}
      </section>
    `;
  }
}

function colorsOf(nodes: CacheNode[]): Map<string, string> {
  const ids = nodes.map((n) => n.id).sort();
  return new Map(ids.map((id, i) => [id, PALETTE[i % PALETTE.length]]));
}

function totalKeys(nodes: CacheNode[]): number {
  return nodes.reduce((sum, n) => sum + n.keys, 0);
}
