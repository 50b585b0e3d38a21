"""The multi-turn protocol's pure parts: trajectories to datums, group rewards, tools, and
tool calls through the renderers (the tiny byte-level ChatML tokenizer, offline)."""

from __future__ import annotations

import time

import pytest

from kitchen.train.envs import ArithmeticEnv
from kitchen.train.episodes import (
    EnvGroupBuilder,
    SingleTurnSource,
    Trajectory,
    Transition,
    episode_metrics,
    episode_source,
    trajectory_datums,
)
from kitchen.train.rl import build_rl_datum
from kitchen.train.tools import ToolCall, as_tool, call_tool, format_tool_call, parse_tool_calls


@pytest.fixture(scope="module")
def tiny_tok():
    from kitchen.adapters.local.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


def test_a_one_step_trajectory_is_the_single_turn_datum() -> None:
    prompt, action, lps = [5, 6, 7], [8, 9], [-0.5, -1.25]
    traj = Trajectory([Transition(prompt, action, lps, reward=1.0, done=True)])
    (datum,) = trajectory_datums(traj, [0.75, 0.25])
    assert datum == build_rl_datum(prompt, action, lps, [0.75, 0.25])
    assert traj.total_reward() == 1.0


def test_observation_tokens_weigh_zero_and_a_prefix_extension_stays_one_datum() -> None:
    t1 = Transition([1, 2], [3, 4], [-0.1, -0.2], reward=0.5)
    t2 = Transition([1, 2, 3, 4, 90, 91], [5], [-0.3], reward=1.0, done=True)  # the env appended 90, 91
    traj = Trajectory([t1, t2])
    (datum,) = trajectory_datums(traj, [1.0, 2.0, 3.0])
    assert datum.model_input == [1, 2, 3, 4, 90, 91]
    assert datum.loss_fn_inputs["target_tokens"] == [2, 3, 4, 90, 91, 5]
    assert datum.loss_fn_inputs["weights"] == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert datum.loss_fn_inputs["advantages"] == [0.0, 1.0, 2.0, 0.0, 0.0, 3.0]
    assert datum.loss_fn_inputs["logprobs"] == [0.0, -0.1, -0.2, 0.0, 0.0, -0.3]
    assert traj.total_reward() == 1.5 and traj.turns == 2 and traj.episode_tokens() == 7


def test_an_observation_that_rewrites_history_starts_a_new_datum() -> None:
    traj = Trajectory([Transition([1, 2], [3], [-0.1]), Transition([1, 7, 8], [9, 10], [-0.2, -0.3], done=True)])
    first, second = trajectory_datums(traj, [1.0, 2.0, 3.0])
    assert first.model_input == [1, 2] and first.loss_fn_inputs["weights"] == [0.0, 1.0]
    assert second.model_input == [1, 7, 8, 9] and second.loss_fn_inputs["weights"] == [0.0, 0.0, 1.0, 1.0]
    assert second.loss_fn_inputs["advantages"] == [0.0, 0.0, 2.0, 3.0]


def test_group_rewards_add_to_step_rewards() -> None:
    class ZeroSum(EnvGroupBuilder):
        def compute_group_rewards(self, trajectories):
            return [1.0, -1.0]

    trajs = [Trajectory([Transition([1], [2], [-1.0], reward=0.25, done=True)]) for _ in range(2)]
    for traj, bonus in zip(trajs, ZeroSum().compute_group_rewards(trajs)):
        traj.group_reward = bonus
    assert [t.total_reward() for t in trajs] == [1.25, -0.75]
    assert EnvGroupBuilder().compute_group_rewards(trajs) == [0.0, 0.0]


def test_episode_metrics() -> None:
    a = Trajectory([Transition([1, 2], [3], [-1.0], metrics={"tool_calls": 1.0}), Transition([1, 2, 3, 4], [5], [-1.0], done=True)])
    b = Trajectory([Transition([1, 2], [3, 4], [-1.0, -1.0], done=True)], error="step: RuntimeError: x")
    m = episode_metrics([a, b])
    assert m["turns"] == 1.5 and m["episode_tokens"] == 4.5 and m["episode_errors"] == 1.0
    assert m["env/tool_calls"] == 0.5


def test_single_turn_envs_are_episode_sources() -> None:
    env = ArithmeticEnv()
    source = episode_source(env)
    assert isinstance(source, SingleTurnSource) and source.name == "arithmetic"
    builders = source.group_builders(3, 4)
    assert [b.problem.id for b in builders] == [p.id for p in env.initial_prompts(3, 4)]


# --------------------------------------------------------------------------- tools


