// The client page: sign in with a CID and token, then keep your tasks. Changes made
// anywhere (another tab, the CLI, the other portal) arrive as watch events and show
// at once; every error code gets a sentence saying what happened and what to do.

import { html, nothing, render, type TemplateResult } from "lit-html";
import { repeat } from "lit-html/directives/repeat.js";
import { live } from "lit-html/directives/live.js";
import type { Page } from "../main";
import { ClientSession, type ConnectionState } from "../lib/portal";
import { type ChangeEvent, type Task, ProtocolError, describeError } from "../lib/protocol";
import { portalOf, saveTrace } from "../lib/trace";
import { confirmDialog, copyButton, toast, typing } from "../lib/ui";
import {
  MAX_DESCRIPTION_BYTES,
  MAX_TITLE_BYTES,
  descriptionProblem,
  normalizeCid,
  titleProblem,
  utf8Bytes,
} from "../lib/validate";

const CREDENTIALS = "taskring.client";
const FLASH_MS = 1600;

interface Credentials {
  cid: string;
  token: string;
}

interface Edit {
  draft: string;
  saving: boolean;
  error: string;
  changedElsewhere: boolean;
}

function storedCredentials(): Credentials | null {
  for (const store of [sessionStorage, localStorage]) {
    try {
      const value = JSON.parse(store.getItem(CREDENTIALS) ?? "null") as Credentials | null;
      if (value && normalizeCid(value.cid) && typeof value.token === "string") return value;
    } catch {
      // Unreadable: ignore it and ask.
    }
  }
  return null;
}

function storeCredentials(credentials: Credentials | null, remember: boolean): void {
  for (const store of [sessionStorage, localStorage]) store.removeItem(CREDENTIALS);
  if (credentials) (remember ? localStorage : sessionStorage).setItem(CREDENTIALS, JSON.stringify(credentials));
}

export class ClientPage implements Page {
  readonly name = "client";
  readonly title = "Tasks";
  private root: HTMLElement | null = null;

  // sign-in
  private cidInput = "";
  private tokenInput = "";
  private remember = false;
  private showToken = false;
  private signingIn = false;
  private signInError = "";
  private cidError = "";
  private notice = "";

  // signed in
  private session: ClientSession | null = null;
  private tasks: Task[] = [];
  private connection: ConnectionState = "closed";
  private connectionDetail = "";
  private portal = "";
  private newTitle = "";
  private newDescription = "";
  private titleError = "";
  private addError = "";
  private adding = false;
  private filter = "";
  private clearing = false;
  private readonly edits = new Map<string, Edit>();
  private readonly busy = new Set<string>();
  private readonly flashing = new Map<string, number>();
  private triedStored = false;

  private readonly onKey = (event: KeyboardEvent) => this.shortcut(event);

