"""Data stages: load rows through the DatasetStore, tokenize them (cached), pick a batch."""

from __future__ import annotations

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.errors import ConfigError, DataError
from kitchen.telemetry import events as ev


@register_stage("load_dataset")
class LoadDataset(Stage):
    """Read the train (and test) rows; the DatasetStore reports bad files with line numbers."""

    def validate(self, ctx: Context) -> None:
        """Load before the run starts, so a missing or malformed file fails before anything is written."""
        if not ctx.spec.dataset:
            raise ConfigError(f"Recipe '{ctx.spec.recipe}' needs a dataset: pass dataset=PATH (a JSONL, JSON, CSV or Parquet file).")
        store = ctx.adapters.dataset_store
        ctx.state["train_rows"] = store.load(ctx.spec.dataset)
        ctx.state["test_rows"] = store.load(ctx.spec.test_dataset) if ctx.spec.test_dataset else []

    def execute(self, ctx: Context) -> None:
        if "train_rows" not in ctx.state:
            self.validate(ctx)
        ctx.emit(ev.RUN_INFO, message=f"dataset: {len(ctx.state['train_rows'])} train rows, {len(ctx.state['test_rows'])} test rows")


def tokenize_splits(ctx: Context, cached, noun: str) -> None:
    """Render the train and test rows with ``cached`` (a token_cache function), count and warn.

    Sets ``ctx.state["train_data"]`` / ``["test_data"]``; an empty training set is a DataError.
    """
    renderer, tokenizer, spec = ctx.state["renderer"], ctx.state["tokenizer"], ctx.spec
    for split, source, rows_key in (("train", spec.dataset, "train_rows"), ("test", spec.test_dataset, "test_rows")):
        if not source:
            ctx.state[f"{split}_data"] = []
            continue
        rows = ctx.state[rows_key]
        data, stats, hit = cached(source, lambda rows=rows: rows, tokenizer, renderer)
        ctx.state[f"{split}_data"] = data
        ctx.metadata[f"{split}_data_stats"] = stats
        ctx.emit(ev.RUN_INFO, message=f"{split}: {len(data)} {noun} tokenized" + (" (from cache)" if hit else ""))
        if stats.truncated or stats.dropped_empty:
            ctx.emit(
                ev.RUN_WARNING,
                message=f"{split}: {stats.truncated} of {len(rows)} {noun} were longer than max_length={spec.max_length} "
                f"and were truncated; {stats.dropped_empty} had nothing left to train on and were dropped. "
                "Raise max_length to keep them.",
            )
    if not ctx.state["train_data"]:
        raise DataError(f"No trainable {noun} in {spec.dataset}: every row was empty after rendering with max_length={spec.max_length}.")


@register_stage("tokenize_dataset")
class TokenizeDataset(Stage):
    """Render chat rows into Datums once; the token cache makes a second run free."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.token_cache import cached_sft_data

        tokenize_splits(ctx, cached_sft_data, "examples")


@register_stage("render_batch")
class RenderBatch(Stage):
    """Select this step's Datums according to the deterministic batch plan."""

    def execute(self, ctx: Context) -> None:
        data = ctx.state["train_data"]
        ctx.state["batch_data"] = [data[i] for i in ctx.state["batch"].indices]


@register_stage("plan_batches")
class PlanBatches(Stage):
    """Fix the data order for the whole run (a pure function of seed and step)."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.batching import BatchPlan

        spec = ctx.spec
        data = ctx.state["train_data"]
        from kitchen.train.length_grouping import item_length  # --- issue 11

        lengths = tuple(item_length(d) for d in data) if spec.length_grouped else None  # --- issue 11
        plan = BatchPlan(len(data), spec.batch_size, spec.epochs, spec.max_steps, spec.seed, group_lengths=lengths)
        ctx.state["plan"] = plan
        ctx.state["total_steps"] = plan.total_steps
