"""EleutherAI's lm-evaluation-harness as a kitchen evaluator, on any backend.

People report benchmark numbers from lm-eval, so kitchen runs lm-eval's own tasks,
prompts, few-shot sampling and metrics rather than re-implementing any of them. What
kitchen supplies is the model: :class:`PortLM` answers lm-eval's three request kinds
through kitchen's ports, so an evaluation during training scores the *current* weights
on whatever backend trains them (local, Tinker, ``kitchen serve``) without exporting a
model first:

* ``loglikelihood``: one ``forward`` per (context, continuation) pair, summing the
  continuation's target logprobs. ``is_greedy`` (used by ``acc`` of ``output_type:
  loglikelihood`` tasks such as LAMBADA) is a greedy sample of the continuation's length,
  asked only for those tasks: multiple-choice tasks never read it.
* ``loglikelihood_rolling``: lm-eval's own disjoint rolling windows, each a ``forward``.
* ``generate_until``: the sampling client at temperature 0 (or the task's), stopping at
  the task's ``until`` strings.

Tokenisation follows lm-eval's ``TemplateLM`` (trailing context spaces move into the
continuation; no special tokens added), which is what lets scores match a direct
``lm_eval --model hf`` run on the same weights (``tests/integration/test_lm_eval.py``
checks it). ``kitchen eval`` (:mod:`kitchen.outputs.evaluate`) scores saved weights
with lm-eval's own ``HFLM`` instead.

Tasks are lm-eval task names or paths to task YAML files. The bundled ``kitchen_arith``
(20 multiple-choice sums, in ``lm_eval_tasks/``) runs offline and shows how a task with
a local data file is written.
"""

from __future__ import annotations

import contextlib
import difflib
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from kitchen.errors import ConfigError
from kitchen.evaluators import EvalEnv, EvalResult
from kitchen.ports.types import Datum, SamplingParams
from kitchen.train.dpo import build_weighted_ce_datum

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

BUNDLED_TASKS = Path(__file__).with_name("lm_eval_tasks")
METRIC_PREFIX = "lm_eval"
EXTRA_HINT = "pip install 'crucible-kitchen[eval]' (or `make setup`, which installs it)"


