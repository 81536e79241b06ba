"""Regenerate the Python code of the admin API from protos/ with grpc_tools.protoc.

    python -m backend.admin_pb.generate           # rewrite backend/admin_pb/*_pb2*.py
    python -m backend.admin_pb.generate --check   # exit 1 if they are out of date

protoc writes `from taskring.admin.v1 import admin_pb2`, an import that only
works with protos/ on sys.path; we rewrite it to a package-relative import so
`from backend.admin_pb import admin_pb2_grpc` works from an installed package.
"""

from __future__ import annotations

import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
PROTO = "taskring/admin/v1/admin.proto"
PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED = ("admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py")

ABSOLUTE_IMPORT = re.compile(r"^from taskring\.admin\.v1 import (\w+)", re.MULTILINE)


class ProtocError(RuntimeError):
    """protoc refused the proto; the message holds what it printed."""


def generate(out_dir: Path) -> list[Path]:
    """Write the generated files into out_dir (flat, imports made relative); return them."""
    from grpc_tools import protoc  # a development dependency: only needed here

    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            str(PROTO_ROOT / PROTO),
        ]
        if protoc.main(args) != 0:
            raise ProtocError(f"protoc failed on {PROTO_ROOT / PROTO}")
        source_dir = Path(raw) / Path(PROTO).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = ABSOLUTE_IMPORT.sub(r"from . import \1", (source_dir / name).read_text())
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def stale_files(committed_dir: Path = PACKAGE_DIR) -> list[str]:
    """Names of the committed generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as fresh:
        generate(Path(fresh))
        return [
            name
            for name in GENERATED
            if not (committed_dir / name).is_file()
            or (committed_dir / name).read_bytes() != (Path(fresh) / name).read_bytes()
        ]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_files()
        if stale:
            print(f"out of date: {', '.join(stale)}; run `make proto`", file=sys.stderr)
            return 1
        return 0
    if argv:
        print("usage: python -m backend.admin_pb.generate [--check]", file=sys.stderr)
        return 2
    for path in generate(PACKAGE_DIR):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
