"""How CLI commands talk to a running API: shared options, one request helper, output."""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
import typer
import yaml
from rich.console import Console, ConsoleDimensions
from rich.progress import Progress, ProgressColumn
from rich.table import Table

from stageline.settings import HTTP_SCHEMES, check_url

__all__ = [
    "DEFAULT_API",
    "ApiUrl",
    "Cursor",
    "Workspace",
    "answer",
    "api_answers",
    "call",
    "console",
    "err_console",
    "json_object",
    "load_document",
    "print_json",
    "print_next",
    "print_table",
    "progress_bar",
    "say_error",
    "send",
    "unreachable",
]

DEFAULT_API = "http://127.0.0.1:8000"


def _api_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; else one line saying so, and exit 2."""
    try:
        return check_url(url, HTTP_SCHEMES)
    except ValueError as exc:
        say_error(f"invalid --url/STAGELINE_API_URL: {exc}")
        raise typer.Exit(2) from None


ApiUrl = Annotated[
    str,
    typer.Option(
        "--url", envvar="STAGELINE_API_URL", callback=_api_url, help="The API's base URL."
    ),
]
Workspace = Annotated[
    str | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="STAGELINE_WORKSPACE",
        show_envvar=False,
        help="Workspace (default: STAGELINE_WORKSPACE, else the API's default).",
    ),
]
Cursor = Annotated[
    str | None,
    typer.Option(help="Where a page starts: the `--cursor` the page before ended with."),
]

UNWRAPPED_WIDTH = 1 << 20
"""The width output into a pipe or a file is laid out in: wider than any line it holds."""


class _Output(Console):
    """stdout's console. On a terminal, rich's as it is; into a pipe or a file (looked at as
    each thing is printed), nothing wrapped or cut to a width (rich's 80 columns there): a
    line however long stays one line, a table as wide as its widest row, every value whole
    (``stageline diff a b > d.txt``, the ``import`` summary)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


console: Console = _Output()
"""Where data goes: stdout."""
err_console = Console(stderr=True, soft_wrap=True, highlight=False)
"""Where errors, warnings, notices and progress go: stderr, one line each however long (not
wrapped), so that stdout holds data only (``stageline tail > log.jsonl``, ``replay --json |
jq``)."""


def progress_bar(
    *columns: ProgressColumn, console: Console | None = None, transient: bool = True
) -> Progress:
    """A progress bar on stderr (or ``console``), shown on a terminal only: into a pipe or a
    file it prints nothing at all, where rich would leave a blank line, or the bar as it
    ended, in the file."""
    console = console or Console(stderr=True)
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)


def say_error(text: str) -> None:
    """``text`` as one line on stderr, red on a terminal; printed as it is (a ``[`` in a
    path or a message is not taken for markup)."""
    err_console.print(text, style="red", markup=False)


def send(method: str, url: str, path: str, workspace: str | None, **kwargs: Any) -> httpx.Response:
    """One API request, whatever its answer; exits 2 if the API is unreachable."""
    headers = {"X-Workspace": workspace} if workspace else {}
    headers.update(kwargs.pop("headers", None) or {})
    try:
        return httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=70, **kwargs)
    except httpx.HTTPError as exc:
        raise unreachable(url, exc) from exc


def unreachable(url: str, error: object) -> typer.Exit:
    """Print that the API at ``url`` could not be reached, and why; the exit (2) to raise."""
    say_error(f"cannot reach the API at {url} ({error}); is `stageline up` running?")
    return typer.Exit(2)


def call(method: str, url: str, path: str, workspace: str | None, **kwargs: Any) -> Any:
    """The JSON answer of one API request; exits 2 if the API is unreachable, 1 on an error."""
    return answer(send(method, url, path, workspace, **kwargs))


def answer(reply: httpx.Response) -> Any:
    """The JSON of a successful answer; prints the error and exits 1 otherwise."""
    if reply.status_code >= 400:
        say_error(f"{reply.status_code} {_error_text(reply)}")
        raise typer.Exit(1)
    return reply.json()


def _error_text(reply: httpx.Response) -> str:
    """``CODE: message`` from the error envelope, or the raw body when it is not one."""
    try:
        error = reply.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return reply.text


def load_document(file: Path) -> Any:
    """The JSON of a ``.json`` file, or of a YAML one (any other suffix); exits 2 if unusable.

    YAML values JSON has no type for (a date, a timestamp, binary, a non-string key,
    ``.nan``) are refused, naming where they are, rather than guessed at; so is a key
    given twice in one mapping (which would silently be the last one).
    """
    try:
        text = file.read_text()
        if file.suffix.lower() == ".json":
            data = _JSONDecoder().decode(text)
        else:
            data = yaml.load(text, _Loader)
        problem = _not_json(data)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # UnicodeDecodeError is a ValueError
        say_error(f"cannot read {file}: {_one_line(exc)}")
        raise typer.Exit(2) from exc
    except RecursionError as exc:  # the parsers and _not_json recurse into each level
        say_error(f"cannot read {file}: it is nested too deeply")
        raise typer.Exit(2) from exc
    if problem is not None:
        say_error(f"{file}: {problem}, which JSON cannot hold; quote it to make it a string")
        raise typer.Exit(2)
    return data


