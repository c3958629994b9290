"""How the CLI prints replies and tables: for a person on a terminal, whole and fast into a
pipe or a file."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from rich.table import Table

from stageline import cli_http


def printed(monkeypatch: pytest.MonkeyPatch, *, terminal: bool) -> io.StringIO:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=80)
    monkeypatch.setattr(cli_http, "console", console)
    return out


REPLY = {"id": "39fda9a5-d142-49c0-af91-e5dfd4baf3e9", "name": "Zoë", "stages": [1, None]}


def test_json_into_a_pipe_is_plain_json_indented_by_two(monkeypatch: pytest.MonkeyPatch) -> None:
    out = printed(monkeypatch, terminal=False)
    cli_http.print_json(REPLY)
    assert out.getvalue() == json.dumps(REPLY, indent=2, ensure_ascii=False) + "\n"
    assert "\x1b[" not in out.getvalue()


def test_json_on_a_terminal_is_highlighted_unless_long(monkeypatch: pytest.MonkeyPatch) -> None:
    out = printed(monkeypatch, terminal=True)
    cli_http.print_json(REPLY)
    assert "\x1b[" in out.getvalue()
    assert json.loads(re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())) == REPLY

    long = [REPLY] * (cli_http.HIGHLIGHT_JSON_CHARS // 100)
    out = printed(monkeypatch, terminal=True)
    cli_http.print_json(long)
    assert "\x1b[" not in out.getvalue()
    assert json.loads(out.getvalue()) == long


def test_a_table_into_a_pipe_is_tab_separated_with_whole_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = printed(monkeypatch, terminal=False)
    rows = [
        {"id": REPLY["id"] * 3, "status": "failed", "note": "two\tcells\nand a line"},
        {"id": "b", "status": None},
    ]
    cli_http.print_table(rows, ("id", "status", "note"))
    assert out.getvalue().splitlines() == [
        "id\tstatus\tnote",
        f"{REPLY['id'] * 3}\tfailed\ttwo cells and a line",
        "b\t\t",
    ]


def test_a_table_on_a_terminal_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    out = printed(monkeypatch, terminal=True)
    cli_http.print_table([{"id": "a", "status": "completed"}], ("id", "status"))
    assert "┃" in out.getvalue() and "\t" not in out.getvalue()


def test_lines_and_tables_into_a_pipe_are_never_wrapped() -> None:
    long = "x" * 300
    out = io.StringIO()
    console = cli_http._Output(file=out)  # stdout's console, into a file
    console.print(f"[red]- {long}[/red] (only in a)")
    table = Table()
    table.add_column("id")
    table.add_column("n")
    table.add_row(long, "1")
    console.print(table)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"- {long} (only in a)"
    assert sum(long in line for line in lines[1:]) == 1 and max(map(len, lines)) < 400

    on_terminal = cli_http._Output(file=io.StringIO(), force_terminal=True, width=80)
    on_terminal.print(long)  # rich's own wrapping, as on a terminal
    assert on_terminal.file.getvalue().count("\n") > 1
