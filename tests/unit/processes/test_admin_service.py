"""The admin portal through a real grpc.aio server: every RPC and status code, health, reflection.

The server runs in this process on a free port over a LocalStore on an
in-memory bus; every test calls it through a real gRPC channel. Every call
has a deadline, so a server that fails to answer fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from backend.adapters.bus.memory import MemoryBus, MemoryHub
from backend.adapters.store.local_store import LocalStore
from backend.admin_pb import admin_pb2, admin_pb2_grpc
from backend.core import errors
from backend.core.errors import OpError
from backend.core.metrics import RequestMetrics
from backend.core.model.identity import MAX_DATA_BYTES, MAX_NAME_BYTES, format_cid
from backend.processes.admin_portal import AdminPortal, start_admin_server
from backend.processes.admin_service import decode_page_token, encode_page_token
from tests.support.waiting import eventually

DEADLINE = 5.0
ADMIN_TOKEN = "admin-secret-0123456789abcdef"
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
SERVICE = "taskring.admin.v1.AdminService"
UNKNOWN_CID = "0123456789abcdef"
Status = grpc.StatusCode


@dataclass
class Harness:
    store: Any
    bus: MemoryBus | None
    metrics: RequestMetrics
    portal: AdminPortal
    channel: grpc.aio.Channel
    stub: admin_pb2_grpc.AdminServiceStub

    async def call(self, rpc: str, request: Any, metadata: Any = AUTH) -> Any:
        return await getattr(self.stub, rpc)(request, metadata=metadata, timeout=DEADLINE)

    async def status(self, rpc: str, request: Any, metadata: Any = AUTH) -> tuple[Status, str]:
        """The status code and message of a call that must fail."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call(rpc, request, metadata)
        return caught.value.code(), caught.value.details() or ""

    async def create(self, name: str, data: str = "") -> admin_pb2.Client:
        return await self.call("CreateClient", admin_pb2.CreateClientRequest(name=name, data=data))


async def start_harness(store: Any, bus: MemoryBus | None) -> Harness:
    metrics = RequestMetrics()
    portal = await start_admin_server(
        store, ADMIN_TOKEN, "127.0.0.1", 0, metrics, health_interval=0.02
    )
    assert portal.port != 0
    channel = grpc.aio.insecure_channel(portal.address)
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    return Harness(store, bus, metrics, portal, channel, stub)


async def stop_harness(harness: Harness) -> None:
    await harness.channel.close()
    await harness.portal.stop(None)


@pytest.fixture
async def admin() -> AsyncIterator[Harness]:
    bus = MemoryHub().attach()
    store = LocalStore(bus, "admin-portal-test")
    await bus.connect()
    harness = await start_harness(store, bus)
    yield harness
    await stop_harness(harness)


def contract_cid(name: str) -> str:
    """docs/protocol.md, Admin service, written out independently of backend.core.model.identity."""
    normalised = unicodedata.normalize("NFC", name).casefold().strip()
    return hashlib.sha256(normalised.encode("utf-8")).digest()[:8].hex()


# ---- CreateClient --------------------------------------------------------------------


async def test_create_derives_the_cid_from_the_name_and_returns_a_token_once(
    admin: Harness,
) -> None:
    before = time.time()
    client = await admin.create("Alice Example", data="gold plan")
    assert client.cid == contract_cid("Alice Example")
    assert client.name == "Alice Example" and client.data == "gold plan"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", client.token)
    assert before - 1 <= client.created_at.ToMicroseconds() / 1e6 <= time.time() + 1
    assert await admin.store.authenticate(int(client.cid, 16), client.token)

    fetched = await admin.call("GetClient", admin_pb2.GetClientRequest(cid=client.cid))
    assert fetched.token == ""
    assert (fetched.cid, fetched.name, fetched.data) == (client.cid, client.name, client.data)
    assert fetched.created_at == client.created_at


async def test_tokens_differ_between_clients(admin: Harness) -> None:
    tokens = {(await admin.create(f"client {n}")).token for n in range(20)}
    assert len(tokens) == 20


@pytest.mark.parametrize(
    "again",
    [
        "ALICE",  # case
        "  alice\t",  # surrounding whitespace
        " aLiCe",  # both
    ],
)
async def test_a_name_differing_only_in_case_or_whitespace_already_exists(
    admin: Harness, again: str
) -> None:
    first = await admin.create("Alice")
    assert contract_cid(again) == first.cid
    code, message = await admin.status("CreateClient", admin_pb2.CreateClientRequest(name=again))
    assert code == Status.ALREADY_EXISTS, message
    assert "already exists" in message


