// The admin page: sign in with the admin token, then manage clients: a searchable,
// paged table; create (the token is shown once, with a copy button), edit data,
// rotate the token, delete. Every call is gRPC-Web through the web process.

import { html, nothing, render, type TemplateResult } from "lit-html";
import { repeat } from "lit-html/directives/repeat.js";
import { live } from "lit-html/directives/live.js";
import { Code } from "@connectrpc/connect";
import type { Page } from "../main";
import {
  type AdminClient,
  type Client,
  adminClient,
  createdAt,
  createdAtIso,
  describeAdminError,
  errorCode,
} from "../lib/admin";
import { Modal, confirmDialog, copyButton, toast, typing } from "../lib/ui";
import { dataProblem, nameProblem, normalizeCid } from "../lib/validate";

const TOKEN_KEY = "taskring.admin-token";
const PAGE_SIZES = [10, 25, 50, 100];
const SEARCH_PAGE = 500;
const MAX_MATCHES = 200;
const MAX_SCANNED = 50_000;
const SEARCH_DELAY_MS = 250;

export class AdminPage implements Page {
  readonly name = "admin";
  readonly title = "Admin";
  private root: HTMLElement | null = null;

  private api: AdminClient | null = null;
  private tokenInput = "";
  private showToken = false;
  private checking = false;
  private signInError = "";
  private notice = "";

  private pageSize = 25;
  private pageTokens: string[] = [""];
  private pageIndex = 0;
  private clients: Client[] = [];
  private nextPageToken = "";
  private loading = false;
  private listError = "";
  private highlight = "";

  private query = "";
  private searchTimer = 0;
  private searchSeq = 0;
  private searching = false;
  private matches: Client[] = [];
  private scanned = 0;
  private searchComplete = false;
  private triedStored = false;

