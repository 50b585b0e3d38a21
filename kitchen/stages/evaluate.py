"""Evaluation stages: held-out NLL, and sample completions shown to the user."""

from __future__ import annotations

import time

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.ports.types import SamplingParams
from kitchen.stages.train import drain, outside_training
from kitchen.telemetry import events as ev


def weighted_nll(results_and_batches) -> float:
    """Mean negative log-likelihood per trained token over evaluated batches."""
    total, weight = 0.0, 0.0
    for result, batch in results_and_batches:
        for logprobs, datum in zip(result.logprobs, batch):
            for lp, w in zip(logprobs, datum.loss_fn_inputs["weights"]):
                if w:
                    total -= lp * w
                    weight += w
    return total / weight if weight else float("nan")


@register_stage("evaluate")
class Evaluate(Stage):
    """Test NLL over up to ``eval_max_examples`` held-out examples (skipped if already done at this step)."""

    @outside_training
    def execute(self, ctx: Context) -> None:
        data = ctx.state.get("test_data") or []
        if not data or ctx.state.get("last_eval_step") == ctx.step:
            return
        drain(ctx)
        data = data[: ctx.spec.eval_max_examples]
        ctx.emit(ev.EVAL_START, step=ctx.step, split="test")
        t0 = time.perf_counter()
        bs = ctx.spec.batch_size
        batches = [data[i : i + bs] for i in range(0, len(data), bs)]
        futures = [ctx.training.forward(b) for b in batches]
        nll = weighted_nll((f.result(), b) for f, b in zip(futures, batches))
        ctx.state["last_eval_step"] = ctx.step
        history = ctx.state.setdefault("eval_history", [])
        history.append((ctx.step, nll))
        ctx.metrics["test_nll"] = nll
        ctx.emit(ev.EVAL_RESULT, step=ctx.step, split="test", metrics={"test_nll": nll})
        ctx.emit(ev.EVAL_STOP, step=ctx.step, duration_s=time.perf_counter() - t0)


@register_stage("preview")
class Preview(Stage):
    """Greedy completions for the first few test prompts, tagged 'before' or 'after'."""

    @outside_training
    def execute(self, ctx: Context) -> None:
        n = ctx.spec.num_preview_samples
        rows = (ctx.state.get("test_rows") or ctx.state.get("train_rows") or [])[:n]
        if not n or not rows or "messages" not in rows[0]:
            return
        drain(ctx)
        renderer = ctx.state["renderer"]
        sampler = ctx.training.sampling_client()
        params = SamplingParams(max_tokens=ctx.spec.preview_max_tokens, temperature=0.0, stop=tuple(renderer.stop_sequences), seed=ctx.spec.seed)
        tag = self.options.get("tag", "after")
        futures = []
        for row in rows:
            prompt_messages = _prompt_part(row["messages"])
            futures.append((prompt_messages, sampler.sample(renderer.build_prompt(prompt_messages), 1, params)))
        for prompt_messages, future in futures:
            seq = future.result().sequences[0]
            completion = renderer.parse_response(seq.tokens)
            ctx.emit(ev.SAMPLE, tag=tag, step=ctx.step, prompt=prompt_messages[-1]["content"], completion=completion)


def _prompt_part(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) the last assistant message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return messages[:i]
    return messages
