"""`taskring chaos` refuses bad flags before it touches anything."""

from __future__ import annotations

from click.testing import CliRunner

from backend.chaos.cli import chaos
from backend.cli.main import COMMANDS


def test_an_unknown_fault_is_a_usage_error() -> None:
    done = CliRunner().invoke(chaos, ["--faults", "pause,flood"])
    assert done.exit_code == 2
    assert "unknown fault 'flood'" in done.output


def test_a_run_too_short_for_the_quiet_start_and_end_is_a_usage_error() -> None:
    done = CliRunner().invoke(chaos, ["--duration", "3s"])
    assert done.exit_code == 2
    assert "at least 6s" in done.output


def test_the_command_is_registered() -> None:
    assert COMMANDS["chaos"][0] == "backend.chaos.cli:chaos"
