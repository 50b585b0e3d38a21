"""Data stages: load rows through the DatasetStore, tokenize them (cached), pick a batch."""

from __future__ import annotations

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.errors import DataError
from kitchen.telemetry import events as ev


@register_stage("load_dataset")
class LoadDataset(Stage):
    """Read the train (and test) rows; the DatasetStore reports bad files with line numbers."""

    def validate(self, ctx: Context) -> None:
        """Load before the run starts, so a missing or malformed file fails before anything is written."""
        # issue 9: formats, splits, subsets, column mapping and test_split_fraction all live in kitchen.dataload
        from kitchen.dataload import load_training_rows

        loaded = load_training_rows(ctx.spec, ctx.adapters.dataset_store)
        ctx.state["loaded_data"] = loaded  # issue 9: tokenize_splits keys the token cache on it
        ctx.state["train_rows"] = loaded.train.rows
        ctx.state["test_rows"] = loaded.test.rows

    def execute(self, ctx: Context) -> None:
        if "train_rows" not in ctx.state:
            self.validate(ctx)
        ctx.emit(ev.RUN_INFO, message=ctx.state["loaded_data"].summary())  # issue 9: shows the detected format


def tokenize_splits(ctx: Context, cached, noun: str) -> None:
    """Render the train and test rows with ``cached`` (a token_cache function), count and warn.

    Sets ``ctx.state["train_data"]`` / ``["test_data"]``; an empty training set is a DataError.
    """
    renderer, tokenizer, spec = ctx.state["renderer"], ctx.state["tokenizer"], ctx.spec
    loaded = ctx.state["loaded_data"]
    for split in ("train", "test"):
        part = getattr(loaded, split)  # issue 9: a LoadedSplit (rows + what the cache keys on)
        if not part.rows:
            ctx.state[f"{split}_data"] = []
            continue
        rows = part.rows
        data, stats, hit = cached(part.source, lambda rows=rows: rows, tokenizer, renderer,
                                  source_fingerprint=part.fingerprint, extra=part.extra,
                                  num_proc=spec.tokenize_num_proc)
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
        plan = BatchPlan(len(ctx.state["train_data"]), spec.batch_size, spec.epochs, spec.max_steps, spec.seed)
        ctx.state["plan"] = plan
        ctx.state["total_steps"] = plan.total_steps
