"""Evaluators: given the clients, return metrics, plus samples to preview if asked.

One small interface, as in tinker-cookbook's evaluators: an evaluator is any callable
``evaluator(env) -> EvalResult`` (or a plain ``dict[str, float]``). The one
:class:`~kitchen.stages.evaluate.Evaluate` stage owns everything around it: when it
runs (``eval_every``, before and after training), the ``eval.*`` events, the history in
run.json, and the previews. Each built-in workflow adds its own evaluators (held-out
NLL, DPO accuracy, env accuracy, teacher KL); a recipe lists extra ones::

    evaluators:
      - greedy_preview                          # a short name (built-in or from a plugin)
      - {_target_: my_pkg.evals.RefusalRate, prompts_file: data/redteam.jsonl}

An evaluator that has ``shows_samples = True`` is asked for samples when a before/after
evaluation shows previews, even at a step whose metrics are already known; one with
``gives_metrics = False`` (previews only) is not called for plain ``eval_every`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from kitchen.ports.types import SamplingParams
from kitchen.train.messages import last_user_text

if TYPE_CHECKING:
    from kitchen.engine.context import Context


@dataclass
class EvalSample:
    """A completion to show the user: ``prompt`` is the last user turn."""

    prompt: str
    completion: str
    extra: dict[str, float] = field(default_factory=dict)  # e.g. {"reward": 1.0}


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[EvalSample] = field(default_factory=list)


class EvalEnv:
    """What an evaluator may use: the clients, the renderer, the spec and the step.

    ``want_metrics`` is False when this step's metrics are already known and only
    previews are wanted; ``previews`` is how many samples to return (0: none).
    """

    def __init__(self, ctx: "Context", want_metrics: bool = True, previews: int = 0) -> None:
        from kitchen.stages.session import Session

        session = ctx.use(Session)
        self.ctx = ctx
        self.training = ctx.training
        self.spec = ctx.spec
        self.step = ctx.step
        self.renderer = session.renderer
        self.tokenizer = session.tokenizer
        self.want_metrics = want_metrics
        self.previews = previews
        self._sampler: Any = None

    @property
    def sampler(self) -> Any:
        """One sampler over the current weights, shared by every evaluator of this evaluation."""
        if self._sampler is None:
            self._sampler = self.training.sampling_client()
        return self._sampler


class Evaluator(Protocol):
    def __call__(self, env: EvalEnv) -> "EvalResult | Mapping[str, float]": ...


def as_result(value: Any, who: str) -> EvalResult:
    """An evaluator's return value as an EvalResult; anything else is a clear error naming it."""
    from kitchen.errors import ConfigError

    if isinstance(value, EvalResult):
        return value
    if isinstance(value, Mapping):
        try:
            return EvalResult(metrics={str(k): float(v) for k, v in value.items()})
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"Evaluator {who} returned {type(value).__name__}; an evaluator returns a dict[str, float] or an EvalResult.")


def greedy_completions(env: EvalEnv, prompts: Sequence[Sequence[Mapping[str, Any]]], max_tokens: int | None = None,
                       sampler: Any = None, renderer: Any = None) -> list[str]:
    """Greedy (temperature 0) completions of chat prompts with the run's seed: the previews and accuracy evals."""
    renderer = renderer or env.renderer
    sampler = sampler or env.sampler
    params = SamplingParams(max_tokens=max_tokens or env.spec.preview_max_tokens, temperature=0.0,
                            stop=tuple(renderer.stop_sequences), seed=env.spec.seed)
    futures = [sampler.sample(renderer.build_prompt(list(p)), 1, params) for p in prompts]
    return [renderer.parse_response(f.result().sequences[0].tokens) for f in futures]


class GreedyPreview:
    """Greedy completions of a few prompts, shown before and after training (no metrics).

    ``prompts`` default to the workflow's held-out prompts (set by the workflow); a recipe
    can give its own list of message lists or strings.
    """

    shows_samples = True
    gives_metrics = False

    def __init__(self, prompts: Sequence[Any] = (), max_tokens: int | None = None,
                 score: Callable[[int, str], float] | None = None) -> None:
        self.prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
        self.max_tokens = max_tokens
        self.score = score

    def __call__(self, env: EvalEnv) -> EvalResult:
        shown = self.prompts[: env.previews]
        if not shown:
            return EvalResult()
        texts = greedy_completions(env, shown, self.max_tokens)
        return EvalResult(samples=[
            EvalSample(last_user_text(p), t, {"reward": self.score(i, t)} if self.score else {})
            for i, (p, t) in enumerate(zip(shown, texts))
        ])


class TestNLL:
    """Mean negative log-likelihood per trained token over held-out datums (``test_nll``)."""

    __test__ = False  # not a pytest class

    def __init__(self, datums: Sequence[Any], batch_size: int, metric: str = "test_nll") -> None:
        self.datums = list(datums)
        self.batch_size = batch_size
        self.metric = metric

    def __call__(self, env: EvalEnv) -> EvalResult:
        if not env.want_metrics or not self.datums:
            return EvalResult()
        data = self.datums[: env.spec.eval_max_examples]
        bs = self.batch_size
        batches = [data[i : i + bs] for i in range(0, len(data), bs)]
        futures = [env.training.forward(b) for b in batches]
        return EvalResult(metrics={self.metric: weighted_nll((f.result(), b) for f, b in zip(futures, batches))})


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


class EnvAccuracy:
    """Greedy accuracy and mean reward on the env's held-out prompts (eval_accuracy, eval_reward)."""

    shows_samples = True

    def __init__(self, env: Any, problems: list[Any]) -> None:
        self.env = env
        self.problems = problems

    def __call__(self, env: EvalEnv) -> EvalResult:
        problems = self.problems if env.want_metrics else self.problems[: env.previews]
        if not problems:
            return EvalResult()
        texts = greedy_completions(env, [p.messages for p in problems], env.spec.max_tokens)
        scores = [self.env.score(p, t) for p, t in zip(problems, texts)]
        metrics = {}
        if env.want_metrics:
            metrics = {"eval_accuracy": sum(1.0 for s in scores if s.correct) / len(scores),
                       "eval_reward": sum(s.reward for s in scores) / len(scores)}
        samples = [EvalSample(last_user_text(p.messages), t, {"reward": s.reward})
                   for p, t, s in list(zip(problems, texts, scores))[: env.previews]]
        return EvalResult(metrics, samples)