def json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` read as a JSON object; one line saying what is wrong with ``what`` and exit
    2 if it is not one (a key given twice, a non-finite number too)."""
    try:
        data = _JSONDecoder().decode(text)
    except ValueError as exc:
        say_error(f"invalid {what}: {_one_line(exc)}")
        raise typer.Exit(2) from exc
    except RecursionError as exc:
        say_error(f"invalid {what}: it is nested too deeply")
        raise typer.Exit(2) from exc
    if not isinstance(data, dict):
        say_error(f"invalid {what}: a JSON object is needed, not {json.dumps(data)[:80]}")
        raise typer.Exit(2)
    problem = _not_json(data)
    if problem is not None:
        say_error(f"invalid {what}: {problem}")
        raise typer.Exit(2)
    return data


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing anchors and aliases: a config file has no need of them,
    and through them a few lines can hold themselves (a recursion without end) or a billion
    values (billion laughs)."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            found = f"*{anchor}" if isinstance(event, yaml.AliasEvent) else f"&{anchor}"
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML anchors and aliases ({found}) are refused: a config file has no need "
                "of them; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: {...}`: the SafeLoader's
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the SafeLoader refuses it below
                continue
            if seen is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice (first at line {seen.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


class _JSONDecoder(json.JSONDecoder):
    """``json.JSONDecoder`` refusing a key given twice in one object, saying where.

    Uses the Python scanner: the C one cannot be given another way to parse objects.
    """

    def __init__(self) -> None:
        super().__init__()
        self.parse_object = self._object
        self.scan_once = json.scanner.py_make_scanner(self)  # type: ignore[attr-defined]

    @staticmethod
    def _object(
        s_and_end: tuple[str, int], strict: bool, scan_once: Any, *hooks: Any
    ) -> tuple[dict[str, Any], int]:
        text = s_and_end[0]
        starts: list[int] = []  # where each of this object's values starts

        def scan(string: str, index: int) -> Any:
            starts.append(index)
            return scan_once(string, index)

        object_hook, _, memo = hooks
        pairs, end = json.decoder.JSONObject(  # type: ignore[attr-defined]
            s_and_end, strict, scan, object_hook, list, memo
        )
        found: dict[str, Any] = {}
        for (key, value), start in zip(pairs, starts, strict=True):
            if key in found:
                raise json.JSONDecodeError(f"the key {key!r} is given twice", text, start)
            found[key] = value
        return found, end


def _one_line(error: Exception) -> str:
    """What ``error`` says in one line; for a YAML error, where in the file, then what."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        said = ", ".join(str(part) for part in (error.context, error.problem) if part)
        return f"line {mark.line + 1}, column {mark.column + 1}: {said}"
    return " ".join(str(error).split())


def _not_json(value: Any, where: str = "") -> str | None:
    """What the first value or key in ``value`` that JSON cannot hold is, and where; else None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where or 'the document'} has the key {key} (type {type(key).__name__})"
            problem = _not_json(item, f"{where}.{key}" if where else key)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list):
        problems = (_not_json(item, f"{where}[{i}]") for i, item in enumerate(value))
        return next((p for p in problems if p is not None), None)
    if isinstance(value, float):
        fits = math.isfinite(value)
    else:
        fits = value is None or isinstance(value, str | int)  # bool is an int
    return None if fits else f"{where or 'the document'} is {value} (type {type(value).__name__})"


def api_answers(url: str) -> bool:
    try:
        return httpx.get(url.rstrip("/") + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


HIGHLIGHT_JSON_CHARS = 64 * 1024
"""Longest JSON printed highlighted (on a terminal): rich's rendering grows out of hand."""


def print_json(reply: Any) -> None:
    """``reply`` as JSON indented by 2, highlighted on a terminal when short, else plain.

    Through rich, the 24 MB of a 20,000-run `replay --json` took 119 s and 5 GB of
    memory to print into a pipe; written by msgspec, 0.2 s (``json.dumps`` with an
    indent: 1.6 s).
    """
    text = msgspec.json.format(msgspec.json.encode(reply), indent=2).decode()
    if console.is_terminal and len(text) <= HIGHLIGHT_JSON_CHARS:
        console.print_json(text)
    else:
        console.file.write(text + "\n")


def print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` as a table of ``columns`` (missing or null values print empty).

    Into a pipe or a file, tab-separated lines under a header line instead: whole values
    scripts can cut and grep (a table there is cut to 80 columns, ids shortened to
    `39fda9a5-d142-4…`), and 20,000 rows of `replay` in well under a second, not 34 s.
    """
    if not console.is_terminal:
        out = console.file
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(_field(row.get(c)) for c in columns) + "\n")
        return
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def print_next(reply: Mapping[str, Any]) -> None:
    """Under a page of a list, how to ask for the next one, if there is one: on stderr, so
    that stdout holds the rows only."""
    if reply.get("next_cursor") is not None:
        err_console.print(f"more: --cursor {reply['next_cursor']}", markup=False)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _field(value: Any) -> str:
    """A cell of a tab-separated line: tabs and line breaks in it become spaces."""
    return " ".join(_cell(value).replace("\t", " ").splitlines())
