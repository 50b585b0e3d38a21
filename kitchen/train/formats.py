"""Dataset row formats: detect which shape a file's rows have and normalise them.

Users arrive with the shapes the ecosystem writes, not ours. Every SFT row is normalised
to one of two canonical shapes the renderer understands:

* ``{"messages": [{"role", "content"[, "weight"]}, ...]}``: a conversation. ``weight``
  (0 or 1, optional per message) overrides ``train_on_what`` for that message;
* ``{"text": "..."}``: raw text for continued pretraining, trained on every token.

and every preference row to ``{"prompt": [...], "chosen": [...], "rejected": [...]}``
(message lists).

Accepted SFT formats (``dataset_format=``):

==================== ==================================================================
``messages``          OpenAI chat rows; ``content`` may be a string or a list of text
                      parts (``{"type": "text", "text": ...}``); per-message ``weight``
``sharegpt``          ``{"conversations": [{"from": "human"|"gpt"|..., "value": ...}]}``
``alpaca``            ``instruction``, optional ``input``, ``output``, optional ``system``
``prompt_completion`` ``prompt`` + ``completion``: two strings, or TRL's conversational
                      form (two message lists); loss on the completion only
``text``              ``{"text": ...}``: loss on every token
==================== ==================================================================

Preference (``preference``): ``prompt``/``chosen``/``rejected`` as strings or message
lists, or TRL's implicit-prompt form (``chosen``/``rejected`` full conversations sharing
their prompt turns).

Unpaired preference (``unpaired``, the kto workflow): TRL's unpaired format,
``prompt`` + ``completion`` (strings or message lists) + ``label`` (true: desirable), or
``messages`` + ``label`` (the last assistant message is the completion). Normalised to
``{"messages": [prompt turns at weight 0, completion at weight 1], "label": bool}``.

``dataset_columns`` maps canonical field names to the file's own columns
(``{"messages": "dialog"}``) before detection. Pure functions, no I/O: errors are
:class:`RowError` (row index + field) that the caller turns into a DataError naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from kitchen.errors import DataError, did_you_mean
from kitchen.train.messages import ROLES

SFT_FORMATS: tuple[str, ...] = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
PREFERENCE_FORMATS: tuple[str, ...] = ("preference",)
UNPAIRED_FORMATS: tuple[str, ...] = ("unpaired",)
ALL_FORMATS: tuple[str, ...] = ("auto",) + SFT_FORMATS + PREFERENCE_FORMATS + UNPAIRED_FORMATS

#: what each format needs in a row, for error messages
FORMAT_KEYS: dict[str, str] = {
    "messages": '"messages" (OpenAI chat)',
    "sharegpt": '"conversations" with from/value (ShareGPT)',
    "alpaca": '"instruction" + "output" (Alpaca)',
    "prompt_completion": '"prompt" + "completion" (strings or message lists)',
    "text": '"text" (plain text, continued pretraining)',
    "preference": '"prompt" + "chosen" + "rejected" (strings or message lists), or "chosen" + "rejected" conversations',
    "unpaired": '"prompt" + "completion" (strings or message lists) + "label" (true/false), or "messages" + "label"',
}

#: the fields ``dataset_columns`` can map a file's own column onto
CANONICAL_FIELDS: tuple[str, ...] = (
    "messages", "conversations", "instruction", "input", "output", "system", "prompt", "completion", "text",
    "chosen", "rejected",
)
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "function_response": "tool", "ipython": "tool",
}


class RowError(Exception):
    """A row that breaks its format: which field and what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class FormatChoice:
    """The format a file's rows are read as, and how it was chosen."""

    name: str
    detected: bool  # True: auto-detected; False: set with dataset_format=
    columns: tuple[tuple[str, str], ...] = ()

    def label(self) -> str:
        how = "detected" if self.detected else "dataset_format"
        mapped = "".join(f", {canon}<-{col}" for canon, col in self.columns)
        return f"{self.name} ({how}{mapped})"


# ----------------------------------------------------------------------------- detection


def detect(row: Mapping[str, Any], kind: str = "sft") -> str | None:
    """The format of one (already column-mapped) row, or None when nothing fits."""
    if not isinstance(row, Mapping):
        return None
    keys = set(row)
    if kind == "preference":
        if {"chosen", "rejected"} <= keys:
            return "preference"
        return None
    if kind == "unpaired":
        if "label" in keys and ({"prompt", "completion"} <= keys or "messages" in keys):
            return "unpaired"
        return None
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def _formats_of(kind: str) -> tuple[str, ...]:
    return {"preference": PREFERENCE_FORMATS, "unpaired": UNPAIRED_FORMATS}.get(kind, SFT_FORMATS)


