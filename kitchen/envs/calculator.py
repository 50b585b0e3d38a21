"""``env=calculator``: arithmetic a small model cannot do in its head, with a calculator tool.

Prompt: ``"What is 347 * 29? You can use the calculator tool."``; the policy may call
``calculator(expression="347 * 29")``, read the result, and answer. Reward: 1.0 when the
last number of the final answer is right (as ``arithmetic``), ``invalid_call_reward``
(default -0.1) for a malformed tool call. Problems are a pure function of the seed, so
exact resume rebuilds every episode from (seed, step).
"""

from __future__ import annotations

import ast
import operator
import random
from typing import Any, Sequence

from kitchen.envs.tool_env import ToolTaskGroup, resolve_tools
from kitchen.train.envs import parse_final_number

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exp = _eval(node.left), _eval(node.right)
        if abs(exp) > 16:
            raise ValueError("exponent too large")
        return base**exp
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Errors (a bad expression, division by zero) come back as text the model reads.
    """
    if len(expression) > 200:
        return "error: expression too long"
    try:
        value = _eval(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError) as exc:
        return f"error: {exc}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class CalculatorEnv:
    """Tool-use arithmetic: ``a op b`` with operands in [min_operand, max_operand], one calculator."""

    name = "calculator"

    def __init__(self, min_operand: int = 10, max_operand: int = 999, ops: Sequence[str] = ("+", "-", "*"),
                 tools: Sequence[Any] = ("calculator",), invalid_call_reward: float = -0.1,
                 template: str = "What is {a} {op} {b}? You can use the calculator tool. Answer with just the number.",
                 system_prompt: str | None = None) -> None:
        if isinstance(ops, str):
            ops = [ops]
        bad = [o for o in ops if o not in ("+", "-", "*")]
        if not ops or bad:
            from kitchen.errors import ConfigError

            raise ConfigError(f"calculator env: ops must be a non-empty subset of ['+', '-', '*'], got {list(ops)}.")
        self.min_operand, self.max_operand, self.ops = int(min_operand), int(max_operand), list(ops)
        self.tools = resolve_tools(list(tools))
        self.tool_names = [str(t) if isinstance(t, str) else t.get("_target_", "?") if isinstance(t, dict) else getattr(t, "__name__", "?")
                           for t in tools]
        self.invalid_call_reward = float(invalid_call_reward)
        self.template, self.system_prompt = template, system_prompt

    def config(self) -> dict[str, Any]:
        return {"min_operand": self.min_operand, "max_operand": self.max_operand, "ops": list(self.ops),
                "tools": self.tool_names, "invalid_call_reward": self.invalid_call_reward, "template": self.template,
                "system_prompt": self.system_prompt}

    def _task(self, rng: random.Random) -> ToolTaskGroup:
        op = rng.choice(self.ops)
        a, b = rng.randint(self.min_operand, self.max_operand), rng.randint(self.min_operand, self.max_operand)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": self.template.format(a=a, op=op, b=b)})

        def check(text: str, answer: int = answer) -> tuple[float, bool]:
            parsed = parse_final_number(text)
            correct = parsed is not None and abs(parsed - answer) < 1e-9
            return (1.0 if correct else 0.0), correct

        return ToolTaskGroup(messages, check, self.tools, self.invalid_call_reward)

    def group_builders(self, seed: int, n: int) -> list[ToolTaskGroup]:
        rng = random.Random(f"calculator/train/{seed}")
        return [self._task(rng) for _ in range(n)]

    def eval_group_builders(self, n: int, seed: int = 0) -> list[ToolTaskGroup]:
        """Held-out tasks from their own seed stream (the space is large: an overlap with training is rare, not excluded)."""
        rng = random.Random(f"calculator/eval/{seed}")
        return [self._task(rng) for _ in range(n)]
