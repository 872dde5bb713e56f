"""ShareGPT-style conversations: a JSON array (or JSON lines) of {"id", "conversations": [{"from", "value"}]}.

Token counts come from the caller's `count_tokens(text) -> int` (the model's tokenizer); the file
holds text only. Each user message answered by an assistant message is one request: its prompt is
the whole conversation so far (system text, earlier turns and replies) plus the new user text, its
output the reply. Turns of a conversation share its `session_id` and link to the previous turn by
`parent_id`. The format has no times: every request arrives at 0 (give it arrivals with
`transforms.with_arrivals`).

Oddities handled: roles are `human`/`user`, `gpt`/`chatgpt`/`assistant`/`bard`/`bing`/`model`, and
`system`; consecutive user messages join into one prompt; a reply nothing asked for (conversations
that open with the assistant) is context only; a conversation that ends on an unanswered user
message, or holds no request at all, counts one `no_reply` row, skipped in both modes.
"""

from __future__ import annotations

import json
import re
from os import PathLike
from typing import Callable, Iterator

import numpy as np

from workloads.errors import TraceFormatError
from workloads.table import Trace
from workloads.textfile import read_lines, read_text
from workloads.validate import RowChecker, build_trace

SIGNATURE = frozenset({"conversations"})
_USER = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "chatgpt", "assistant", "bard", "bing", "model"})
_ROLES = _USER | _ASSISTANT | {"system"}
_SPACE = re.compile(r"[ \t\r\n]*")


def read(
    path: str | PathLike, *, skip_invalid: bool = False, count_tokens: Callable[[str], int] | None = None
) -> Trace:
    if count_tokens is None:
        raise TraceFormatError(
            path,
            None,
            None,
            None,
            "count_tokens=<the model's tokenizer>: ShareGPT holds text, not token counts",
            "no_tokenizer",
        )
    rows = _Rows()
    for line, item in _items(path):
        if isinstance(item, TraceFormatError):
            rows.problem(line, item.reason, item.value, item.expected)
        else:
            rows.conversation(line, item, count_tokens)
    checker = RowChecker(path, rows.line, skip_invalid)
    reasons = np.array([None if p is None else p[0] for p in rows.problems], dtype=object)
    values = [None if p is None else p[1] for p in rows.problems]
    for reason, column in (("bad_encoding", None), ("bad_json", None), ("bad_conversation", "conversations")):
        checker.reject(reasons == reason, reason, column, values, lambda i: rows.problems[i][2])
    checker.drop(reasons == "no_reply", "no_reply", "conversations", values, "a user message answered by the assistant")
    prompt = checker.integers(np.array(rows.prompt, dtype=object), "conversations")
    output = checker.integers(np.array(rows.output, dtype=object), "conversations")
    return build_trace(
        checker,
        format="sharegpt",
        times=np.zeros(len(rows.line)),
        time_column="-",
        raw_times=np.zeros(len(rows.line)),
        units_per_second=1.0,
        prompt_tokens=prompt,
        output_tokens=output,
        session_id=rows.session,
        turn=np.array(rows.turn, dtype=np.int64),
        keys=np.arange(len(rows.line)),
        parent_keys=np.array(rows.parent, dtype=np.int64),
    )