async def test_a_name_in_another_unicode_normal_form_already_exists(admin: Harness) -> None:
    composed = unicodedata.normalize("NFC", "Zoë Café")
    decomposed = " " + unicodedata.normalize("NFD", "ZOË CAFÉ") + " "
    assert composed.encode() != decomposed.strip().encode()
    first = await admin.create(composed)
    assert first.cid == contract_cid(decomposed)
    code, _ = await admin.status("CreateClient", admin_pb2.CreateClientRequest(name=decomposed))
    assert code == Status.ALREADY_EXISTS


async def test_the_stored_name_is_trimmed_but_keeps_its_case(admin: Harness) -> None:
    client = await admin.create("  Bob  Builder \n")
    assert client.name == "Bob  Builder"
    assert client.cid == contract_cid("bob  builder")


@pytest.mark.parametrize(
    ("name", "data", "field"),
    [
        ("", "", "name"),
        ("   \t\n", "", "name"),
        ("é" * (MAX_NAME_BYTES // 2 + 1), "", "name"),  # 258 bytes, 129 characters
        ("a" * (MAX_NAME_BYTES + 1), "", "name"),
        ("tab\tinside", "", "name"),
        ("nul\x00inside", "", "name"),
        ("del\x7finside", "", "name"),
        ("ok", "x" * (MAX_DATA_BYTES + 1), "data"),
        ("ok", "€" * (MAX_DATA_BYTES // 3 + 1), "data"),  # few characters, too many bytes
    ],
)
async def test_create_refuses_bad_names_and_data_naming_the_field(
    admin: Harness, name: str, data: str, field: str
) -> None:
    request = admin_pb2.CreateClientRequest(name=name, data=data)
    code, message = await admin.status("CreateClient", request)
    assert code == Status.INVALID_ARGUMENT
    assert message.startswith(field)
    listed = await admin.call("ListClients", admin_pb2.ListClientsRequest())
    assert list(listed.clients) == []


async def test_names_and_data_at_their_limits_are_accepted(admin: Harness) -> None:
    name = "n" * (MAX_NAME_BYTES - 2) + "é"  # exactly 256 bytes
    data = "d" * (MAX_DATA_BYTES - 3) + "€"  # exactly 16,384 bytes
    client = await admin.create(f"  {name}  ", data=data)
    assert client.name == name and client.data == data
    emoji = await admin.create("family \U0001f468\u200d\U0001f469\u200d\U0001f467")
    assert "\u200d" in emoji.name  # format characters are not control characters


# ---- the CID methods -----------------------------------------------------------------

CID_METHODS: list[tuple[str, Callable[[str], Any]]] = [
    ("GetClient", lambda cid: admin_pb2.GetClientRequest(cid=cid)),
    ("UpdateClient", lambda cid: admin_pb2.UpdateClientRequest(cid=cid, data="x")),
    ("DeleteClient", lambda cid: admin_pb2.DeleteClientRequest(cid=cid)),
    ("RotateToken", lambda cid: admin_pb2.RotateTokenRequest(cid=cid)),
]


@pytest.mark.parametrize(("rpc", "request_for"), CID_METHODS)
@pytest.mark.parametrize(
    "cid",
    ["", "xyz", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", " 0123456789abcdef"],
)
async def test_a_malformed_cid_is_invalid_argument(
    admin: Harness, rpc: str, request_for: Callable[[str], Any], cid: str
) -> None:
    code, message = await admin.status(rpc, request_for(cid))
    assert code == Status.INVALID_ARGUMENT
    assert message.startswith("cid must be 16 lowercase hex digits")


@pytest.mark.parametrize(("rpc", "request_for"), CID_METHODS)
async def test_an_unknown_cid_is_not_found(
    admin: Harness, rpc: str, request_for: Callable[[str], Any]
) -> None:
    await admin.create("someone else")
    code, message = await admin.status(rpc, request_for(UNKNOWN_CID))
    assert code == Status.NOT_FOUND
    assert UNKNOWN_CID in message


async def test_update_replaces_the_data_and_returns_no_token(admin: Harness) -> None:
    client = await admin.create("Carol", data="old")
    request = admin_pb2.UpdateClientRequest(cid=client.cid, data="new\nlines")
    updated = await admin.call("UpdateClient", request)
    assert (updated.data, updated.token, updated.name) == ("new\nlines", "", "Carol")
    fetched = await admin.call("GetClient", admin_pb2.GetClientRequest(cid=client.cid))
    assert fetched.data == "new\nlines"
    too_long = admin_pb2.UpdateClientRequest(cid=client.cid, data="x" * (MAX_DATA_BYTES + 1))
    code, message = await admin.status("UpdateClient", too_long)
    assert code == Status.INVALID_ARGUMENT and message.startswith("data")


async def test_rotate_token_stops_the_old_token_at_once(admin: Harness) -> None:
    client = await admin.create("Dave")
    cid = int(client.cid, 16)
    rotated = await admin.call("RotateToken", admin_pb2.RotateTokenRequest(cid=client.cid))
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", rotated.token)
    assert rotated.token != client.token
    assert rotated.cid == client.cid and rotated.created_at == client.created_at
    assert not await admin.store.authenticate(cid, client.token)
    assert await admin.store.authenticate(cid, rotated.token)
    fetched = await admin.call("GetClient", admin_pb2.GetClientRequest(cid=client.cid))
    assert fetched.token == ""


async def test_delete_removes_the_client_its_tasks_and_its_token(admin: Harness) -> None:
    client = await admin.create("Erin")
    cid = int(client.cid, 16)
    await admin.store.insert_task(cid, "milk", "2 litres")
    await admin.store.insert_task(cid, "bread", "")
    reply = await admin.call("DeleteClient", admin_pb2.DeleteClientRequest(cid=client.cid))
    assert reply == admin_pb2.DeleteClientResponse()
    assert not await admin.store.authenticate(cid, client.token)
    code, _ = await admin.status("GetClient", admin_pb2.GetClientRequest(cid=client.cid))
    assert code == Status.NOT_FOUND
    code, _ = await admin.status("DeleteClient", admin_pb2.DeleteClientRequest(cid=client.cid))
    assert code == Status.NOT_FOUND

    again = await admin.create("erin")  # the name is free again, with no tasks
    assert again.cid == client.cid
    assert await admin.store.list_tasks(cid) == []


# ---- ListClients ---------------------------------------------------------------------


async def test_paging_visits_every_client_once_in_cid_order(admin: Harness) -> None:
    created = {(await admin.create(f"pager {n}")).cid for n in range(23)}
    seen: list[str] = []
    token, pages = "", 0
    while True:
        request = admin_pb2.ListClientsRequest(page_size=5, page_token=token)
        page = await admin.call("ListClients", request)
        assert len(page.clients) <= 5
        assert all(c.token == "" for c in page.clients)
        seen.extend(c.cid for c in page.clients)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 5
    assert seen == sorted(created)


async def test_an_exactly_full_last_page_has_no_next_token(admin: Harness) -> None:
    for n in range(4):
        await admin.create(f"even {n}")
    first = await admin.call("ListClients", admin_pb2.ListClientsRequest(page_size=2))
    assert first.next_page_token
    request = admin_pb2.ListClientsRequest(page_size=2, page_token=first.next_page_token)
    second = await admin.call("ListClients", request)
    assert len(second.clients) == 2 and second.next_page_token == ""


async def test_page_size_defaults_to_50_and_is_capped_at_1000(admin: Harness) -> None:
    for n in range(1001):
        await admin.store.create_client(n, f"bulk {n}", "", "token")
    default = await admin.call("ListClients", admin_pb2.ListClientsRequest())
    assert len(default.clients) == 50 and default.next_page_token
    capped = await admin.call("ListClients", admin_pb2.ListClientsRequest(page_size=5000))
    assert len(capped.clients) == 1000
    rest = admin_pb2.ListClientsRequest(page_size=5000, page_token=capped.next_page_token)
    last = await admin.call("ListClients", rest)
    assert [c.cid for c in last.clients] == [format_cid(1000)]
    assert last.next_page_token == ""


async def test_an_empty_store_lists_nothing(admin: Harness) -> None:
    page = await admin.call("ListClients", admin_pb2.ListClientsRequest(page_size=10))
    assert list(page.clients) == [] and page.next_page_token == ""


async def test_a_negative_page_size_is_invalid_argument(admin: Harness) -> None:
    request = admin_pb2.ListClientsRequest(page_size=-1)
    code, message = await admin.status("ListClients", request)
    assert code == Status.INVALID_ARGUMENT and message.startswith("page_size")


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "AAAA",  # valid base64, 3 bytes
        "AAAAAAAAAAAAAAAA",  # valid base64, 12 bytes
        encode_page_token(42) + "=",  # padded: not the form we issue
        encode_page_token(42)[:-1] + "B",  # non-zero padding bits: not canonical
        "ÿÿÿÿÿÿÿÿÿÿÿ",
    ],
)
async def test_a_page_token_we_did_not_issue_is_invalid_argument(
    admin: Harness, token: str
) -> None:
    request = admin_pb2.ListClientsRequest(page_token=token)
    code, message = await admin.status("ListClients", request)
    assert code == Status.INVALID_ARGUMENT and message.startswith("page_token")


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_page_tokens_round_trip_every_cid(cid: int) -> None:
    token = encode_page_token(cid)
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}", token)
    assert decode_page_token(token) == cid


# ---- authentication ------------------------------------------------------------------

ALL_CALLS: list[tuple[str, Any]] = [
    ("CreateClient", admin_pb2.CreateClientRequest(name="Mallory")),
    ("GetClient", admin_pb2.GetClientRequest(cid=UNKNOWN_CID)),
    ("UpdateClient", admin_pb2.UpdateClientRequest(cid=UNKNOWN_CID, data="x")),
    ("DeleteClient", admin_pb2.DeleteClientRequest(cid=UNKNOWN_CID)),
    ("ListClients", admin_pb2.ListClientsRequest()),
    ("RotateToken", admin_pb2.RotateTokenRequest(cid=UNKNOWN_CID)),
]

BAD_METADATA = {
    "missing": (),
    "wrong token": (("authorization", "Bearer not-the-admin-token"),),
    "token prefix": (("authorization", f"Bearer {ADMIN_TOKEN[:-1]}"),),
    "no scheme": (("authorization", ADMIN_TOKEN),),
    "other scheme": (("authorization", f"Basic {ADMIN_TOKEN}"),),
    "scheme only": (("authorization", "Bearer"),),
    "empty token": (("authorization", "Bearer   "),),
    "other header": (("x-admin-token", ADMIN_TOKEN),),
}


@pytest.mark.parametrize(("rpc", "request_message"), ALL_CALLS)
@pytest.mark.parametrize("metadata", BAD_METADATA.values(), ids=BAD_METADATA.keys())
async def test_every_call_without_the_admin_token_is_unauthenticated(
    admin: Harness, rpc: str, request_message: Any, metadata: Any
) -> None:
    code, message = await admin.status(rpc, request_message, metadata)
    assert code == Status.UNAUTHENTICATED
    assert ADMIN_TOKEN not in message


async def test_unauthenticated_calls_change_nothing(admin: Harness) -> None:
    victim = await admin.create("Victim")
    for rpc, request in [
        ("CreateClient", admin_pb2.CreateClientRequest(name="Mallory")),
        ("DeleteClient", admin_pb2.DeleteClientRequest(cid=victim.cid)),
        ("RotateToken", admin_pb2.RotateTokenRequest(cid=victim.cid)),
        ("UpdateClient", admin_pb2.UpdateClientRequest(cid=victim.cid, data="owned")),
    ]:
        code, _ = await admin.status(rpc, request, BAD_METADATA["wrong token"])
        assert code == Status.UNAUTHENTICATED
    page = await admin.call("ListClients", admin_pb2.ListClientsRequest())
    assert [(c.cid, c.data) for c in page.clients] == [(victim.cid, "")]
    assert await admin.store.authenticate(int(victim.cid, 16), victim.token)


async def test_the_bearer_scheme_is_case_insensitive(admin: Harness) -> None:
    page = await admin.call(
        "ListClients", admin_pb2.ListClientsRequest(), (("authorization", f"bearer {ADMIN_TOKEN}"),)
    )
    assert list(page.clients) == []


# ---- status mapping and metrics ------------------------------------------------------


class FailingStore:
    """A store whose get_client always fails the same way."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def readiness(self) -> str | None:
        return None

    async def get_client(self, cid: int) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (errors.NOT_FOUND, Status.NOT_FOUND),
        (errors.EXISTS, Status.ALREADY_EXISTS),
        (errors.BAD_REQUEST, Status.INVALID_ARGUMENT),
        (errors.UNAVAILABLE, Status.UNAVAILABLE),
        (errors.TIMEOUT, Status.DEADLINE_EXCEEDED),
        (errors.UNAUTHORIZED, Status.UNAUTHENTICATED),
        (errors.INTERNAL, Status.INTERNAL),
    ],
)
async def test_store_errors_map_to_status_codes(code: str, status: Status) -> None:
    harness = await start_harness(FailingStore(OpError(code, f"the store says {code}")), None)
    try:
        got, message = await harness.status(
            "GetClient", admin_pb2.GetClientRequest(cid=UNKNOWN_CID)
        )
        assert (got, message) == (status, f"the store says {code}")
        assert harness.metrics.counts == {("GetClient", status.name.lower()): 1}
    finally:
        await stop_harness(harness)


async def test_an_unexpected_failure_is_internal_and_hides_the_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = await start_harness(FailingStore(RuntimeError("secret detail")), None)
    try:
        code, message = await harness.status(
            "GetClient", admin_pb2.GetClientRequest(cid=UNKNOWN_CID)
        )
        assert code == Status.INTERNAL
        assert "secret detail" not in message and "internal error" in message
        assert "secret detail" in caplog.text  # but the portal's log has it
    finally:
        await stop_harness(harness)


async def test_every_call_is_counted_by_rpc_and_outcome(admin: Harness) -> None:
    client = await admin.create("Frank")
    await admin.status("CreateClient", admin_pb2.CreateClientRequest(name="frank"))
    await admin.status("CreateClient", admin_pb2.CreateClientRequest(name=""))
    await admin.status("GetClient", admin_pb2.GetClientRequest(cid=UNKNOWN_CID))
    await admin.call("GetClient", admin_pb2.GetClientRequest(cid=client.cid))
    await admin.status("ListClients", admin_pb2.ListClientsRequest(), ())
    assert admin.metrics.counts == {
        ("CreateClient", "ok"): 1,
        ("CreateClient", "already_exists"): 1,
        ("CreateClient", "invalid_argument"): 1,
        ("GetClient", "not_found"): 1,
        ("GetClient", "ok"): 1,
        ("ListClients", "unauthenticated"): 1,
    }
    assert sum(admin.metrics.buckets["CreateClient"]) == 3


# ---- health and reflection -----------------------------------------------------------


async def health_status(admin: Harness, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(admin.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE)
    return reply.status


async def test_health_needs_no_token_and_follows_the_broker_connection(admin: Harness) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, 2
    assert not_serving == health_pb2.HealthCheckResponse.NOT_SERVING

    async def all_are(status: int) -> bool:
        return all([await health_status(admin, s) == status for s in ("", SERVICE)])

    await eventually(lambda: all_are(serving), "SERVING while connected", DEADLINE)
    assert admin.bus is not None
    admin.bus.disconnect()
    await eventually(lambda: all_are(not_serving), "NOT_SERVING once the bus is down", DEADLINE)
    await admin.bus.connect()
    await eventually(lambda: all_are(serving), "SERVING again after reconnecting", DEADLINE)


async def test_health_of_an_unknown_service_is_not_found(admin: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_status(admin, "no.such.Service")
    assert caught.value.code() == Status.NOT_FOUND


@pytest.mark.slow
async def test_stopping_the_portal_reports_not_serving_first(admin: Harness) -> None:
    stub = health_pb2_grpc.HealthStub(admin.channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=DEADLINE)
    statuses = [(await watch.read()).status]
    await admin.portal.stop(grace=1.0)
    with contextlib.suppress(grpc.aio.AioRpcError):  # the stop may end the stream itself
        async with asyncio.timeout(DEADLINE):
            while (reply := await watch.read()) is not grpc.aio.EOF:
                statuses.append(reply.status)
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING


async def reflect(admin: Harness, request: reflection_pb2.ServerReflectionRequest) -> Any:
    stub = reflection_pb2_grpc.ServerReflectionStub(admin.channel)
    call = stub.ServerReflectionInfo(iter([request]), timeout=DEADLINE)
    replies = [reply async for reply in call]
    assert len(replies) == 1
    return replies[0]


async def test_reflection_needs_no_token_and_lists_the_services(admin: Harness) -> None:
    reply = await reflect(admin, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in reply.list_services_response.service}
    assert names == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_reflection_describes_the_admin_service(admin: Harness) -> None:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    reply = await reflect(admin, request)
    from google.protobuf import descriptor_pb2

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    admin_file = next(f for f in files if f.name == "taskring/admin/v1/admin.proto")
    assert admin_file.package == "taskring.admin.v1"
    methods = {m.name for m in admin_file.service[0].method}
    assert methods == {
        "CreateClient",
        "GetClient",
        "UpdateClient",
        "DeleteClient",
        "ListClients",
        "RotateToken",
    }


# ---- binding -------------------------------------------------------------------------


async def test_a_port_in_use_is_an_os_error(admin: Harness) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        await start_admin_server(admin.store, ADMIN_TOKEN, "127.0.0.1", admin.portal.port)
