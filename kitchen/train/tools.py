"""Tools an RL policy can call: typed Python callables, their JSON schemas, and tool-call text.

A tool is a plain function with type hints and a docstring::

    def calculator(expression: str) -> str:
        \"\"\"Evaluate an arithmetic expression (+ - * / and parentheses).\"\"\"

:func:`as_tool` reads its name, parameters and description into a :class:`Tool` whose
``schema`` is the OpenAI / Hugging Face function schema (what ``apply_chat_template(tools=)``
takes); the ``crucible_kitchen.tools`` entry-point group (and ``tools:`` in an env's
config) names tools by short name, like envs.

The wire format of a call is the one most open chat templates use (Hermes, Qwen2.5,
SmolLM3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. A model's own
template renders calls and results where it supports tools
(:mod:`kitchen.train.renderers`); :func:`parse_tool_calls` reads them back out of sampled
text and says why when it cannot, so an env gives a defined reward instead of crashing.

:func:`call_tool` runs a call with a timeout on a daemon thread: a tool that hangs costs
its timeout and an error result, never the run.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_message(self) -> dict[str, Any]:
        """The ``tool_calls`` entry of an assistant message (OpenAI / Hugging Face shape)."""
        return {"type": "function", "function": {"name": self.name, "arguments": dict(self.arguments)}}


@dataclass
class Tool:
    """A callable plus what a model is told about it."""

    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    timeout_s: float = 5.0

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def check_arguments(self, arguments: Mapping[str, Any]) -> str | None:
        """Why ``arguments`` do not fit the signature, or None."""
        props, required = self.parameters.get("properties", {}), self.parameters.get("required", [])
        unknown = [k for k in arguments if k not in props]
        missing = [k for k in required if k not in arguments]
        if unknown:
            return f"{self.name} has no argument {', '.join(map(repr, unknown))} (it takes {', '.join(props) or 'none'})"
        if missing:
            return f"{self.name} needs {', '.join(map(repr, missing))}"
        return None


def _json_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation) or annotation
    return _JSON_TYPES.get(origin, "string")


def as_tool(fn: Callable[..., Any] | Tool, name: str | None = None, timeout_s: float | None = None) -> Tool:
    """``fn`` (a typed function) as a :class:`Tool`: its name, its docstring's first paragraph,
    and a JSON schema of its parameters from the type hints (defaults make them optional)."""
    if isinstance(fn, Tool):
        return fn if timeout_s is None else Tool(fn.name, fn.fn, fn.description, fn.parameters, float(timeout_s))
    if not callable(fn):
        raise TypeError(f"a tool is a callable, got {type(fn).__name__}")
    hints = typing.get_type_hints(fn) if not isinstance(fn, type) else {}
    props: dict[str, Any] = {}
    required = []
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        props[pname] = {"type": _json_type(hints.get(pname, str))}
        if p.default is p.empty:
            required.append(pname)
    doc = inspect.getdoc(fn) or ""
    description = doc.split("\n\n")[0].replace("\n", " ").strip()
    tool_name = name or getattr(fn, "__name__", type(fn).__name__)
    return Tool(tool_name, fn, description, {"type": "object", "properties": props, "required": required},
                float(timeout_s) if timeout_s is not None else float(getattr(fn, "timeout_s", 5.0)))


# --------------------------------------------------------------------------- the wire format

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S)


def format_tool_call(call: ToolCall) -> str:
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': call.name, 'arguments': call.arguments}, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def tools_system_prompt(tools: Sequence[Tool | Mapping[str, Any]]) -> str:
    """The tool list for a template without tool support (the Hermes prompt, shortened)."""
    schemas = [t.schema if isinstance(t, Tool) else dict(t) for t in tools]
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas)
    return ("You may call tools. To call one, write <tool_call>{\"name\": NAME, \"arguments\": {...}}</tool_call> "
            f"and wait for its result. Tools:\n{lines}")


def strip_tool_calls(text: str) -> str:
    """``text`` without its ``<tool_call>`` blocks (an assistant message's own content)."""
    return _CALL.sub("", text).strip()


def parse_tool_calls(text: str) -> tuple[list[ToolCall], str | None]:
    """The tool calls written in ``text``, and why the text is not a valid call (None when it is,
    or when it calls no tool at all). ``arguments`` may be a JSON object or a JSON string of one."""
    calls: list[ToolCall] = []
    for body in _CALL.findall(text):
        body = body.strip()
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            return calls, f"tool call is not JSON ({exc.msg} at char {exc.pos}): {body[:80]!r}"
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return calls, f"tool call needs a string 'name': {body[:80]!r}"
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                return calls, f"tool call arguments are not a JSON object: {args[:80]!r}"
        if not isinstance(args, dict):
            return calls, f"tool call arguments must be an object, got {type(args).__name__}"
        calls.append(ToolCall(obj["name"], args))
    return calls, None


# --------------------------------------------------------------------------- running a call


@dataclass
class ToolResult:
    content: str
    error: str | None = None  # the tool failed (raised or hung): an env failure, counted towards max_env_failures
    timed_out: bool = False
    misuse: str | None = None  # the model called it wrongly (unknown tool, bad arguments): a reward matter only


def call_tool(tools: Mapping[str, Tool], call: ToolCall) -> ToolResult:
    """Run ``call`` with its tool's timeout. Unknown tools, bad arguments, exceptions and
    timeouts come back as an error result (the env decides the reward), never raised."""
    tool = tools.get(call.name)
    if tool is None:
        return ToolResult(f"error: no tool named {call.name!r} (tools: {', '.join(tools)})", misuse=f"unknown tool {call.name!r}")
    problem = tool.check_arguments(call.arguments)
    if problem:
        return ToolResult(f"error: {problem}", misuse=problem)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = tool.fn(**call.arguments)
        except Exception as exc:  # noqa: BLE001 - reported to the model as the tool's error
            box["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=run, name=f"kitchen-tool-{tool.name}", daemon=True)
    worker.start()
    worker.join(tool.timeout_s)
    if worker.is_alive():  # the thread is abandoned (daemon); its result is never read
        return ToolResult(f"error: {tool.name} timed out after {tool.timeout_s:g}s",
                          f"tool {tool.name} timed out after {tool.timeout_s:g}s", timed_out=True)
    if "error" in box:
        return ToolResult(f"error: {box['error']}", f"tool {tool.name} raised {box['error']}")
    value = box.get("value")
    return ToolResult(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str))
