// Checks the UI makes before sending anything, with the limits of docs/protocol.md, Client protocol,
// so a person hears what to fix at once instead of after a round trip.

export const MAX_TITLE_BYTES = 256;
export const MAX_DESCRIPTION_BYTES = 16_384;
export const MAX_NAME_BYTES = 256;
export const MAX_DATA_BYTES = 16_384;

const encoder = new TextEncoder();
// Unicode category Cc: what the portal refuses in a title.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const CID = /^[0-9a-f]{16}$/;

export function utf8Bytes(text: string): number {
  return encoder.encode(text).length;
}

/** A CID as typed (spaces and capitals forgiven), or null when it is not 16 hex digits. */
export function normalizeCid(text: string): string | null {
  const cid = text.trim().toLowerCase();
  return CID.test(cid) ? cid : null;
}

export function isCid(text: string): boolean {
  return CID.test(text);
}

/** Why a title cannot be sent, or null when it can. */
export function titleProblem(title: string): string | null {
  const size = utf8Bytes(title);
  if (size === 0) return "Give the task a title.";
  if (size > MAX_TITLE_BYTES) return `The title is ${size} bytes; at most ${MAX_TITLE_BYTES} fit.`;
  const control = CONTROL.exec(title);
  if (control) {
    const code = control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, "0");
    return `The title holds a control character (U+${code}); remove it.`;
  }
  return null;
}

export function descriptionProblem(description: string): string | null {
  const size = utf8Bytes(description);
  if (size > MAX_DESCRIPTION_BYTES) {
    return `The description is ${size.toLocaleString("en")} bytes; at most ${MAX_DESCRIPTION_BYTES.toLocaleString("en")} fit.`;
  }
  return null;
}

export function nameProblem(name: string): string | null {
  const size = utf8Bytes(name.trim());
  if (size === 0) return "Give the client a name.";
  if (size > MAX_NAME_BYTES) return `The name is ${size} bytes; at most ${MAX_NAME_BYTES} fit.`;
  if (CONTROL.test(name.trim())) return "The name holds a control character; remove it.";
  return null;
}

export function dataProblem(data: string): string | null {
  const size = utf8Bytes(data);
  if (size > MAX_DATA_BYTES) {
    return `The data is ${size.toLocaleString("en")} bytes; at most ${MAX_DATA_BYTES.toLocaleString("en")} fit.`;
  }
  return null;
}