def add(a: int, b: int = 0) -> str:
    """Add two integers.

    The second one is optional."""
    return str(a + b)


def test_a_typed_function_is_a_tool_with_a_json_schema() -> None:
    tool = as_tool(add)
    assert tool.schema == {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a"]}}}


@pytest.mark.parametrize("text, calls, error", [
    ("The answer is 4.", [], None),
    ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', [ToolCall("add", {"a": 1})], None),
    ('<tool_call>{"name": "add", "arguments": "{\\"a\\": 2}"}</tool_call>', [ToolCall("add", {"a": 2})], None),
    ('<tool_call>{"name": "add", "parameters": {"a": 3}}', [ToolCall("add", {"a": 3})], None),  # no closing tag (a stop)
    ("<tool_call>{name: add}</tool_call>", [], "not JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', [], "needs a string 'name'"),
    ('<tool_call>{"name": "add", "arguments": [1]}</tool_call>', [], "must be an object"),
])
def test_parse_tool_calls(text: str, calls: list, error: str | None) -> None:
    got, why = parse_tool_calls(text)
    assert got == calls
    assert (why is None) if error is None else (error in why)


def test_call_tool_reports_misuse_errors_and_timeouts_without_raising() -> None:
    def boom() -> str:
        raise RuntimeError("disk on fire")

    def hang() -> str:
        time.sleep(5)
        return "never"

    tools = {t.name: t for t in (as_tool(add), as_tool(boom), as_tool(hang, timeout_s=0.1))}
    assert call_tool(tools, ToolCall("add", {"a": 2, "b": 3})).content == "5"
    unknown = call_tool(tools, ToolCall("mul", {}))
    assert unknown.misuse and not unknown.error and "no tool named 'mul'" in unknown.content
    assert call_tool(tools, ToolCall("add", {"c": 1})).misuse
    raised = call_tool(tools, ToolCall("boom", {}))
    assert raised.error and "disk on fire" in raised.content
    started = time.perf_counter()
    slow = call_tool(tools, ToolCall("hang", {}))
    assert slow.timed_out and slow.error and time.perf_counter() - started < 2


def test_calculator_tool() -> None:
    from kitchen.envs.calculator import calculator

    assert calculator("347 * 29") == "10063"
    assert calculator("(2 + 3) * 4 / 2") == "10"
    assert calculator("1 / 0").startswith("error")
    assert calculator("__import__('os')").startswith("error")


# --------------------------------------------------------------------------- renderers


@pytest.mark.parametrize("kind", ["chat_template", "role_colon"])
def test_tool_calls_round_trip_and_the_continuation_extends_the_sampled_tokens(tiny_tok, kind: str) -> None:
    from kitchen.train.renderers import build_renderer

    r = build_renderer(kind, tiny_tok)
    tools = [as_tool(add).schema]
    history = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = r.build_prompt(history, tools=tools)
    assert "add" in tiny_tok.decode(prompt) and "<tool_call>" in tiny_tok.decode(prompt)
    call_text = format_tool_call(ToolCall("add", {"a": 2, "b": 3}))
    lead = " " if kind == "role_colon" else ""  # role_colon's actions start after "Assistant:" with a space
    action = list(tiny_tok.encode(lead + call_text, add_special_tokens=False)) + [r.stop_sequences[0]]
    message = r.parse_message(action)
    assert message["tool_calls"] == [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]
    assistant = {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]}
    result = [{"role": "tool", "content": "5"}]
    tail = r.build_continuation(history, assistant, result, action, tools=tools)
    assert tail is not None
    # the sampled tokens plus the continuation are exactly the prompt of the next turn
    assert prompt + action + tail == r.build_prompt(history + [assistant, *result], tools=tools)
    # an action cut by max_tokens gets its end of turn from the continuation
    assert r.build_continuation(history, assistant, result, action[:-1], tools=tools)[0] == r.stop_sequences[0]
    assert "tool_call_error" in r.parse_message(tiny_tok.encode("<tool_call>{oops", add_special_tokens=False))


NATIVE_TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_tool_support_renders_tools_itself(tiny_tok) -> None:
    import copy

    from kitchen.train.renderers import ChatTemplateRenderer

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = NATIVE_TOOLS_TEMPLATE
    r = ChatTemplateRenderer(tok)
    assert r.native_tools
    text = tok.decode(r.build_prompt([{"role": "user", "content": "hi"}], tools=[as_tool(add).schema]))
    assert text.startswith("<|im_start|>system\nTOOLS: add<|im_end|>")
    plain = ChatTemplateRenderer(tiny_tok)
    assert not plain.native_tools  # the tiny template ignores tools: the text fallback
