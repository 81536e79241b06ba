// The browser's connection to a client portal, through the web process's WebSocket
// bridge (WS /ws/client): one message per protocol line, each way.
//
// `ClientSession` signs in (auth), follows changes (watch) and loads the tasks; when the
// socket drops (a portal died, the web process restarted) it reconnects with backoff,
// signs in again and reloads, so the page stays current without the person noticing
// more than a "reconnecting" badge.

import {
  type ChangeEvent,
  type Reply,
  type Task,
  type Trace,
  ProtocolError,
  isEvent,
  isReply,
} from "./protocol";
import { portalOf } from "./trace";

export type ConnectionState = "connecting" | "live" | "reconnecting" | "closed";

const REQUEST_TIMEOUT_MS = 15_000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];
const CLOSE_TRY_LATER = 1013;
const CLOSE_SIGNED_OUT = 4001;
const CLOSE_STUCK = 4002;

export function bridgeUrl(): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/client`;
}

interface Pending {
  resolve(reply: Reply): void;
  reject(error: ProtocolError): void;
  timer: number;
}

/** One WebSocket: requests matched to replies by id, events passed on. */
class BridgeSocket {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private lastUnsolicited: string | null = null;
  onEvent: (event: ChangeEvent) => void = () => {};
  onClose: (code: number, reason: string) => void = () => {};

  private constructor(private readonly ws: WebSocket) {
    ws.addEventListener("message", (message) => this.receive(message.data));
    ws.addEventListener("close", (close) => this.closed(close.code, close.reason));
  }

  static open(url: string): Promise<BridgeSocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const fail = () => reject(new ProtocolError("unavailable", "cannot reach the web server"));
      ws.addEventListener("error", fail, { once: true });
      ws.addEventListener(
        "open",
        () => {
          ws.removeEventListener("error", fail);
          resolve(new BridgeSocket(ws));
        },
        { once: true },
      );
    });
  }

  request(op: string, args: Record<string, unknown> = {}): Promise<Reply> {
    if (this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ProtocolError("unavailable", "not connected; reconnecting"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.pending.delete(id);
        reject(new ProtocolError("timeout", `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`));
        // Replies come in request order: a stuck one holds up the rest, so start afresh.
        this.close(CLOSE_STUCK, "request timed out");
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ id, op, ...args }));
    });
  }

  close(code = 1000, reason = ""): void {
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
  }

  private receive(data: unknown): void {
    let message: unknown;
    try {
      message = JSON.parse(String(data));
    } catch {
      return;
    }
    if (isEvent(message)) {
      this.onEvent(message);
      return;
    }
    if (!isReply(message)) return;
    const pending = typeof message.id === "number" ? this.pending.get(message.id) : undefined;
    if (!pending) {
      // The bridge's own word before it closes (e.g. no portal reachable).
      if (message.error) this.lastUnsolicited = message.error.message;
      return;
    }
    this.pending.delete(message.id as number);
    window.clearTimeout(pending.timer);
    pending.resolve(message);
  }

  private closed(code: number, reason: string): void {
    const detail = this.lastUnsolicited ?? reason;
    const error =
      code === CLOSE_TRY_LATER
        ? new ProtocolError("unavailable", detail || "no client portal is reachable")
        : new ProtocolError("connection_lost", detail || "the connection closed");
    for (const pending of this.pending.values()) {
      window.clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.pending.clear();
    this.onClose(code, detail);
  }
}

export interface SessionHandlers {
  /** A change made anywhere (this page included) to this client's tasks. */
  onEvent(event: ChangeEvent): void;
  onState(state: ConnectionState, detail: string): void;
  /** After a reconnect: the whole list again, since events may have been missed. */
  onResync(tasks: Task[]): void;
  /** The token stopped working, or the client was deleted. */
  onSignedOut(reason: string): void;
  onTrace(op: string, ok: boolean, trace: Trace): void;
}

/** A signed-in client: requests, live events, and reconnection. */
export class ClientSession {
  private socket: BridgeSocket | null = null;
  private stopped = false;
  private attempt = 0;
  private retryTimer = 0;
  portal = "";

  constructor(
    readonly cid: string,
    private readonly token: string,
    private readonly handlers: SessionHandlers,
  ) {}

  /** Connect, sign in, watch and list; throws ProtocolError (e.g. unauthorized). */
  async start(): Promise<Task[]> {
    this.handlers.onState("connecting", "");
    try {
      return await this.connect();
    } catch (error) {
      this.stop();
      throw error;
    }
  }

  /** Send one request with tracing on; resolves to the reply, throws ProtocolError. */
  async call(op: string, args: Record<string, unknown> = {}): Promise<Reply> {
    if (!this.socket) throw new ProtocolError("unavailable", "not connected; reconnecting");
    const reply = await this.socket.request(op, { cid: this.cid, ...args, trace: true });
    if (reply.trace) this.handlers.onTrace(op, reply.ok, reply.trace);
    if (!reply.ok) {
      const error = reply.error ?? { code: "internal", message: "a reply without an error" };
      throw new ProtocolError(error.code, error.message, reply.trace);
    }
    return reply;
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.retryTimer);
    this.socket?.close(CLOSE_SIGNED_OUT, "signed out");
    this.socket = null;
    this.handlers.onState("closed", "");
  }

  private async connect(): Promise<Task[]> {
    const socket = await BridgeSocket.open(bridgeUrl());
    if (this.stopped) {
      socket.close();
      throw new ProtocolError("connection_lost", "signed out");
    }
    this.socket = socket;
    socket.onEvent = (event) => this.handlers.onEvent(event);
    socket.onClose = (code, reason) => this.dropped(socket, code, reason);
    const auth = await this.call("auth", { token: this.token });
    this.portal = auth.trace ? portalOf(auth.trace) ?? "" : "";
    await this.call("watch");
    const listed = await this.call("list_tasks");
    this.attempt = 0;
    this.handlers.onState("live", this.portal);
    return (listed.tasks as Task[]) ?? [];
  }

  private dropped(socket: BridgeSocket, code: number, reason: string): void {
    if (this.stopped || socket !== this.socket) return;
    this.socket = null;
    const why = code === CLOSE_TRY_LATER ? "no client portal is reachable" : reason;
    this.handlers.onState("reconnecting", why);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.retryTimer = window.setTimeout(() => void this.reconnect(), delay);
  }

  private async reconnect(): Promise<void> {
    if (this.stopped) return;
    try {
      const tasks = await this.connect();
      this.handlers.onResync(tasks);
    } catch (error) {
      if (this.stopped) return;
      if (error instanceof ProtocolError && error.code === "unauthorized") {
        this.stop();
        this.handlers.onSignedOut("Your token no longer works (it was rotated, or the client was deleted). Sign in again.");
        return;
      }
      const socket = this.socket;
      this.socket = null; // first, so its close is not taken for a second drop
      socket?.close();
      const detail = error instanceof ProtocolError ? error.detail : String(error);
      this.handlers.onState("reconnecting", detail);
      this.scheduleReconnect();
    }
  }
}