def require_lm_eval() -> None:
    """lm-eval is an optional extra: a clear error naming it, before any work starts."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(f"The lm_eval evaluator needs the lm-eval package: {EXTRA_HINT}.") from None


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------

def _is_task_file(task: str) -> bool:
    return task.endswith((".yaml", ".yml"))


def task_names_and_paths(tasks: Sequence[str], where: str) -> tuple[list[str], list[Path]]:
    """Split ``tasks`` into lm-eval task names and the folders of the YAML files given.

    A YAML file is named by its ``task:`` key, which lm-eval indexes from its folder.
    """
    import yaml

    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    if not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise ConfigError(f"{where} needs a non-empty list of lm-eval task names or task YAML files, got {tasks!r}.")
    names: list[str] = []
    folders: list[Path] = [BUNDLED_TASKS]
    for task in (t.strip() for t in tasks):
        if not _is_task_file(task):
            names.append(task)
            continue
        path = Path(task).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: the task file {task} does not exist.")
        try:
            # lm-eval's tags (!function) are not plain YAML: read the keys, ignore the tags
            loader = type("TaskLoader", (yaml.SafeLoader,), {})
            loader.add_multi_constructor("!", lambda _l, _suffix, _node: None)
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{where}: the task file {task} does not parse as YAML ({path}{line}: "
                              f"{getattr(exc, 'problem', None) or exc}).") from None
        if not isinstance(config, dict) or not isinstance(config.get("task"), str):
            raise ConfigError(f"{where}: the task file {task} has no `task:` name; an lm-eval task YAML names its task "
                              "with `task: my_task` (see kitchen/evaluators/lm_eval_tasks/kitchen_arith.yaml).")
        names.append(config["task"])
        folders.append(path.resolve().parent)
    return names, list(dict.fromkeys(folders))


class _CustomDatasetNotice:
    """Drops lm-eval's notice, on every task with a ``custom_dataset`` loader, that such
    loaders accept ``--metadata``: kitchen's bundled task has one and passes nothing."""

    @staticmethod
    def filter(record: Any) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def task_manager(names: Sequence[str], folders: Sequence[Path], where: str) -> "TaskManager":
    """An lm-eval TaskManager that knows every task in ``names``; unknown names are one ConfigError.

    Indexing lm-eval's ~15,000 bundled task files takes seconds, so it is done only when a
    name is not among the bundled kitchen tasks and the given files.
    """
    require_lm_eval()
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    notices = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _CustomDatasetNotice) for f in notices.filters):
        notices.addFilter(_CustomDatasetNotice())
    include = [str(f) for f in folders]
    manager = TaskManager(include_path=include, include_defaults=False)
    if not set(names) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hints.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(
            f"{where}: lm-eval has no task {', '.join(hints)}. Give a task name lm-eval lists "
            "(`lm-eval ls tasks`), kitchen's bundled kitchen_arith, or the path of a task YAML file."
        )
    return manager


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's ``results`` as flat kitchen metrics: ``lm_eval/<task>/<metric>``.

    lm-eval keys a metric as ``"<metric>,<filter>"``; the default filter ``none`` is
    dropped, any other is kept (``exact_match_strict-match``). Standard errors are left
    out of the metrics (they stay in the full results ``kitchen eval`` writes).
    """
    out: dict[str, float] = {}
    for task, values in (results.get("results") or {}).items():
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            if metric.endswith("_stderr"):
                continue
            out[f"{METRIC_PREFIX}/{task}/{metric if filt == 'none' else f'{metric}_{filt}'}"] = float(value)
    return out


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """lm-eval seeds Python's, NumPy's and torch's global RNGs; training must not notice.

    An evaluation in the middle of a run would otherwise change every later random draw
    (dropout, sampling without a seed), and a resumed run would diverge from an unbroken one.
    """
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval's progress bars and its per-task notices, kept off a training run's console.

    The bars are tqdm's, which writes to whatever ``sys.stderr`` is when a bar starts.
    """
    import io
    import logging

    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def evaluate(lm: Any, tasks: Sequence[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
             batch_size: int = 8, bootstrap_iters: int = 100_000, where: str = "lm_eval",
             silent: bool = False) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on ``lm`` with ``tasks``; its full results dict."""
    names, folders = task_names_and_paths(tasks, where)
    manager = task_manager(names, folders, where)
    import lm_eval

    with global_rng_kept(), (quiet() if silent else contextlib.nullcontext()):
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(dict.fromkeys(names)), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            batch_size=batch_size, bootstrap_iters=bootstrap_iters, log_samples=False, verbosity="WARNING",
        )
    if results is None:
        raise ConfigError(f"{where}: lm-eval returned no results.")
    return results


# --------------------------------------------------------------------------------------
# The model lm-eval scores: kitchen's ports
# --------------------------------------------------------------------------------------

def _lm_base() -> type:
    require_lm_eval()
    from lm_eval.api.model import TemplateLM

    return TemplateLM


def port_lm(training: Any, tokenizer: Any, sampler: Any, *, batch_size: int = 8, max_length: int = 2048,
            seed: int | None = 0, greedy_tasks: Sequence[str] = ()) -> Any:
    """A :class:`PortLM` (built lazily so that importing this module needs no lm-eval)."""
    cls = type("PortLM", (_PortLMMixin, _lm_base()), {})
    return cls(training, tokenizer, sampler, batch_size=batch_size, max_length=max_length, seed=seed,
               greedy_tasks=greedy_tasks)


class _PortLMMixin:
    """lm-eval's model interface over a kitchen training client (forward) and sampler."""

    backend = "causal"

    def __init__(self, training: Any, tokenizer: Any, sampler: Any, *, batch_size: int, max_length: int,
                 seed: int | None, greedy_tasks: Sequence[str]) -> None:
        super().__init__()  # type: ignore[call-arg]
        self.training = training
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length)
        self.seed = seed
        self.greedy_tasks = frozenset(greedy_tasks)
        self._greedy_needed: list[bool] = []

    # -- what TemplateLM asks of a model --
    @property
    def eot_token_id(self) -> int:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return int(eos) if eos is not None else 0

    @property
    def prefix_token_id(self) -> int:
        """What an empty context and a rolling window start from: BOS, else EOS (as lm-eval's HF model)."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "kitchen")).replace("/", "__")

    # -- loglikelihood --
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._greedy_needed = [getattr(r, "task_name", None) in self.greedy_tasks for r in requests]
        return super().loglikelihood(requests, disable_tqdm=True)  # type: ignore[misc]

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        sums = self._continuation_sums(pairs)
        greedy = list(self._greedy_needed) if len(self._greedy_needed) == len(pairs) else [False] * len(pairs)
        self._greedy_needed = []
        greedy_futures: dict[int, Future] = {}
        for i, ((ctx, cont), wanted) in enumerate(zip(pairs, greedy)):
            if wanted and cont:
                window = (ctx + cont)[-(self.max_length + 1):][: -len(cont)] or ctx[-1:]
                params = SamplingParams(max_tokens=len(cont), temperature=0.0, seed=self.seed)
                greedy_futures[i] = self.sampler.sample(window, 1, params)
        out = []
        for i, (_ctx, cont) in enumerate(pairs):
            is_greedy = False
            if i in greedy_futures:
                is_greedy = list(greedy_futures[i].result().sequences[0].tokens[: len(cont)]) == cont
            out.append((sums[i], is_greedy))
        return out

    def _continuation_sums(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Summed logprob of each continuation given its context (the last ``max_length`` tokens)."""
        datums = []
        for ctx, cont in pairs:
            full = (ctx + cont)[-(self.max_length + 1):]
            scored = min(len(cont), len(full) - 1)
            datums.append(build_weighted_ce_datum(full[:-scored], full[-scored:], 1.0))
        return self._weighted_sums(datums)

    def _weighted_sums(self, datums: Sequence[Datum]) -> list[float]:
        batches = [list(datums[i: i + self.batch_size]) for i in range(0, len(datums), self.batch_size)]
        futures = [self.training.forward(b) for b in batches]
        sums: list[float] = []
        for future, batch in zip(futures, batches):
            result = future.result()
            for logprobs, datum in zip(result.logprobs, batch):
                sums.append(float(sum(lp for lp, w in zip(logprobs, datum.loss_fn_inputs["weights"]) if w)))
        return sums

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        datums, owners = [], []
        for n, request in enumerate(requests):
            (text,) = request.args
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            for ctx, cont in windows:
                datums.append(build_weighted_ce_datum(ctx, cont, 1.0))
                owners.append(n)
        totals = [0.0] * len(requests)
        for owner, value in zip(owners, self._weighted_sums(datums)):
            totals[owner] += value
        return totals

    # -- generation --
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        futures = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs.pop("max_gen_toks", 256))
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0
            prompt = self.tok_encode(context)[-max(1, self.max_length - max_gen):]
            params = SamplingParams(max_tokens=max_gen, temperature=temperature, stop=tuple(until), seed=self.seed,
                                    top_p=float(kwargs.pop("top_p", 1.0)) if do_sample else 1.0)
            futures.append((self.sampler.sample(prompt, 1, params), until))
        texts = []
        for future, until in futures:
            text = self.tok_decode(future.result().sequences[0].tokens)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            texts.append(text)
        return texts


