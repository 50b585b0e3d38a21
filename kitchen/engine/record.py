"""The run record: the facts stages learn that run.json (and the model card) report.

Each fact has one typed field and one writer: the session stage sets ``session`` from
what the backend said it loaded, the data stages set ``data_stats`` per split, the
evaluate stage appends to ``eval_history``, the final-weights stage sets
``final_weights`` and ``pushed_to``. The runner reads them back by name when it writes
run.json, so no one matches string keys by suffix and no fact is kept twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Stats(Protocol):
    """What a split's data statistics give run.json (``DataStats`` and the stream's plan stats)."""

    def to_dict(self) -> dict[str, Any]: ...


#: the session facts run.json keeps under ``compute`` (what ``precision=auto``, ``max_tokens_per_micro_batch=auto``
#: and ``fused_loss=auto`` chose, and why)
COMPUTE_FACTS = ("device", "dtype", "precision", "compute_precision", "max_tokens_per_micro_batch", "micro_batch_budget",
                 "micro_batch_size", "loss_chunk_tokens", "loss_chunking_off", "fused_loss", "fused_loss_note")


@dataclass
class RunRecord:
    """What one run reports about itself, filled in as the stages learn it."""

    #: what the backend's ``start_session`` said it loaded (model, base, commit, device...)
    session: dict[str, Any] = field(default_factory=dict)
    #: how ``validate`` resolved the model (e.g. "cached, commit abc123"), shown on its ok line
    model_note: str | None = None
    #: per split ("train", "test"): rows kept, truncated, dropped and trained tokens
    data_stats: dict[str, Stats] = field(default_factory=dict)
    #: one row per evaluation: ``{"step": s, **metrics}``
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    final_weights: str | None = None
    pushed_to: str | None = None

    @property
    def model_commit(self) -> str | None:
        """The hub commit the weights were trained against (a resume loads exactly it)."""
        return self.session.get("model_commit")

    def data_stats_fields(self) -> dict[str, dict[str, Any]]:
        """run.json's ``data_stats``: ``{"train_data_stats": {...}, "test_data_stats": {...}}``."""
        return {f"{split}_data_stats": stats.to_dict() for split, stats in self.data_stats.items()}

    def run_json_fields(self) -> dict[str, Any]:
        """The fields run.json takes from this record."""
        fields: dict[str, Any] = {"eval_history": list(self.eval_history), "data_stats": self.data_stats_fields()}
        if self.session.get("base"):  # the base the weights truly came from
            fields.update(model_base=self.session["base"], model_revision=self.session.get("model_revision"),
                          model_commit=self.model_commit)
        if self.pushed_to:
            fields["pushed_to"] = self.pushed_to
        compute = {k: self.session[k] for k in COMPUTE_FACTS if k in self.session}
        if compute:  # how the backend computed: precision, micro-batch budget, loss kernel (local backend)
            fields["compute"] = compute
        return fields


__all__ = ["RunRecord", "Stats"]