def accepted_formats(kind: str) -> str:
    names = _formats_of(kind)
    return "; ".join(f"{n}: {FORMAT_KEYS[n]}" for n in names)


def check_format_name(name: str, kind: str = "sft") -> None:
    """ConfigError-style DataError for a dataset_format value that does not exist for ``kind``."""
    allowed = ("auto",) + _formats_of(kind)
    if name not in allowed:
        from kitchen.errors import ConfigError

        noun = {"preference": "preference", "unpaired": "unpaired preference (kto)"}.get(kind, "supervised")
        raise ConfigError(
            f"dataset_format={name!r} is not a {noun} data format; "
            f"allowed values: {', '.join(allowed)}." + did_you_mean(name, allowed)
        )


def apply_columns(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """``row`` with each mapped column renamed to its canonical field."""
    if not columns:
        return dict(row)
    out = dict(row)
    for canonical, column in columns.items():
        if column in out:
            out[canonical] = out.pop(column)
    return out


def check_columns(source: str, first_row: Mapping[str, Any], columns: Mapping[str, str]) -> None:
    """DataError when a ``dataset_columns`` entry names a column the data does not have."""
    for canonical, column in columns.items():
        if column not in first_row:
            seen = ", ".join(map(str, first_row)) or "none"
            raise DataError(
                f"{source}: dataset_columns.{canonical}={column!r} names a column that is not in the data. "
                f"Columns in its first row: {seen}." + did_you_mean(str(column), [str(k) for k in first_row])
            )


def choose_format(source: str, first_row: Any, requested: str = "auto", kind: str = "sft",
                  columns: Mapping[str, str] | None = None) -> FormatChoice:
    """The format for a file whose first row is ``first_row`` (after ``dataset_columns``)."""
    columns = {k: v for k, v in (columns or {}).items() if v}
    unknown = [k for k in columns if k not in CANONICAL_FIELDS]
    if unknown:
        raise DataError(f"dataset_columns.{unknown[0]} is not a field kitchen reads; map one of "
                        f"{', '.join(CANONICAL_FIELDS)}." + did_you_mean(unknown[0], CANONICAL_FIELDS))
    check_format_name(requested, kind)
    if isinstance(first_row, Mapping):
        check_columns(source, first_row, columns)
    cols = tuple(sorted(columns.items()))
    if requested != "auto":
        return FormatChoice(requested, False, cols)
    row = apply_columns(first_row, columns) if isinstance(first_row, Mapping) else first_row
    found = detect(row, kind) if isinstance(row, Mapping) else None
    if found is None:
        seen = ", ".join(f'"{k}"' for k in row) if isinstance(row, Mapping) and row else "none"
        raise DataError(
            f"{source}: cannot tell the data format from its first row (keys: {seen}). "
            f"Accepted formats: {accepted_formats(kind)}. Rename the columns with dataset_columns "
            "(e.g. dataset_columns.messages=dialog) or set dataset_format=."
        )
    return FormatChoice(found, True, cols)


# ------------------------------------------------------------------------- normalisation


def _text_content(content: Any, field: str) -> str:
    """A message's content as one string: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for k, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise RowError(f"{field}[{k}]", f"content part of type {kind!r}; only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported")
        return "".join(parts)
    if content is None:
        raise RowError(field, "missing content")
    raise RowError(field, f"content must be a string or a list of text parts, got {type(content).__name__}")


def _weight(value: Any, field: str) -> float:
    if isinstance(value, bool) or value not in (0, 1):
        raise RowError(field, f"weight must be 0 or 1, got {value!r}")
    return float(value)


def normalize_messages(messages: Any, field: str = "messages") -> list[dict[str, Any]]:
    """OpenAI messages: content parts joined, weights checked, extra keys dropped."""
    if not isinstance(messages, (list, tuple)):
        raise RowError(field, f"must be a list of {{\"role\", \"content\"}} objects, got {type(messages).__name__}")
    if not messages:
        raise RowError(field, "is an empty list")
    out = []
    for j, m in enumerate(messages):
        where = f"{field}[{j}]"
        if not isinstance(m, Mapping):
            raise RowError(where, f"is a {type(m).__name__}, expected an object with \"role\" and \"content\"")
        role = m.get("role")
        if role not in ROLES:
            raise RowError(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        msg: dict[str, Any] = {"role": role, "content": _text_content(m.get("content"), f"{where}.content")}
        if m.get("weight") is not None:
            msg["weight"] = _weight(m["weight"], f"{where}.weight")
        out.append(msg)
    return out


def _sharegpt(turns: Any) -> list[dict[str, Any]]:
    field = "conversations"
    if not isinstance(turns, (list, tuple)) or not turns:
        raise RowError(field, "must be a non-empty list of {\"from\", \"value\"} objects")
    out = []
    for j, t in enumerate(turns):
        where = f"{field}[{j}]"
        if not isinstance(t, Mapping):
            raise RowError(where, f"is a {type(t).__name__}, expected an object with \"from\" and \"value\"")
        speaker = t.get("from", t.get("role"))
        role = SHAREGPT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise RowError(f"{where}.from", f"{speaker!r} is not a known speaker ({', '.join(sorted(SHAREGPT_ROLES))})")
        value = t.get("value", t.get("content"))
        msg: dict[str, Any] = {"role": role, "content": _text_content(value, f"{where}.value")}
        if t.get("weight") is not None:
            msg["weight"] = _weight(t["weight"], f"{where}.weight")
        out.append(msg)
    return out


def _string(row: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(key, "is missing")
        return ""
    if not isinstance(value, str):
        raise RowError(key, f"must be a string, got {type(value).__name__}")
    return value


def _alpaca(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    instruction = _string(row, "instruction")
    extra = _string(row, "input", required=False)
    output = _string(row, "output")
    system = _string(row, "system", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs = [{"role": "system", "content": system}] if system.strip() else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _as_turns(value: Any, field: str, default_role: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, Mapping):
        value = [value]
    return normalize_messages(value, field)


def _prompt_completion(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    if row.get("prompt") is None:
        raise RowError("prompt", "is missing")
    if row.get("completion") is None:
        raise RowError("completion", "is missing")
    prompt = _as_turns(row["prompt"], "prompt", "user")
    completion = _as_turns(row["completion"], "completion", "assistant")
    for m in prompt:
        m["weight"] = 0.0
    for m in completion:
        m.setdefault("weight", 1.0)
    return prompt + completion


def normalize_sft(row: Any, fmt: str, columns: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One row in format ``fmt`` as ``{"messages": [...]}`` or ``{"text": ...}``; RowError if it breaks the format."""
    if not isinstance(row, Mapping):
        raise RowError("row", f"is a {type(row).__name__}, not an object")
    row = apply_columns(row, columns or {})
    if fmt == "messages":
        if "messages" not in row:
            raise RowError("messages", f"is missing (keys: {', '.join(map(str, row)) or 'none'})")
        msgs = normalize_messages(row["messages"])
    elif fmt == "sharegpt":
        if "conversations" not in row:
            raise RowError("conversations", f"is missing (keys: {', '.join(map(str, row)) or 'none'})")
        msgs = _sharegpt(row["conversations"])
    elif fmt == "alpaca":
        msgs = _alpaca(row)
    elif fmt == "prompt_completion":
        msgs = _prompt_completion(row)
    elif fmt == "text":
        return {"text": _string(row, "text")}
    else:  # pragma: no cover - check_format_name guards this
        raise ValueError(f"unknown SFT format {fmt!r}")
    return {"messages": msgs}


def _common_prefix(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def normalize_preference(row: Any, columns: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One preference row as ``{"prompt": [...], "chosen": [...], "rejected": [...]}``."""
    if not isinstance(row, Mapping):
        raise RowError("row", f"is a {type(row).__name__}, not an object")
    row = apply_columns(row, columns or {})
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise RowError(key, "is missing")
    if row.get("prompt") is None:  # TRL implicit prompt: shared leading turns
        chosen = normalize_messages(row["chosen"], "chosen")
        rejected = normalize_messages(row["rejected"], "rejected")
        n = _common_prefix(chosen, rejected)
        if n == 0:
            raise RowError("prompt", "is missing, and chosen/rejected share no leading turns to use as the prompt")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        prompt = _as_turns(row["prompt"], "prompt", "user")
        chosen = _as_turns(row["chosen"], "chosen", "assistant")
        rejected = _as_turns(row["rejected"], "rejected", "assistant")
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        for j, m in enumerate(msgs):
            if m["role"] != "assistant":
                raise RowError(f"{key}[{j}].role", f"completion turns must be 'assistant', got {m['role']!r}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def normalize_unpaired(row: Any, columns: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One unpaired row as ``{"messages": [prompt at weight 0, completion at weight 1], "label": bool}``."""
    if not isinstance(row, Mapping):
        raise RowError("row", f"is a {type(row).__name__}, not an object")
    row = apply_columns(row, columns or {})
    label = row.get("label")
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise RowError("label", f"must be true (desirable) or false (undesirable), got {label!r}")
    if row.get("prompt") is None and "messages" in row:
        msgs = normalize_messages(row["messages"])
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise RowError("messages", "must end with the assistant completion, after at least one prompt turn")
        messages = [{**m, "weight": 0.0} for m in msgs[:-1]] + [{**msgs[-1], "weight": 1.0}]
    else:
        messages = _prompt_completion(row)
        if any(m["role"] != "assistant" for m in messages if m.get("weight")):
            raise RowError("completion", "completion turns must be 'assistant'")
    return {"messages": messages, "label": label}


def _normalize(row: Any, kind: str, fmt: str, columns: Mapping[str, str]) -> dict[str, Any]:
    if kind == "preference":
        return normalize_preference(row, columns)
    if kind == "unpaired":
        return normalize_unpaired(row, columns)
    return normalize_sft(row, fmt, columns)


class NormalisedRows(Sequence):
    """``rows`` seen through their format: row ``i`` normalised when it is read.

    The rows of a large file stay where the store keeps them (on disk, in Arrow) and are
    normalised a block at a time as tokenization reads them, never copied as a whole;
    :meth:`check` reads them all once so a bad row is reported before anything is
    written. ``take(indices)`` is a view of some rows (a carved-off test set). Errors
    name the row as :func:`normalize_rows` does.
    """

    def __init__(self, rows: Sequence[Any], choice: FormatChoice, source: str, kind: str = "sft",
                 where: Callable[[int], str] | None = None, indices: Sequence[int] | None = None) -> None:
        self.rows, self.choice, self.source, self.kind = rows, choice, source, kind
        self.where = where
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.rows)

    def take(self, indices: Sequence[int]) -> "NormalisedRows":
        base = [self.indices[i] for i in indices] if self.indices is not None else list(indices)
        return NormalisedRows(self.rows, self.choice, self.source, self.kind, self.where, base)

    def _normalise(self, raw: list[Any], positions: Iterable[int]) -> list[dict[str, Any]]:
        columns = dict(self.choice.columns)
        out = []
        for i, row in zip(positions, raw):
            try:
                out.append(_normalize(row, self.kind, self.choice.name, columns))
            except RowError as exc:
                raise _row_error(self.source, (self.where or (lambda k: f"row {k}"))(i), self.choice.name, exc) from None
        return out

    def __getitem__(self, k):
        n = len(self)
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1 or self.indices is not None:
                positions = [self.indices[i] if self.indices is not None else i for i in range(start, stop, step)]
                return self._normalise([self.rows[p] for p in positions], positions)
            return self._normalise(list(self.rows[start:stop]), range(start, stop)) if start < stop else []
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(k)
        p = self.indices[k] if self.indices is not None else k
        return self._normalise([self.rows[p]], [p])[0]

    BLOCK = 1024

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), self.BLOCK):
            yield from self[start:start + self.BLOCK]

    def check(self) -> None:
        """Read every row once: the first that breaks the format is a DataError."""
        for _ in self:
            pass

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, NormalisedRows)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<NormalisedRows {self.choice.name}: {len(self)} rows of {self.source}>"


