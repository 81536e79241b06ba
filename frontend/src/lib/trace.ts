// The route of the last traced request, shared between tabs through localStorage:
// the client page writes it, the cluster page draws it.

import type { Trace } from "./protocol";

const KEY = "taskring.last-trace";

export interface TracedRequest extends Trace {
  op: string;
  ok: boolean;
  at: number; // ms since the epoch
  cid: string;
}

export function saveTrace(traced: TracedRequest): void {
  try {
    localStorage.setItem(KEY, JSON.stringify(traced));
  } catch {
    // Storage full or disabled: the route is a nicety, not worth an error.
  }
  window.dispatchEvent(new CustomEvent("taskring:trace", { detail: traced }));
}

export function loadTrace(): TracedRequest | null {
  try {
    const value = JSON.parse(localStorage.getItem(KEY) ?? "null") as TracedRequest | null;
    return value && Array.isArray(value.route) ? value : null;
  } catch {
    return null;
  }
}

/** Call `listener` whenever a request is traced, in this tab or another; returns the undo. */
export function onTrace(listener: (traced: TracedRequest | null) => void): () => void {
  const fromStorage = (event: StorageEvent) => {
    if (event.key === KEY) listener(loadTrace());
  };
  const local = () => listener(loadTrace());
  window.addEventListener("storage", fromStorage);
  window.addEventListener("taskring:trace", local);
  return () => {
    window.removeEventListener("storage", fromStorage);
    window.removeEventListener("taskring:trace", local);
  };
}

/**
 * The client portal that answered, when the trace says so. With local storage the portal
 * itself serves the request and is the whole route; with ring storage the route lists
 * cache nodes only, and which portal the bridge chose is not part of it.
 */
export function portalOf(trace: { route: string[]; group: string }): string | null {
  return trace.group === "local" ? trace.route[0] ?? null : null;
}
