"""AdminService over any Store: checks, paging, records to messages.

The service is docs/protocol.md, Admin service, which also gives the rules
checked here (names, page sizes, page tokens). Handlers raise `OpError` with a
contract code; the admin portal's call interceptor (admin_portal.py) turns it
into a gRPC status, checks the admin token before a handler runs, and counts
every call.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from backend.adapters.random_secrets import new_token
from backend.adapters.store.interface import Store
from backend.admin_pb import admin_pb2, admin_pb2_grpc
from backend.core.errors import BAD_REQUEST, NOT_FOUND, OpError
from backend.core.model.identity import (
    MAX_DATA_BYTES,
    MAX_NAME_BYTES,
    cid_for_name,
    format_cid,
    normalize_name,
    parse_cid,
)
from backend.core.model.records import ClientRecord

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
CID_BYTES = 8


# ---- checks ------------------------------------------------------------------------


def checked_name(raw: str) -> str:
    """The name to store, or OpError(BAD_REQUEST) saying what is wrong with it."""
    name = raw.strip()
    size = len(name.encode("utf-8"))
    if not normalize_name(name):
        raise OpError(BAD_REQUEST, "name must not be empty or only whitespace")
    if size > MAX_NAME_BYTES:
        raise OpError(
            BAD_REQUEST, f"name must be at most {MAX_NAME_BYTES} bytes of UTF-8, got {size} bytes"
        )
    for position, char in enumerate(name):
        if unicodedata.category(char) == "Cc":
            raise OpError(
                BAD_REQUEST,
                f"name must not contain control characters, found U+{ord(char):04X} "
                f"at character {position}",
            )
    return name


def checked_data(data: str) -> str:
    size = len(data.encode("utf-8"))
    if size > MAX_DATA_BYTES:
        raise OpError(
            BAD_REQUEST, f"data must be at most {MAX_DATA_BYTES} bytes of UTF-8, got {size} bytes"
        )
    return data


def checked_cid(text: str) -> int:
    cid = parse_cid(text)
    if cid is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise OpError(BAD_REQUEST, f"cid must be 16 lowercase hex digits, got {shown!r}")
    return cid


def checked_page_size(size: int) -> int:
    if size < 0:
        raise OpError(BAD_REQUEST, f"page_size must not be negative, got {size}")
    if size == 0:
        return DEFAULT_PAGE_SIZE
    return min(size, MAX_PAGE_SIZE)


# ---- page tokens -------------------------------------------------------------------


def encode_page_token(last_cid: int) -> str:
    raw = last_cid.to_bytes(CID_BYTES, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str) -> int | None:
    """The CID a page token stands for; None for "" (the first page); OpError if malformed."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    # Re-encoding must give the token back, so each CID has exactly one token.
    if len(raw) != CID_BYTES or encode_page_token(int.from_bytes(raw, "big")) != token:
        raise OpError(BAD_REQUEST, "page_token is not one this service issued; pass it unchanged")
    return int.from_bytes(raw, "big")


# ---- messages ----------------------------------------------------------------------


def client_message(record: ClientRecord, token: str = "") -> admin_pb2.Client:
    """The wire form of a client; `token` only where the contract returns one."""
    seconds, millis = divmod(record.created_at_ms, 1000)
    return admin_pb2.Client(
        cid=format_cid(record.cid),
        name=record.name,
        data=record.data,
        token=token,
        created_at=Timestamp(seconds=seconds, nanos=millis * 1_000_000),
    )


def _not_found(cid: int) -> OpError:
    return OpError(NOT_FOUND, f"no client with CID {format_cid(cid)}")


# ---- the service -------------------------------------------------------------------


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """AdminService over a Store; authentication happens before any handler runs."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def CreateClient(
        self, request: admin_pb2.CreateClientRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Client:
        name = checked_name(request.name)
        data = checked_data(request.data)
        token = new_token()
        record = await self.store.create_client(cid_for_name(name), name, data, token)
        return client_message(record, token)

    async def GetClient(
        self, request: admin_pb2.GetClientRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Client:
        cid = checked_cid(request.cid)
        record = await self.store.get_client(cid)
        if record is None:
            raise _not_found(cid)
        return client_message(record)

    async def UpdateClient(
        self, request: admin_pb2.UpdateClientRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Client:
        cid = checked_cid(request.cid)
        data = checked_data(request.data)
        return client_message(await self.store.update_client(cid, data))

    async def DeleteClient(
        self, request: admin_pb2.DeleteClientRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteClientResponse:
        await self.store.delete_client(checked_cid(request.cid))
        return admin_pb2.DeleteClientResponse()

    async def ListClients(
        self, request: admin_pb2.ListClientsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListClientsResponse:
        size = checked_page_size(request.page_size)
        after = decode_page_token(request.page_token)
        # One more than asked tells whether another page follows.
        records = await self.store.list_clients(after, size + 1)
        page = records[:size]
        more = len(records) > size
        return admin_pb2.ListClientsResponse(
            clients=[client_message(record) for record in page],
            next_page_token=encode_page_token(page[-1].cid) if more else "",
        )

    async def RotateToken(
        self, request: admin_pb2.RotateTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Client:
        cid = checked_cid(request.cid)
        token = new_token()
        return client_message(await self.store.rotate_token(cid, token), token)
