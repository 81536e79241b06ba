// Small shared pieces of the interface: toasts, modal dialogs, copying, time.

import { html, noChange, nothing, render, type TemplateResult } from "lit-html";
import {
  type AttributePart,
  Directive,
  directive,
  type PartInfo,
  PartType,
} from "lit-html/directive.js";

// ---- toasts -------------------------------------------------------------------------

export type Tone = "info" | "success" | "error";

interface ToastAction {
  label: string;
  run(): void;
}

interface Toast {
  id: number;
  tone: Tone;
  text: string;
  action?: ToastAction;
}

const toasts: Toast[] = [];
let toastId = 0;

function toastRegion(): HTMLElement {
  let region = document.getElementById("toasts");
  if (!region) {
    region = document.createElement("div");
    region.id = "toasts";
    region.className = "toasts";
    region.setAttribute("aria-live", "polite");
    region.setAttribute("aria-relevant", "additions");
    document.body.append(region);
  }
  return region;
}

function drawToasts(): void {
  render(
    html`${toasts.map(
      (t) => html`<div class="toast toast-${t.tone}" role=${t.tone === "error" ? "alert" : "status"} data-testid="toast">
        <span class="toast-text">${t.text}</span>
        ${t.action
          ? html`<button class="btn btn-small btn-ghost-inverse" @click=${() => { t.action!.run(); dismiss(t.id); }}>${t.action.label}</button>`
          : nothing}
        <button class="toast-close" aria-label="Dismiss" @click=${() => dismiss(t.id)}>×</button>
      </div>`,
    )}`,
    toastRegion(),
  );
}

function dismiss(id: number): void {
  const index = toasts.findIndex((t) => t.id === id);
  if (index >= 0) toasts.splice(index, 1);
  drawToasts();
}

/** Show a short message; errors stay longer, and one with an action longer still. */
export function toast(text: string, tone: Tone = "info", action?: ToastAction): void {
  const id = ++toastId;
  toasts.push({ id, tone, text, action });
  while (toasts.length > 4) toasts.shift();
  drawToasts();
  const ms = tone === "error" ? 9000 : action ? 8000 : 4000;
  window.setTimeout(() => dismiss(id), ms);
}

// ---- dialogs ------------------------------------------------------------------------

/** A native modal <dialog> (focus trap, Esc to close) whose content is a lit template. */
export class Modal {
  readonly element: HTMLDialogElement;
  private closedHandlers: Array<() => void> = [];

  constructor(label: string) {
    this.element = document.createElement("dialog");
    this.element.className = "modal";
    this.element.setAttribute("aria-label", label);
    this.element.addEventListener("close", () => {
      for (const handler of this.closedHandlers) handler();
      this.element.remove();
    });
    // A click on the backdrop (outside the box) closes it, like Esc.
    this.element.addEventListener("mousedown", (event) => {
      if (event.target === this.element) this.close();
    });
    document.body.append(this.element);
  }

  show(content: TemplateResult): void {
    this.update(content);
    this.element.showModal();
    const first = this.element.querySelector<HTMLElement>("[autofocus]");
    first?.focus();
  }

  update(content: TemplateResult): void {
    render(content, this.element);
  }

  onClosed(handler: () => void): void {
    this.closedHandlers.push(handler);
  }

  close(): void {
    if (this.element.open) this.element.close();
  }
}

export interface ConfirmOptions {
  title: string;
  body: TemplateResult | string;
  confirm: string;
  danger?: boolean;
}

/** Ask before doing something that cannot be undone; resolves true on confirm. */
export function confirmDialog(options: ConfirmOptions): Promise<boolean> {
  return new Promise((resolve) => {
    const modal = new Modal(options.title);
    let answer = false;
    modal.onClosed(() => resolve(answer));
    const yes = () => {
      answer = true;
      modal.close();
    };
    modal.show(html`
      <form method="dialog" class="modal-body" @submit=${(e: Event) => { e.preventDefault(); yes(); }}>
        <h2 class="modal-title">${options.title}</h2>
        <div class="modal-text">${options.body}</div>
        <div class="modal-actions">
          <button type="button" class="btn btn-secondary" @click=${() => modal.close()}>Cancel</button>
          <button type="submit" class="btn ${options.danger ? "btn-danger" : "btn-primary"}" autofocus>${options.confirm}</button>
        </div>
      </form>
    `);
  });
}

// ---- copying -----------------------------------------------------------------------

export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard permission (or an old browser): the selection way still works.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

/** A button that copies `value` and says so for a moment. */
export function copyButton(value: string, label: string): TemplateResult {
  const copy = async (event: Event) => {
    const button = event.currentTarget as HTMLButtonElement;
    const ok = await copyText(value);
    button.dataset.copied = ok ? "yes" : "no";
    button.textContent = ok ? "Copied" : "Copy failed";
    window.setTimeout(() => {
      button.textContent = "Copy";
      delete button.dataset.copied;
    }, 1600);
  };
  return html`<button type="button" class="btn btn-small btn-secondary copy" aria-label=${label} @click=${copy}>Copy</button>`;
}

// ---- time ----------------------------------------------------------------------------

export function ago(ms: number, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  return `${Math.round(minutes / 60)} h ago`;
}

/** Whether a key press came from somewhere the person is typing. */
export function typing(event: KeyboardEvent): boolean {
  const target = event.target as HTMLElement | null;
  if (!target) return false;
  return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

// ---- inline styles under the Content-Security-Policy ------------------------------------

// The server's CSP (style-src 'self') refuses style="..." attributes, including those
// lit-html's styleMap writes on its first render. Properties set through the CSSOM are
// allowed, so this directive only ever calls style.setProperty. Bind it to `style`:
// <span style=${cssProps({ width: "40%" })}>.
class CssProps extends Directive {
  private names = new Set<string>();

  constructor(part: PartInfo) {
    super(part);
    if (part.type !== PartType.ATTRIBUTE) throw new Error("cssProps belongs in an attribute");
  }

  render(_props: Record<string, string>): typeof noChange {
    return noChange;
  }

  override update(part: AttributePart, [props]: [Record<string, string>]): typeof noChange {
    const style = part.element.style;
    for (const name of this.names) {
      if (!(name in props)) style.removeProperty(name);
    }
    for (const [name, value] of Object.entries(props)) style.setProperty(name, value);
    this.names = new Set(Object.keys(props));
    return noChange;
  }
}

export const cssProps = directive(CssProps);