  mount(root: HTMLElement): void {
    this.root = root;
    document.addEventListener("keydown", this.onKey);
    if (!this.session && !this.triedStored) {
      this.triedStored = true;
      const stored = storedCredentials();
      if (stored) {
        this.cidInput = stored.cid;
        this.tokenInput = stored.token;
        this.remember = localStorage.getItem(CREDENTIALS) !== null;
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
    render(this.session ? this.tasksView() : this.signInView(), this.root);
  }

  // ---- sign in ----------------------------------------------------------------------

  private signInView(): TemplateResult {
    return html`
      <section class="auth-layout">
        <div class="auth-intro">
          <h1>Your tasks, everywhere</h1>
          <p class="lead">Sign in with the CID and token your administrator gave you. Your tasks stay in step
            across every tab, the command line and every portal.</p>
          <p class="muted">No credentials yet? An administrator creates them on the
            <a href="/admin" data-nav>Admin page</a>.</p>
        </div>
        <form class="card auth-card" @submit=${(e: Event) => { e.preventDefault(); void this.signIn(); }} novalidate aria-labelledby="signin-title">
          <h2 id="signin-title">Sign in</h2>
          ${this.notice ? html`<p class="banner banner-warning" role="status">${this.notice}</p>` : nothing}
          <div class="field">
            <label for="cid">Client ID (CID)</label>
            <input id="cid" name="cid" class="mono" autocomplete="username" spellcheck="false" autocapitalize="off"
              placeholder="16 hex digits, e.g. 9f86d081884c7d65" maxlength="40" required autofocus
              aria-invalid=${this.cidError ? "true" : "false"} aria-describedby="cid-error"
              .value=${live(this.cidInput)} @input=${(e: Event) => { this.cidInput = (e.target as HTMLInputElement).value; this.cidError = ""; }} />
            <p id="cid-error" class="field-error" role=${this.cidError ? "alert" : nothing}>${this.cidError}</p>
          </div>
          <div class="field">
            <label for="token">Token</label>
            <div class="input-with-button">
              <input id="token" name="token" class="mono" type=${this.showToken ? "text" : "password"}
                autocomplete="current-password" spellcheck="false" required
                .value=${live(this.tokenInput)} @input=${(e: Event) => { this.tokenInput = (e.target as HTMLInputElement).value; }} />
              <button type="button" class="btn btn-ghost btn-small" aria-pressed=${this.showToken ? "true" : "false"}
                @click=${() => { this.showToken = !this.showToken; this.render(); }}>${this.showToken ? "Hide" : "Show"}</button>
            </div>
          </div>
          <label class="check">
            <input type="checkbox" .checked=${this.remember} @change=${(e: Event) => { this.remember = (e.target as HTMLInputElement).checked; }} />
            Keep me signed in on this device
          </label>
          ${this.signInError ? html`<p class="banner banner-error" role="alert" data-testid="signin-error">${this.signInError}</p>` : nothing}
          <button class="btn btn-primary btn-block" type="submit" ?disabled=${this.signingIn}>
            ${this.signingIn ? html`<span class="spinner" aria-hidden="true"></span> Signing in…` : "Sign in"}
          </button>
        </form>
      </section>
    `;
  }

  private async signIn(): Promise<void> {
    const cid = normalizeCid(this.cidInput);
    this.signInError = "";
    this.notice = "";
    if (!cid) {
      this.cidError = "A CID is 16 hex digits (0-9, a-f), like 9f86d081884c7d65.";
      this.render();
      return;
    }
    if (!this.tokenInput.trim()) {
      this.signInError = "Enter your token.";
      this.render();
      return;
    }
    this.signingIn = true;
    this.render();
    const token = this.tokenInput.trim();
    const session = new ClientSession(cid, token, {
      onEvent: (event) => this.applyEvent(event),
      onState: (state, detail) => this.connectionChanged(session, state, detail),
      onResync: (tasks) => this.resync(tasks),
      onSignedOut: (reason) => this.signedOut(reason),
      onTrace: (op, ok, trace) => {
        this.portal = portalOf(trace) ?? this.portal;
        saveTrace({ ...trace, op, ok, at: Date.now(), cid });
      },
    });
    try {
      const tasks = await session.start();
      this.session = session;
      this.tasks = tasks;
      this.tokenInput = "";
      storeCredentials({ cid, token }, this.remember);
    } catch (error) {
      this.signInError =
        error instanceof ProtocolError && error.code === "unauthorized"
          ? "That CID and token do not match a client. Check both, or ask your administrator for a new token."
          : describeError(error);
      storeCredentials(null, false);
    } finally {
      this.signingIn = false;
      this.render();
    }
    if (this.session) this.root?.querySelector<HTMLInputElement>("#new-title")?.focus();
  }

  private signOut(): void {
    this.session?.stop();
    this.session = null;
    this.tasks = [];
    this.edits.clear();
    storeCredentials(null, false);
    this.render();
    this.root?.querySelector<HTMLInputElement>("#cid")?.focus();
  }

  private signedOut(reason: string): void {
    this.signOut();
    this.notice = reason;
    this.render();
  }

  // ---- the task list -------------------------------------------------------------------

  private tasksView(): TemplateResult {
    const session = this.session!;
    const query = this.filter.trim().toLowerCase();
    const shown = query
      ? this.tasks.filter((t) => t.title.toLowerCase().includes(query) || t.description.toLowerCase().includes(query))
      : this.tasks;
    return html`
      <section class="page-head">
        <div>
          <h1>Your tasks</h1>
          <p class="muted cid-line">Client <code class="mono" data-testid="signed-in-cid">${session.cid}</code>
            ${copyButton(session.cid, "Copy your CID")}</p>
        </div>
        <div class="head-actions">
          ${this.connectionPill()}
          <button class="btn btn-secondary" @click=${() => this.signOut()}>Sign out</button>
        </div>
      </section>
      ${this.addForm()}
      <div class="toolbar">
        <div class="search">
          <label for="task-filter" class="visually-hidden">Filter tasks</label>
          <input id="task-filter" type="search" placeholder="Filter tasks  ( / )" .value=${live(this.filter)}
            @input=${(e: Event) => { this.filter = (e.target as HTMLInputElement).value; this.render(); }}
            @keydown=${(e: KeyboardEvent) => { if (e.key === "Escape") { this.filter = ""; this.render(); } }} />
        </div>
        <span class="muted count" aria-live="polite" data-testid="task-count">
          ${query ? `${shown.length} of ${this.tasks.length}` : `${this.tasks.length}`} ${this.tasks.length === 1 ? "task" : "tasks"}
        </span>
        <button class="btn btn-danger-outline" ?disabled=${this.tasks.length === 0 || this.clearing} @click=${() => void this.deleteAll()}>
          ${this.clearing ? "Deleting…" : "Delete all"}
        </button>
      </div>
      ${this.tasks.length === 0
        ? html`<div class="empty" data-testid="empty-tasks">
            <svg viewBox="0 0 48 48" aria-hidden="true"><rect x="8" y="10" width="32" height="30" rx="5" /><path d="M16 20h16M16 27h10" /></svg>
            <p><strong>No tasks yet.</strong></p>
            <p class="muted">Add your first one above; it shows up in your other tabs at once.</p>
          </div>`
        : shown.length === 0
          ? html`<div class="empty"><p>No task matches “${this.filter}”.</p></div>`
          : html`<ul class="task-list" aria-label="Tasks">${repeat(shown, (t) => t.title, (t) => this.taskRow(t))}</ul>`}
      <p class="kbd-hint muted"><kbd>N</kbd> new task · <kbd>/</kbd> filter · <kbd>Ctrl</kbd>+<kbd>Enter</kbd> save · <kbd>Esc</kbd> cancel</p>
    `;
  }

  private connectionPill(): TemplateResult {
    const labels: Record<ConnectionState, string> = {
      connecting: "Connecting…",
      live: this.portal ? `Live · ${this.portal}` : "Live",
      reconnecting: "Reconnecting…",
      closed: "Offline",
    };
    const title =
      this.connection !== "live"
        ? this.connectionDetail
        : this.portal
          ? `Connected through client portal ${this.portal}`
          : "Connected through a client portal";
    return html`<span class="pill pill-${this.connection}" role="status" title=${title} data-testid="connection">
      <span class="dot" aria-hidden="true"></span>${labels[this.connection]}</span>`;
  }

  private addForm(): TemplateResult {
    const titleBytes = utf8Bytes(this.newTitle);
    const descriptionBytes = utf8Bytes(this.newDescription);
    return html`
      <form class="card add-form" aria-label="Add a task" novalidate @submit=${(e: Event) => { e.preventDefault(); void this.add(); }}>
        <div class="field">
          <label for="new-title">Title</label>
          <input id="new-title" autocomplete="off" placeholder="What needs doing?" .value=${live(this.newTitle)}
            aria-invalid=${this.titleError ? "true" : "false"} aria-describedby="new-title-error"
            @input=${(e: Event) => { this.newTitle = (e.target as HTMLInputElement).value; this.titleError = ""; this.render(); }} />
          <p id="new-title-error" class="field-error" role=${this.titleError ? "alert" : nothing}>${this.titleError}</p>
          ${titleBytes > MAX_TITLE_BYTES * 0.8 ? html`<p class="hint">${titleBytes} / ${MAX_TITLE_BYTES} bytes</p>` : nothing}
        </div>
        <div class="field">
          <label for="new-description">Description <span class="muted">(optional)</span></label>
          <textarea id="new-description" rows="2" placeholder="Details, links, notes…" .value=${live(this.newDescription)}
            @input=${(e: Event) => { this.newDescription = (e.target as HTMLTextAreaElement).value; this.render(); }}
            @keydown=${(e: KeyboardEvent) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); void this.add(); } }}></textarea>
          ${descriptionBytes > MAX_DESCRIPTION_BYTES * 0.8
            ? html`<p class="hint">${descriptionBytes.toLocaleString("en")} / ${MAX_DESCRIPTION_BYTES.toLocaleString("en")} bytes</p>`
            : nothing}
        </div>
        ${this.addError ? html`<p class="banner banner-error" role="alert">${this.addError}</p>` : nothing}
        <div class="form-actions">
          <button class="btn btn-primary" type="submit" ?disabled=${this.adding}>${this.adding ? "Adding…" : "Add task"}</button>
        </div>
      </form>
    `;
  }

  private taskRow(task: Task): TemplateResult {
    const edit = this.edits.get(task.title);
    const busy = this.busy.has(task.title);
    const flash = this.flashing.has(task.title);
    return html`
      <li class="task ${flash ? "flash" : ""} ${edit ? "editing" : ""}" data-title=${task.title} aria-busy=${busy ? "true" : "false"}>
        <div class="task-main">
          <h3 class="task-title">${task.title}</h3>
          ${edit ? this.editor(task, edit) : task.description
            ? html`<p class="task-description" @dblclick=${() => this.startEdit(task)}>${task.description}</p>`
            : html`<p class="task-description muted empty-description" @dblclick=${() => this.startEdit(task)}>No description</p>`}
        </div>
        ${edit
          ? nothing
          : html`<div class="task-actions">
              <button class="btn btn-ghost btn-small edit" aria-label=${`Edit ${task.title}`} ?disabled=${busy} @click=${() => this.startEdit(task)}>Edit</button>
              <button class="btn btn-ghost btn-small btn-ghost-danger delete" aria-label=${`Delete ${task.title}`} ?disabled=${busy}
                @click=${() => void this.remove(task)}>Delete</button>
            </div>`}
      </li>
    `;
  }

  private editor(task: Task, edit: Edit): TemplateResult {
    const id = `edit-${encodeURIComponent(task.title)}`;
    return html`
      <form class="editor" novalidate @submit=${(e: Event) => { e.preventDefault(); void this.saveEdit(task.title); }}>
        <label class="visually-hidden" for=${id}>Description of ${task.title}</label>
        <textarea id=${id} class="edit-description" rows="3" .value=${live(edit.draft)} ?disabled=${edit.saving}
          @input=${(e: Event) => { edit.draft = (e.target as HTMLTextAreaElement).value; edit.error = ""; }}
          @keydown=${(e: KeyboardEvent) => {
            if (e.key === "Escape") { e.preventDefault(); this.cancelEdit(task.title); }
            if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); void this.saveEdit(task.title); }
          }}></textarea>
        ${edit.changedElsewhere ? html`<p class="banner banner-warning" role="status">This task was changed elsewhere while you edit; saving replaces that change.</p>` : nothing}
        ${edit.error ? html`<p class="field-error" role="alert">${edit.error}</p>` : nothing}
        <div class="form-actions">
          <button type="button" class="btn btn-secondary btn-small" @click=${() => this.cancelEdit(task.title)}>Cancel</button>
          <button type="submit" class="btn btn-primary btn-small" ?disabled=${edit.saving}>${edit.saving ? "Saving…" : "Save"}</button>
        </div>
      </form>
    `;
  }

  // ---- operations --------------------------------------------------------------------

  private async add(): Promise<void> {
    const title = this.newTitle;
    const problem = titleProblem(title);
    this.addError = "";
    if (problem) {
      this.titleError = problem;
      this.render();
      this.root?.querySelector<HTMLInputElement>("#new-title")?.focus();
      return;
    }
    const descriptionIssue = descriptionProblem(this.newDescription);
    if (descriptionIssue) {
      this.addError = descriptionIssue;
      this.render();
      return;
    }
    const description = this.newDescription;
    this.adding = true;
    this.render();
    try {
      await this.session!.call("insert_task", { title, description });
      this.upsert({ title, description }, true);
      // Clear only what was sent: the person may have started typing the next task.
      if (this.newTitle === title) this.newTitle = "";
      if (this.newDescription === description) this.newDescription = "";
      toast(`Added “${title}”.`, "success");
    } catch (error) {
      if (error instanceof ProtocolError && error.code === "exists") {
        this.titleError = `A task titled “${title}” already exists. Pick another title, or edit that one.`;
      } else if (!this.handleCommon(error)) {
        this.addError = describeError(error);
      }
    } finally {
      this.adding = false;
      this.render();
      this.refocus(this.root?.querySelector<HTMLInputElement>("#new-title"), this.root?.querySelector(".add-form"));
    }
  }

  private startEdit(task: Task): void {
    this.edits.set(task.title, { draft: task.description, saving: false, error: "", changedElsewhere: false });
    this.render();
    const area = this.rowOf(task.title)?.querySelector<HTMLTextAreaElement>("textarea");
    area?.focus();
    area?.setSelectionRange(area.value.length, area.value.length);
  }

  private cancelEdit(title: string): void {
    this.edits.delete(title);
    this.render();
    this.rowOf(title)?.querySelector<HTMLButtonElement>("button.edit")?.focus();
  }

  private async saveEdit(title: string): Promise<void> {
    const edit = this.edits.get(title);
    if (!edit || edit.saving) return;
    const problem = descriptionProblem(edit.draft);
    if (problem) {
      edit.error = problem;
      this.render();
      return;
    }
    edit.saving = true;
    this.render();
    try {
      await this.session!.call("update_task", { title, description: edit.draft });
      this.upsert({ title, description: edit.draft }, true);
      this.edits.delete(title);
      toast(`Saved “${title}”.`, "success");
      this.render();
      this.refocus(this.rowOf(title)?.querySelector<HTMLButtonElement>("button.edit"));
    } catch (error) {
      edit.saving = false;
      if (error instanceof ProtocolError && error.code === "not_found") {
        this.edits.delete(title);
        this.drop(title);
        toast(`“${title}” no longer exists: it was deleted elsewhere.`, "error");
      } else if (!this.handleCommon(error)) {
        edit.error = describeError(error);
      }
      this.render();
    }
  }

  private async remove(task: Task): Promise<void> {
    this.busy.add(task.title);
    this.render();
    const next = this.neighbourButton(task.title);
    try {
      await this.session!.call("delete_task", { title: task.title });
      this.drop(task.title);
      toast(`Deleted “${task.title}”.`, "info", { label: "Undo", run: () => void this.undoDelete(task) });
    } catch (error) {
      if (error instanceof ProtocolError && error.code === "not_found") {
        this.drop(task.title);
        toast(`“${task.title}” was already deleted elsewhere.`, "info");
      } else if (!this.handleCommon(error)) {
        toast(describeError(error), "error");
      }
    } finally {
      this.busy.delete(task.title);
      this.render();
      this.refocus(next ?? this.root?.querySelector<HTMLInputElement>("#new-title"));
    }
  }

  private async undoDelete(task: Task): Promise<void> {
    try {
      await this.session!.call("insert_task", { title: task.title, description: task.description });
      this.upsert(task, true);
      toast(`Restored “${task.title}”.`, "success");
    } catch (error) {
      if (!this.handleCommon(error)) toast(describeError(error), "error");
    }
  }

  private async deleteAll(): Promise<void> {
    const count = this.tasks.length;
    const yes = await confirmDialog({
      title: "Delete all tasks?",
      body: html`This deletes all <strong>${count}</strong> ${count === 1 ? "task" : "tasks"} of this client, in every tab and
        on every portal. It cannot be undone.`,
      confirm: `Delete ${count === 1 ? "1 task" : `all ${count} tasks`}`,
      danger: true,
    });
    if (!yes) return;
    this.clearing = true;
    this.render();
    try {
      const reply = await this.session!.call("delete_tasks");
      this.tasks = [];
      this.edits.clear();
      const deleted = typeof reply.deleted === "number" ? reply.deleted : count;
      toast(`Deleted ${deleted} ${deleted === 1 ? "task" : "tasks"}.`, "success");
    } catch (error) {
      if (!this.handleCommon(error)) toast(describeError(error), "error");
    } finally {
      this.clearing = false;
      this.render();
      this.refocus(this.root?.querySelector<HTMLInputElement>("#new-title"), this.root?.querySelector(".toolbar"));
    }
  }

  /** Errors that mean the same whatever the operation; true when handled. */
  private handleCommon(error: unknown): boolean {
    if (!(error instanceof ProtocolError)) return false;
    if (error.code === "unauthorized") {
      this.signedOut("Your session ended: the token no longer works (it was rotated, or the client was deleted). Sign in again.");
      return true;
    }
    if (error.outcomeUnknown) {
      // The session reconnects and reloads the list, which shows what really happened.
      toast(describeError(error), "error");
      return true;
    }
    return false;
  }

  // ---- live changes ---------------------------------------------------------------

  private applyEvent(event: ChangeEvent): void {
    if (!this.session || event.cid !== this.session.cid) return;
    const title = event.title ?? "";
    switch (event.event) {
      case "task_inserted":
      case "task_updated": {
        const edit = this.edits.get(title);
        const known = this.tasks.find((t) => t.title === title);
        const changed = !known || known.description !== (event.description ?? "");
        if (edit && !edit.saving && changed) edit.changedElsewhere = true;
        this.upsert({ title, description: event.description ?? "" }, changed);
        break;
      }
      case "task_deleted":
        if (this.edits.has(title)) {
          this.edits.delete(title);
          toast(`“${title}” was deleted elsewhere.`, "info");
        }
        this.drop(title);
        break;
      case "tasks_cleared":
        this.tasks = [];
        this.edits.clear();
        break;
      case "client_deleted":
        this.signedOut("An administrator deleted this client; its tasks are gone.");
        return;
    }
    this.render();
  }

  private resync(tasks: Task[]): void {
    this.tasks = tasks;
    for (const title of [...this.edits.keys()]) {
      if (!tasks.some((t) => t.title === title)) this.edits.delete(title);
    }
    this.render();
  }

  private connectionChanged(session: ClientSession, state: ConnectionState, detail: string): void {
    if (this.session && session !== this.session) return;
    const wasReconnecting = this.connection === "reconnecting";
    this.connection = state;
    this.connectionDetail = detail;
    if (state === "live") this.portal = detail || this.portal;
    if (state === "live" && wasReconnecting) toast(this.portal ? `Reconnected through ${this.portal}.` : "Reconnected.", "success");
    this.render();
  }

  private upsert(task: Task, flash: boolean): void {
    const index = this.tasks.findIndex((t) => t.title === task.title);
    if (index >= 0) this.tasks[index] = task;
    else this.tasks = [...this.tasks, task];
    if (flash) this.flash(task.title);
  }

  private drop(title: string): void {
    this.tasks = this.tasks.filter((t) => t.title !== title);
  }

  private flash(title: string): void {
    window.clearTimeout(this.flashing.get(title));
    this.flashing.set(
      title,
      window.setTimeout(() => {
        this.flashing.delete(title);
        this.render();
      }, FLASH_MS),
    );
  }

  // ---- keyboard ------------------------------------------------------------------------

  private shortcut(event: KeyboardEvent): void {
    if (!this.session || typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (document.querySelector("dialog[open]")) return;
    if (event.key === "n" || event.key === "N") {
      event.preventDefault();
      this.root?.querySelector<HTMLInputElement>("#new-title")?.focus();
    } else if (event.key === "/") {
      event.preventDefault();
      this.root?.querySelector<HTMLInputElement>("#task-filter")?.focus();
    }
  }

  /** Move focus to `target` only if it was lost (on the page body) or is still inside `scope`:
   * an answer that arrives late must not pull focus away from where the person went since. */
  private refocus(target: HTMLElement | null | undefined, scope?: Element | null): void {
    const active = document.activeElement;
    const lost = !active || active === document.body || !active.isConnected;
    if (target && (lost || (scope && scope.contains(active)))) target.focus();
  }

  private rowOf(title: string): HTMLElement | null {
    const rows = this.root?.querySelectorAll<HTMLElement>("li.task") ?? [];
    return [...rows].find((row) => row.dataset.title === title) ?? null;
  }

  /** Where focus goes after a row disappears: the next row's delete button, else the previous. */
  private neighbourButton(title: string): HTMLButtonElement | null {
    const row = this.rowOf(title);
    const other = (row?.nextElementSibling ?? row?.previousElementSibling) as HTMLElement | null;
    return other?.querySelector<HTMLButtonElement>("button.delete") ?? null;
  }
}