  private readonly onKey = (event: KeyboardEvent) => {
    if (!this.api || typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (document.querySelector("dialog[open]")) return;
    if (event.key === "/") {
      event.preventDefault();
      this.root?.querySelector<HTMLInputElement>("#client-search")?.focus();
    } else if (event.key === "n" || event.key === "N") {
      event.preventDefault();
      this.openCreate();
    }
  };

  mount(root: HTMLElement): void {
    this.root = root;
    document.addEventListener("keydown", this.onKey);
    if (!this.api && !this.triedStored) {
      this.triedStored = true;
      const stored = sessionStorage.getItem(TOKEN_KEY);
      if (stored) {
        this.tokenInput = stored;
        void this.signIn();
      }
    }
    this.render();
  }

  unmount(): void {
    document.removeEventListener("keydown", this.onKey);
    this.root = null;
  }

  private render(): void {
    if (!this.root) return;
    render(this.api ? this.clientsView() : this.signInView(), this.root);
  }

  // ---- sign in ---------------------------------------------------------------------

  private signInView(): TemplateResult {
    return html`
      <section class="auth-layout">
        <div class="auth-intro">
          <h1>Administration</h1>
          <p class="lead">Create clients, hand out their tokens, and keep their records.</p>
          <p class="muted"><code>taskring up</code> prints the admin token when it starts and keeps it in
            <code>data/admin-token</code>.</p>
        </div>
        <form class="card auth-card" novalidate aria-labelledby="admin-signin-title"
          @submit=${(e: Event) => { e.preventDefault(); void this.signIn(); }}>
          <h2 id="admin-signin-title">Admin sign-in</h2>
          ${this.notice ? html`<p class="banner banner-warning" role="status">${this.notice}</p>` : nothing}
          <input type="text" name="username" value="admin" autocomplete="username" hidden />
          <div class="field">
            <label for="admin-token">Admin token</label>
            <div class="input-with-button">
              <input id="admin-token" class="mono" type=${this.showToken ? "text" : "password"} autocomplete="current-password"
                spellcheck="false" required autofocus .value=${live(this.tokenInput)}
                @input=${(e: Event) => { this.tokenInput = (e.target as HTMLInputElement).value; }} />
              <button type="button" class="btn btn-ghost btn-small" aria-pressed=${this.showToken ? "true" : "false"}
                @click=${() => { this.showToken = !this.showToken; this.render(); }}>${this.showToken ? "Hide" : "Show"}</button>
            </div>
          </div>
          ${this.signInError ? html`<p class="banner banner-error" role="alert" data-testid="admin-signin-error">${this.signInError}</p>` : nothing}
          <button class="btn btn-primary btn-block" type="submit" ?disabled=${this.checking}>
            ${this.checking ? html`<span class="spinner" aria-hidden="true"></span> Checking…` : "Sign in"}
          </button>
        </form>
      </section>
    `;
  }

  private async signIn(): Promise<void> {
    const token = this.tokenInput.trim();
    this.signInError = "";
    this.notice = "";
    if (!token) {
      this.signInError = "Enter the admin token.";
      this.render();
      return;
    }
    this.checking = true;
    this.render();
    const api = adminClient(token);
    try {
      const first = await api.listClients({ pageSize: this.pageSize, pageToken: "" });
      this.api = api;
      this.tokenInput = "";
      sessionStorage.setItem(TOKEN_KEY, token);
      this.pageTokens = [""];
      this.pageIndex = 0;
      this.clients = first.clients;
      this.nextPageToken = first.nextPageToken;
    } catch (error) {
      sessionStorage.removeItem(TOKEN_KEY);
      this.signInError =
        errorCode(error) === Code.Unauthenticated
          ? "That admin token was not accepted. Copy it again from data/admin-token or the output of taskring up."
          : describeAdminError(error);
    } finally {
      this.checking = false;
      this.render();
    }
  }

  private signOut(notice = ""): void {
    this.api = null;
    this.clients = [];
    this.matches = [];
    this.query = "";
    this.notice = notice;
    sessionStorage.removeItem(TOKEN_KEY);
    this.render();
    this.root?.querySelector<HTMLInputElement>("#admin-token")?.focus();
  }

  // ---- the clients table -----------------------------------------------------------

  private clientsView(): TemplateResult {
    const searching = this.query.trim() !== "";
    const rows = searching ? this.matches : this.clients;
    return html`
      <section class="page-head">
        <div>
          <h1>Clients</h1>
          <p class="muted">Everyone who keeps tasks here.</p>
        </div>
        <div class="head-actions">
          <button class="btn btn-primary" @click=${() => this.openCreate()} aria-keyshortcuts="N">New client</button>
          <button class="btn btn-secondary" @click=${() => this.signOut()}>Sign out</button>
        </div>
      </section>
      <div class="toolbar">
        <div class="search">
          <label for="client-search" class="visually-hidden">Search clients by name, CID or data</label>
          <input id="client-search" type="search" placeholder="Search by name, CID or data  ( / )" .value=${live(this.query)}
            @input=${(e: Event) => this.queryChanged((e.target as HTMLInputElement).value)}
            @keydown=${(e: KeyboardEvent) => { if (e.key === "Escape") this.queryChanged(""); }} />
        </div>
        <span class="muted count" aria-live="polite" data-testid="search-status">${searching ? this.searchStatus() : nothing}</span>
        <button class="btn btn-ghost btn-small" @click=${() => void this.refresh()} aria-label="Reload the list">Reload</button>
      </div>
      ${this.listError ? html`<p class="banner banner-error" role="alert">${this.listError}
          <button class="btn btn-small btn-secondary" @click=${() => void this.refresh()}>Try again</button></p>` : nothing}
      ${this.table(rows, searching)}
      ${searching ? nothing : this.pager()}
    `;
  }

  private searchStatus(): string {
    if (this.searching) return `Searching… ${this.scanned.toLocaleString("en")} clients looked at`;
    const found = `${this.matches.length}${this.matches.length >= MAX_MATCHES ? "+" : ""}`;
    const where = this.searchComplete ? "" : ` (first ${this.scanned.toLocaleString("en")} clients)`;
    return `${found} ${this.matches.length === 1 ? "match" : "matches"}${where}`;
  }

  private table(rows: Client[], searching: boolean): TemplateResult {
    const busy = (searching ? this.searching : this.loading) && rows.length === 0;
    if (busy) {
      return html`<div class="card table-card" aria-busy="true">
        ${[0, 1, 2, 3].map(() => html`<div class="skeleton-row"><span class="skeleton"></span><span class="skeleton short"></span></div>`)}
        <p class="visually-hidden" role="status">Loading clients…</p>
      </div>`;
    }
    if (rows.length === 0) {
      return searching
        ? html`<div class="empty"><p>No client matches “${this.query.trim()}”.</p></div>`
        : html`<div class="empty" data-testid="empty-clients">
            <svg viewBox="0 0 48 48" aria-hidden="true"><circle cx="24" cy="18" r="8" /><path d="M10 40c2-8 8-12 14-12s12 4 14 12" /></svg>
            <p><strong>No clients yet.</strong></p>
            <p class="muted">Create the first one; you get its CID and token to hand over.</p>
            <button class="btn btn-primary" @click=${() => this.openCreate()}>New client</button>
          </div>`;
    }
    return html`
      <div class="card table-card">
        <table class="table clients-table" aria-label="Clients">
          <thead><tr><th scope="col">Name</th><th scope="col">CID</th><th scope="col">Data</th><th scope="col">Created</th>
            <th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
          <tbody>${repeat(rows, (c) => c.cid, (c) => this.row(c))}</tbody>
        </table>
      </div>
    `;
  }

  private row(client: Client): TemplateResult {
    return html`
      <tr class=${client.cid === this.highlight ? "flash" : ""} data-cid=${client.cid}>
        <th scope="row" data-label="Name" class="client-name">${client.name}</th>
        <td data-label="CID"><code class="mono">${client.cid}</code></td>
        <td data-label="Data" class="client-data" title=${client.data}>${client.data || html`<span class="muted">—</span>`}</td>
        <td data-label="Created"><time datetime=${createdAtIso(client)}>${createdAt(client)}</time></td>
        <td class="row-actions">
          <button class="btn btn-ghost btn-small" aria-label=${`Edit data of ${client.name}`} @click=${() => this.openEdit(client)}>Edit</button>
          <button class="btn btn-ghost btn-small" aria-label=${`Rotate token of ${client.name}`} @click=${() => void this.rotate(client)}>Rotate token</button>
          <button class="btn btn-ghost btn-small btn-ghost-danger" aria-label=${`Delete ${client.name}`} @click=${() => void this.remove(client)}>Delete</button>
        </td>
      </tr>
    `;
  }

  private pager(): TemplateResult {
    const hasPrevious = this.pageIndex > 0;
    const hasNext = this.nextPageToken !== "";
    return html`
      <nav class="pager" aria-label="Pages of clients">
        <label class="page-size">Per page
          <select @change=${(e: Event) => this.pageSizeChanged(Number((e.target as HTMLSelectElement).value))}>
            ${PAGE_SIZES.map((size) => html`<option value=${size} ?selected=${size === this.pageSize}>${size}</option>`)}
          </select>
        </label>
        <span class="muted" aria-live="polite">Page ${this.pageIndex + 1}</span>
        <button class="btn btn-secondary btn-small" aria-label="Previous page" ?disabled=${!hasPrevious || this.loading} @click=${() => void this.goToPage(this.pageIndex - 1)}>‹ Previous</button>
        <button class="btn btn-secondary btn-small" aria-label="Next page" ?disabled=${!hasNext || this.loading} @click=${() => void this.goToPage(this.pageIndex + 1)}>Next ›</button>
      </nav>
    `;
  }

  // ---- listing and searching ----------------------------------------------------------

  private async goToPage(index: number): Promise<void> {
    if (index > this.pageIndex && this.pageTokens.length <= index) this.pageTokens.push(this.nextPageToken);
    this.pageIndex = index;
    await this.loadPage();
  }

  private pageSizeChanged(size: number): void {
    this.pageSize = size;
    this.pageTokens = [""];
    this.pageIndex = 0;
    void this.loadPage();
  }

  private async loadPage(): Promise<void> {
    if (!this.api) return;
    this.loading = true;
    this.listError = "";
    this.render();
    try {
      const page = await this.api.listClients({ pageSize: this.pageSize, pageToken: this.pageTokens[this.pageIndex] });
      if (page.clients.length === 0 && this.pageIndex > 0) {
        // The page emptied (clients deleted meanwhile): step back to the last one with rows.
        this.pageTokens = this.pageTokens.slice(0, this.pageIndex);
        this.pageIndex -= 1;
        this.loading = false;
        await this.loadPage();
        return;
      }
      this.clients = page.clients;
      this.nextPageToken = page.nextPageToken;
    } catch (error) {
      if (!this.handleCommon(error)) this.listError = describeAdminError(error);
    } finally {
      this.loading = false;
      this.render();
    }
  }

  private async refresh(): Promise<void> {
    if (this.query.trim()) await this.search(this.query);
    else await this.loadPage();
  }

  private queryChanged(value: string): void {
    this.query = value;
    window.clearTimeout(this.searchTimer);
    if (!value.trim()) {
      this.searchSeq += 1;
      this.searching = false;
      this.matches = [];
      this.render();
      return;
    }
    this.searching = true;
    this.render();
    this.searchTimer = window.setTimeout(() => void this.search(value), SEARCH_DELAY_MS);
  }

  /** A CID is looked up directly; other text is matched against every client, page by page. */
  private async search(raw: string): Promise<void> {
    if (!this.api) return;
    const seq = ++this.searchSeq;
    const query = raw.trim().toLowerCase();
    this.searching = true;
    this.matches = [];
    this.scanned = 0;
    this.searchComplete = false;
    this.listError = "";
    this.render();
    try {
      const cid = normalizeCid(query);
      if (cid) {
        this.matches = await this.findByCid(cid);
        this.searchComplete = true;
      } else {
        await this.scan(query, seq);
      }
    } catch (error) {
      if (seq === this.searchSeq && !this.handleCommon(error)) this.listError = describeAdminError(error);
    } finally {
      if (seq === this.searchSeq) {
        this.searching = false;
        this.render();
      }
    }
  }

  private async findByCid(cid: string): Promise<Client[]> {
    try {
      return [await this.api!.getClient({ cid })];
    } catch (error) {
      if (errorCode(error) === Code.NotFound) return [];
      throw error;
    }
  }

  private async scan(query: string, seq: number): Promise<void> {
    let pageToken = "";
    do {
      const page = await this.api!.listClients({ pageSize: SEARCH_PAGE, pageToken });
      if (seq !== this.searchSeq) return;
      this.scanned += page.clients.length;
      const found = page.clients.filter(
        (c) => c.name.toLowerCase().includes(query) || c.cid.includes(query) || c.data.toLowerCase().includes(query),
      );
      this.matches = [...this.matches, ...found].slice(0, MAX_MATCHES);
      this.render();
      pageToken = page.nextPageToken;
    } while (pageToken && this.matches.length < MAX_MATCHES && this.scanned < MAX_SCANNED);
    this.searchComplete = !pageToken;
  }

  /** Unauthenticated means the same everywhere: back to sign-in. True when handled. */
  private handleCommon(error: unknown): boolean {
    if (errorCode(error) === Code.Unauthenticated) {
      this.signOut("The admin token is no longer accepted. Sign in again.");
      return true;
    }
    return false;
  }

  private replaceRow(client: Client): void {
    const swap = (list: Client[]) => list.map((c) => (c.cid === client.cid ? client : c));
    this.clients = swap(this.clients);
    this.matches = swap(this.matches);
  }

  private dropRow(cid: string): void {
    this.clients = this.clients.filter((c) => c.cid !== cid);
    this.matches = this.matches.filter((c) => c.cid !== cid);
  }

  private flashRow(cid: string): void {
    this.highlight = cid;
    window.setTimeout(() => {
      if (this.highlight === cid) {
        this.highlight = "";
        this.render();
      }
    }, 1600);
  }

  // ---- create ------------------------------------------------------------------------

  private openCreate(): void {
    if (!this.api) return;
    const modal = new Modal("New client");
    const state = { name: "", data: "", nameError: "", error: "", saving: false };
    const view = (): TemplateResult => html`
      <form class="modal-body" novalidate @submit=${(e: Event) => { e.preventDefault(); void submit(); }}>
        <h2 class="modal-title">New client</h2>
        <div class="field">
          <label for="new-client-name">Name</label>
          <input id="new-client-name" autocomplete="off" autofocus .value=${live(state.name)} aria-invalid=${state.nameError ? "true" : "false"}
            aria-describedby="new-client-name-hint new-client-name-error"
            @input=${(e: Event) => { state.name = (e.target as HTMLInputElement).value; state.nameError = ""; }} />
          <p id="new-client-name-hint" class="hint">Unique; names differing only in case or spacing are the same name.</p>
          <p id="new-client-name-error" class="field-error" role=${state.nameError ? "alert" : nothing}>${state.nameError}</p>
        </div>
        <div class="field">
          <label for="new-client-data">Data <span class="muted">(optional)</span></label>
          <textarea id="new-client-data" rows="3" placeholder="Notes about this client" .value=${live(state.data)}
            @input=${(e: Event) => { state.data = (e.target as HTMLTextAreaElement).value; }}></textarea>
        </div>
        ${state.error ? html`<p class="banner banner-error" role="alert">${state.error}</p>` : nothing}
        <div class="modal-actions">
          <button type="button" class="btn btn-secondary" @click=${() => modal.close()}>Cancel</button>
          <button type="submit" class="btn btn-primary" ?disabled=${state.saving}>${state.saving ? "Creating…" : "Create client"}</button>
        </div>
      </form>
    `;
    const submit = async () => {
      state.nameError = nameProblem(state.name) ?? "";
      state.error = dataProblem(state.data) ?? "";
      if (state.nameError || state.error) {
        modal.update(view());
        return;
      }
      state.saving = true;
      modal.update(view());
      try {
        const client = await this.api!.createClient({ name: state.name.trim(), data: state.data });
        modal.update(this.secretView(modal, "Client created", client, "Hand these to the client. The token is shown only this once; if it is lost, rotate it."));
        modal.element.querySelector<HTMLButtonElement>(".copy")?.focus();
        this.flashRow(client.cid);
        toast(`Created client “${client.name}”.`, "success");
        void this.refresh();
      } catch (error) {
        state.saving = false;
        if (errorCode(error) === Code.AlreadyExists) {
          state.nameError = `A client named “${state.name.trim()}” already exists (names ignore case and outer spaces).`;
        } else if (this.handleCommon(error)) {
          modal.close();
          return;
        } else {
          state.error = describeAdminError(error);
        }
        modal.update(view());
        modal.element.querySelector<HTMLInputElement>("#new-client-name")?.focus();
      }
    };
    modal.show(view());
  }

  /** The CID and a fresh token, each with a copy button: shown once, after create or rotate. */
  private secretView(modal: Modal, title: string, client: Client, note: string): TemplateResult {
    return html`
      <div class="modal-body" data-testid="secret">
        <h2 class="modal-title">${title}</h2>
        <p class="modal-text">${note}</p>
        <dl class="secrets">
          <dt>Name</dt><dd>${client.name}</dd>
          <dt>CID</dt>
          <dd class="secret-row"><code class="mono secret" data-testid="secret-cid">${client.cid}</code>${copyButton(client.cid, "Copy the CID")}</dd>
          <dt>Token</dt>
          <dd class="secret-row"><code class="mono secret" data-testid="secret-token">${client.token}</code>${copyButton(client.token, "Copy the token")}</dd>
        </dl>
        <p class="banner banner-warning">This token will not be shown again.</p>
        <div class="modal-actions">
          <button type="button" class="btn btn-primary" @click=${() => modal.close()}>Done</button>
        </div>
      </div>
    `;
  }

  // ---- edit, rotate, delete ------------------------------------------------------------

  private openEdit(client: Client): void {
    const modal = new Modal(`Edit ${client.name}`);
    const state = { data: client.data, error: "", saving: false };
    const view = (): TemplateResult => html`
      <form class="modal-body" novalidate @submit=${(e: Event) => { e.preventDefault(); void submit(); }}>
        <h2 class="modal-title">Edit ${client.name}</h2>
        <p class="muted">CID <code class="mono">${client.cid}</code></p>
        <div class="field">
          <label for="edit-client-data">Data</label>
          <textarea id="edit-client-data" rows="5" autofocus .value=${live(state.data)}
            @input=${(e: Event) => { state.data = (e.target as HTMLTextAreaElement).value; }}
            @keydown=${(e: KeyboardEvent) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); void submit(); } }}></textarea>
        </div>
        ${state.error ? html`<p class="banner banner-error" role="alert">${state.error}</p>` : nothing}
        <div class="modal-actions">
          <button type="button" class="btn btn-secondary" @click=${() => modal.close()}>Cancel</button>
          <button type="submit" class="btn btn-primary" ?disabled=${state.saving}>${state.saving ? "Saving…" : "Save"}</button>
        </div>
      </form>
    `;
    const submit = async () => {
      state.error = dataProblem(state.data) ?? "";
      if (state.error) {
        modal.update(view());
        return;
      }
      state.saving = true;
      modal.update(view());
      try {
        const updated = await this.api!.updateClient({ cid: client.cid, data: state.data });
        this.replaceRow(updated);
        this.flashRow(updated.cid);
        modal.close();
        toast(`Saved the data of “${client.name}”.`, "success");
        this.render();
      } catch (error) {
        state.saving = false;
        if (errorCode(error) === Code.NotFound) {
          modal.close();
          this.dropRow(client.cid);
          toast(`“${client.name}” no longer exists; it was deleted meanwhile.`, "error");
          this.render();
        } else if (this.handleCommon(error)) {
          modal.close();
        } else {
          state.error = describeAdminError(error);
          modal.update(view());
        }
      }
    };
    modal.show(view());
  }

  private async rotate(client: Client): Promise<void> {
    const yes = await confirmDialog({
      title: `Rotate the token of ${client.name}?`,
      body: html`The current token stops working at once: pages and programs signed in with it are signed out.
        You get a new token to hand over.`,
      confirm: "Rotate token",
      danger: true,
    });
    if (!yes || !this.api) return;
    try {
      const rotated = await this.api.rotateToken({ cid: client.cid });
      const modal = new Modal("New token");
      modal.show(this.secretView(modal, "New token", rotated, `The old token of ${rotated.name} no longer works. Hand over this one.`));
      modal.element.querySelector<HTMLButtonElement>("[data-testid=secret-token] + .copy")?.focus();
    } catch (error) {
      this.failed(error, client);
    }
  }

  private async remove(client: Client): Promise<void> {
    const yes = await confirmDialog({
      title: `Delete ${client.name}?`,
      body: html`This deletes the client <code class="mono">${client.cid}</code> and all its tasks, and its token stops
        working. It cannot be undone.`,
      confirm: "Delete client",
      danger: true,
    });
    if (!yes || !this.api) return;
    try {
      await this.api.deleteClient({ cid: client.cid });
      this.dropRow(client.cid);
      toast(`Deleted client “${client.name}”.`, "success");
      this.render();
      void this.refresh();
    } catch (error) {
      this.failed(error, client);
    }
  }

  private failed(error: unknown, client: Client): void {
    if (this.handleCommon(error)) return;
    if (errorCode(error) === Code.NotFound) {
      this.dropRow(client.cid);
      toast(`“${client.name}” no longer exists; it was deleted meanwhile.`, "error");
      this.render();
      return;
    }
    toast(describeAdminError(error), "error");
  }
}
