// The client line protocol (docs/protocol.md, Client protocol) as the browser sees it: message shapes
// and what each error code means for a person.

export interface Trace {
  route: string[];
  owner: string;
  group: string;
}

export interface Task {
  title: string;
  description: string;
}

export interface ErrorBody {
  code: string;
  message: string;
}

export interface Reply {
  id?: unknown;
  ok: boolean;
  error?: ErrorBody;
  trace?: Trace;
  [field: string]: unknown;
}

export type EventKind =
  | "task_inserted"
  | "task_updated"
  | "task_deleted"
  | "tasks_cleared"
  | "client_deleted";

export interface ChangeEvent {
  event: EventKind;
  cid: string;
  title?: string;
  description?: string;
}

/** The error codes of docs/protocol.md, plus `connection_lost` for a socket that closed mid-request. */
export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "not_found"
  | "exists"
  | "too_large"
  | "unavailable"
  | "timeout"
  | "internal"
  | "connection_lost";

/** A request that failed: the code, and the server's own words. */
export class ProtocolError extends Error {
  readonly code: string;
  readonly detail: string;
  readonly trace: Trace | undefined;

  constructor(code: string, detail: string, trace?: Trace) {
    super(`${code}: ${detail}`);
    this.code = code;
    this.detail = detail;
    this.trace = trace;
  }

  /** True when the request may or may not have been applied. */
  get outcomeUnknown(): boolean {
    return this.code === "timeout" || this.code === "connection_lost";
  }
}

const HEADLINES: Record<ErrorCode, string> = {
  bad_request: "The server did not accept the request",
  unauthorized: "You are not signed in, or your token no longer works",
  not_found: "That task does not exist (any more)",
  exists: "A task with that title already exists",
  too_large: "That is too large to send",
  unavailable: "The service is unavailable right now; nothing was changed, try again",
  timeout: "No answer in time: the change may or may not have been applied",
  internal: "Something went wrong on the server",
  connection_lost: "The connection was lost before the answer: the change may or may not have been applied",
};

/** One sentence for a person, naming the problem and what to do. */
export function describeError(error: unknown): string {
  if (error instanceof ProtocolError) {
    const headline = HEADLINES[error.code as ErrorCode] ?? `Error ${error.code}`;
    return error.detail && !headline.includes(error.detail) ? `${headline}. ${capitalize(error.detail)}` : `${headline}.`;
  }
  return error instanceof Error ? error.message : String(error);
}

function capitalize(text: string): string {
  const sentence = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(sentence) ? sentence : `${sentence}.`;
}

export function isEvent(value: unknown): value is ChangeEvent {
  return typeof value === "object" && value !== null && "event" in value && !("ok" in value);
}

export function isReply(value: unknown): value is Reply {
  return typeof value === "object" && value !== null && "ok" in value;
}