def greedy_tasks_of(names: Sequence[str], manager: "TaskManager") -> list[str]:
    """The tasks whose metrics read ``is_greedy`` (``output_type: loglikelihood``)."""
    tasks = manager.load_task_or_group(list(names))
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif getattr(node, "OUTPUT_TYPE", None) == "loglikelihood":
            found.append(node.config.task)

    walk(tasks)
    return found


# --------------------------------------------------------------------------------------
# The evaluator a recipe lists
# --------------------------------------------------------------------------------------

class LMEval:
    """``evaluators: [{lm_eval: {tasks: [...], limit: N}}]``: lm-eval tasks every ``eval_every``.

    Metrics are ``lm_eval/<task>/<metric>`` (W&B shows them under ``eval/``), in every
    sink and in run.json's eval history. Standard errors are not bootstrapped during
    training (``bootstrap_iters: 0``); ``kitchen eval`` computes them.
    """

    def __init__(self, tasks: Sequence[str] | str, limit: int | float | None = None, num_fewshot: int | None = None,
                 batch_size: int = 8, max_length: int | None = None) -> None:
        self.check_options(tasks=tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size)
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        self.limit = limit
        self.num_fewshot = num_fewshot
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self._greedy: list[str] | None = None

    @staticmethod
    def check_options(tasks: Any = None, limit: Any = None, num_fewshot: Any = None, batch_size: Any = 8,
                      max_length: Any = None, *, where: str = "evaluators: lm_eval", **others: Any) -> None:
        """What ``kitchen validate`` checks: the extra is installed, every task exists, the numbers are numbers."""
        if others:
            raise ConfigError(f"{where} has no option {', '.join(sorted(others))}; its options are tasks, limit, "
                              "num_fewshot, batch_size and max_length.")
        for key, value, low in (("limit", limit, 0), ("num_fewshot", num_fewshot, -1), ("batch_size", batch_size, 0),
                                ("max_length", max_length, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= low
                                      or (key != "limit" and not float(value).is_integer())):
                kind = "a number > 0 (a fraction < 1 is a share of each task)" if key == "limit" else (
                    "an integer >= 0" if key == "num_fewshot" else "an integer > 1" if key == "max_length" else "an integer > 0")
                raise ConfigError(f"{where}: {key} is {value!r}; it is {kind}.")
        names, folders = task_names_and_paths(tasks if tasks is not None else [], where)
        task_manager(names, folders, where)

    def __call__(self, env: EvalEnv) -> EvalResult:
        if not env.want_metrics:
            return EvalResult()
        names, folders = task_names_and_paths(self.tasks, "evaluators: lm_eval")
        if self._greedy is None:
            with quiet():
                self._greedy = greedy_tasks_of(names, task_manager(names, folders, "evaluators: lm_eval"))
        lm = port_lm(env.training, env.tokenizer, env.sampler, batch_size=self.batch_size,
                     max_length=int(self.max_length or env.spec.max_length), seed=env.spec.seed,
                     greedy_tasks=self._greedy)
        results = evaluate(lm, self.tasks, limit=self.limit, num_fewshot=self.num_fewshot,
                           batch_size=self.batch_size, bootstrap_iters=0, silent=True)
        return EvalResult(metrics=metrics_of(results))
