"""A tool-using episode: the policy answers, or calls tools and sees their results first.

One :class:`ToolEnv` per episode. Each step parses the sampled action with the renderer
(:meth:`~kitchen.train.renderers.Renderer.parse_message`):

* tool calls that parse: each runs with its timeout (:func:`kitchen.train.tools.call_tool`),
  its result goes back as a ``tool`` message, reward 0, the episode goes on. The next
  observation is the sampled sequence plus the template's continuation, so the episode
  stays one datum whose tool results weigh 0. A tool that raised or hung gives an error
  result the model sees, the metric ``tool_errors`` / ``tool_timeouts`` and a StepResult
  error (counted towards ``max_env_failures``);
* a tool call that does not parse: ``invalid_call_reward``, the episode ends (metric
  ``tool_parse_errors``), so a malformed call is a defined, learnable outcome;
* plain text: the final answer, scored by the task's ``check``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from kitchen.train.episodes import EnvGroupBuilder, StepResult
from kitchen.train.tools import Tool, ToolCall, as_tool, call_tool


def resolve_tools(entries: Sequence[Any]) -> dict[str, Tool]:
    """Tools by short name (the ``tools`` catalog: built-ins and ``crucible_kitchen.tools``
    entry points), by ``{_target_: module.fn, timeout_s: ..., name: ...}``, or as callables."""
    from kitchen.config.instantiate import resolve, target_of
    from kitchen.errors import ConfigError

    tools: dict[str, Tool] = {}
    for entry in entries:
        options: dict[str, Any] = {}
        if isinstance(entry, (str, Mapping)):
            if isinstance(entry, Mapping):
                _, options, _ = target_of("tools", entry)
                unknown = sorted(set(options) - {"timeout_s", "name"})
                if unknown:
                    raise ConfigError(f"A tool node takes _target_, timeout_s and name, not {', '.join(unknown)}: {dict(entry)!r}.")
            fn = resolve("tools", entry)
        else:
            fn = entry
        try:
            tool = as_tool(fn, name=options.get("name"), timeout_s=options.get("timeout_s"))
        except TypeError as exc:
            raise ConfigError(f"Tool {entry!r} is not a tool: {exc}.") from None
        tools[tool.name] = tool
    if not tools:
        raise ConfigError("A tool env needs at least one tool: tools=[calculator] or a {_target_: my_pkg.tools.fn} node.")
    return tools


class ToolEnv:
    """One episode of a tool-using task (see the module doc)."""

    def __init__(self, messages: Sequence[Mapping[str, Any]], check: Callable[[str], tuple[float, bool]],
                 tools: Mapping[str, Tool], renderer: Any, invalid_call_reward: float = -0.1) -> None:
        self.history = [dict(m) for m in messages]
        self.check, self.tools, self.renderer = check, dict(tools), renderer
        self.schemas = [t.schema for t in self.tools.values()]
        self.invalid_call_reward = float(invalid_call_reward)
        self.observation: list[int] = []

    def initial_observation(self) -> tuple[list[int], Sequence[int] | Sequence[str]]:
        self.observation = list(self.renderer.build_prompt(self.history, tools=self.schemas))
        return self.observation, tuple(self.renderer.stop_sequences)

    def step(self, action: list[int]) -> StepResult:
        message = self.renderer.parse_message(action)
        if message.get("tool_call_error"):
            return StepResult(self.invalid_call_reward, True, metrics={"tool_parse_errors": 1.0, "correct": 0.0})
        calls = message.get("tool_calls") or []
        if not calls:
            reward, correct = self.check(message["content"])
            return StepResult(float(reward), True, metrics={"correct": 1.0 if correct else 0.0})
        results, metrics, errors = [], {"tool_calls": float(len(calls))}, []
        for c in calls:
            result = call_tool(self.tools, ToolCall(c["function"]["name"], dict(c["function"].get("arguments") or {})))
            results.append({"role": "tool", "content": result.content})
            if result.timed_out:
                metrics["tool_timeouts"] = metrics.get("tool_timeouts", 0.0) + 1
            elif result.error:
                metrics["tool_errors"] = metrics.get("tool_errors", 0.0) + 1
            if result.misuse:
                metrics["tool_misuse"] = metrics.get("tool_misuse", 0.0) + 1
            if result.error:
                errors.append(result.error)
        assistant = {"role": "assistant", "content": message["content"], "tool_calls": calls}
        tail = self.renderer.build_continuation(self.history, assistant, results, action, tools=self.schemas)
        self.history += [assistant, *results]
        if tail is not None:
            self.observation = self.observation + list(action) + tail
        else:  # the template cannot extend the sampled tokens: a fresh prompt (a new datum)
            self.observation = list(self.renderer.build_prompt(self.history, tools=self.schemas))
        return StepResult(0.0, False, list(self.observation), tuple(self.renderer.stop_sequences), metrics,
                          error="; ".join(errors) or None)


class ToolTaskGroup(EnvGroupBuilder):
    """``group_size`` episodes of one tool task."""

    def __init__(self, messages: Sequence[Mapping[str, Any]], check: Callable[[str], tuple[float, bool]],
                 tools: Mapping[str, Tool], invalid_call_reward: float = -0.1) -> None:
        self.messages, self.check, self.tools = list(messages), check, tools
        self.invalid_call_reward = invalid_call_reward
        self.preview = next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    def make_envs(self, group_size: int, renderer: Any) -> list[ToolEnv]:
        return [ToolEnv(self.messages, self.check, self.tools, renderer, self.invalid_call_reward) for _ in range(group_size)]
