// The admin page's client for AdminService: generated from protos/ (src/gen), spoken
// as gRPC-Web to the web process, which forwards each call to an admin portal.

import { Code, ConnectError, createClient, type Client as RpcClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { AdminService, type Client } from "../gen/taskring/admin/v1/admin_pb";

export type { Client };
export type AdminClient = RpcClient<typeof AdminService>;

const CALL_TIMEOUT_MS = 15_000;

/** A client for AdminService that sends `token` as the bearer on every call. */
export function adminClient(token: string): AdminClient {
  const transport = createGrpcWebTransport({
    baseUrl: location.origin,
    defaultTimeoutMs: CALL_TIMEOUT_MS,
    interceptors: [
      (next) => (request) => {
        request.header.set("authorization", `Bearer ${token}`);
        return next(request);
      },
    ],
  });
  return createClient(AdminService, transport);
}

export function errorCode(error: unknown): Code | null {
  return error instanceof ConnectError ? error.code : null;
}

const HEADLINES: Partial<Record<Code, string>> = {
  [Code.Unauthenticated]: "The admin token was not accepted",
  [Code.AlreadyExists]: "A client with that name already exists",
  [Code.InvalidArgument]: "The admin portal did not accept the input",
  [Code.NotFound]: "No such client (it may have been deleted meanwhile)",
  [Code.Unavailable]: "No admin portal is reachable right now; nothing was changed, try again",
  [Code.DeadlineExceeded]: "No answer in time: the change may or may not have been applied",
  [Code.Unimplemented]: "The admin portal does not offer that operation",
  [Code.Internal]: "Something went wrong in the admin portal",
  [Code.PermissionDenied]: "The admin token may not do that",
};

/** One sentence for a person: what went wrong and, where useful, the portal's words. */
export function describeAdminError(error: unknown): string {
  if (error instanceof ConnectError) {
    const headline = HEADLINES[error.code] ?? `The call failed (${Code[error.code]})`;
    const detail = error.rawMessage.trim();
    if (!detail || error.code === Code.Unauthenticated) return `${headline}.`;
    return `${headline}: ${detail}`;
  }
  return error instanceof Error ? error.message : String(error);
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function createdAt(client: Client): string {
  return client.createdAt ? dateFormat.format(timestampDate(client.createdAt)) : "";
}

export function createdAtIso(client: Client): string {
  return client.createdAt ? timestampDate(client.createdAt).toISOString() : "";
}