class _Rows:
    """Column lists of the rows found: one per request, plus one per problem (kept for counting)."""

    def __init__(self):
        self.line: list[int] = []
        self.prompt: list[int] = []
        self.output: list[int] = []
        self.session: list[str | None] = []
        self.turn: list[int] = []
        self.parent: list[int] = []
        self.problems: list[tuple | None] = []  # (reason, value, expected) or None

    def _add(self, line, prompt, output, session, turn, parent, problem) -> int:
        self.line.append(line)
        self.prompt.append(prompt)
        self.output.append(output)
        self.session.append(session)
        self.turn.append(turn)
        self.parent.append(parent)
        self.problems.append(problem)
        return len(self.line) - 1

    def problem(self, line, reason, value, expected) -> None:
        self._add(line, 0, 0, None, -1, -1, (reason, value, expected))

    def conversation(self, line: int, item, count_tokens: Callable[[str], int]) -> None:
        messages = item.get("conversations") if isinstance(item, dict) else None
        bad = _malformed(item, messages)
        if bad is not None:
            self.problem(
                line, "bad_conversation", bad[0], f"{{'from': one of {sorted(_ROLES)}, 'value': text}} messages"
            )
            return
        session = str(item.get("id", f"line{line}"))
        context = asked = 0
        waiting = False
        turn, parent = 0, -1
        for message in messages:
            tokens = _count(count_tokens, message["value"])
            if message["from"] in _USER:
                asked += tokens
                waiting = True
            elif message["from"] in _ASSISTANT and waiting:
                turn += 1
                parent = self._add(line, context + asked, tokens, session, turn, parent, None)
                context += asked + tokens
                asked, waiting = 0, False
            else:
                context += tokens
        if waiting or turn == 0:
            self.problem(line, "no_reply", session, "a user message answered by the assistant")


def _malformed(item, messages) -> tuple[object] | None:
    """(the offending value,) if the item is not a conversation of {'from', 'value'} messages, else None."""
    if not isinstance(item, dict):
        return (item,)
    if not isinstance(messages, list):
        return (messages,)
    for message in messages:
        role = message.get("from") if isinstance(message, dict) else None
        if not (isinstance(role, str) and role in _ROLES and isinstance(message.get("value"), str)):
            return (message,)
    return None


def _count(count_tokens: Callable[[str], int], text: str) -> int:
    tokens = count_tokens(text)
    if not isinstance(tokens, (int, np.integer)) or tokens < 0:
        raise TypeError(f"count_tokens must return a token count >= 0, returned {tokens!r}")
    return int(tokens)


def _items(path) -> Iterator[tuple[int, object]]:
    """(line, conversation) for each element of a JSON array or each JSON line; a TraceFormatError in
    place of a line that cannot be a conversation (JSON lines only: an array cannot resume after one)."""
    text, has_bad_bytes = read_text(path)
    start = _SPACE.match(text).end()
    if not text.startswith("[", start):
        yield from _line_items(path)
        return
    if has_bad_bytes:
        at = re.search("[\udc80-\udcff]", text).start()
        raise TraceFormatError(
            path, text.count("\n", 0, at) + 1, None, text[at : at + 20], "UTF-8 text", "bad_encoding"
        )
    decoder = json.JSONDecoder()
    line, counted_to = 1, 0
    at = _SPACE.match(text, start + 1).end()
    while not text.startswith("]", at):
        line += text.count("\n", counted_to, at)
        counted_to = at
        try:
            item, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError) as error:
            line = getattr(error, "lineno", line)
            raise TraceFormatError(
                path, line, None, text[at : at + 40], f"a JSON array of conversations ({error})", "bad_json"
            )
        yield line, item
        at = _SPACE.match(text, at).end()
        if text.startswith(",", at):
            at = _SPACE.match(text, at + 1).end()
        elif not text.startswith("]", at):
            raise TraceFormatError(path, line, None, text[at : at + 40], "',' or ']' after a conversation", "bad_json")
    if text[at + 1 :].strip():
        raise TraceFormatError(path, line, None, text[at + 1 : at + 41], "nothing after the closing ']'", "bad_json")


def _line_items(path) -> Iterator[tuple[int, object]]:
    text = read_lines(path)
    for number, line, undecodable in zip(text.numbers, text.lines, text.undecodable):
        if undecodable:
            yield int(number), TraceFormatError(path, int(number), None, line, "UTF-8 text", "bad_encoding")
            continue
        try:
            yield int(number), json.loads(line)
        except (ValueError, RecursionError):
            yield int(number), TraceFormatError(
                path, int(number), None, line, "one JSON conversation per line", "bad_json"
            )
