"""The committed admin API code in backend/admin_pb matches protos/ (run `make proto` if not)."""

from __future__ import annotations

import importlib

from backend.admin_pb import generate


def test_the_committed_generated_code_is_up_to_date() -> None:
    assert generate.stale_files() == [], "backend/admin_pb is stale: run `make proto`"


def test_the_generated_code_imports_as_a_package() -> None:
    grpc_module = importlib.import_module("backend.admin_pb.admin_pb2_grpc")
    messages = importlib.import_module("backend.admin_pb.admin_pb2")
    assert grpc_module.taskring_dot_admin_dot_v1_dot_admin__pb2 is messages
    assert messages.DESCRIPTOR.package == "taskring.admin.v1"