def _row_error(source: str, where: str, fmt: str, exc: RowError) -> DataError:
    return DataError(f"{source}: {where} does not fit the {fmt} format: "
                     f"field {exc.field} {exc.problem}. Expected {FORMAT_KEYS[fmt]}.")


def normalize_rows(rows: Iterable[Any], choice: FormatChoice, source: str, kind: str = "sft",
                   where: Callable[[int], str] | None = None) -> list[dict[str, Any]]:
    """Every row normalised; the first bad one is a DataError naming source, row/line and field.

    ``where(i)`` names row ``i`` for the message (the caller knows whether rows are
    lines of a JSON Lines file); default ``row i`` (0-based, as ``datasets`` indexes rows).
    """
    where = where or (lambda i: f"row {i}")
    columns = dict(choice.columns)
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(_normalize(row, kind, choice.name, columns))
        except RowError as exc:
            raise _row_error(source, where(i), choice.name, exc) from None
    return out


__all__ = [
    "ALL_FORMATS", "CANONICAL_FIELDS", "FORMAT_KEYS", "FormatChoice", "NormalisedRows", "PREFERENCE_FORMATS", "RowError",
    "SFT_FORMATS", "UNPAIRED_FORMATS",
    "accepted_formats", "apply_columns", "check_columns", "check_format_name", "choose_format", "detect",
    "normalize_messages", "normalize_preference", "normalize_rows", "normalize_sft", "normalize_unpaired",
]
