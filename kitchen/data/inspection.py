"""`kitchen data inspect`: what a run would train on, before it trains.

Reads the data exactly as a run does (:func:`kitchen.data.load.load_training_rows`),
renders it with the run's tokenizer and renderer into the same token cache (so the run
that follows starts from a hit), and prints the detected format, row and token
statistics, truncation and empty-example counts, and a few rendered examples with the
trained tokens coloured differently from the masked ones. It loads a tokenizer only,
never model weights: a data problem should cost seconds, not a model load.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from kitchen.errors import ConfigError

TRAINED_STYLE = "bold green"
MASKED_STYLE = "dim"
PLAIN_MARKERS = ("[[", "]]")  # around trained text when colour is off


def tokenizer_for(spec: Any):
    """The run's tokenizer without its weights: the adapters' ``tokenizer`` hook, else the model's own.

    A backend without a hook (Tinker) renders with the model's hub tokenizer, which is
    what the service uses for it; that one is downloaded if it is not cached.
    """
    from kitchen.stages.session import offline_tokenizer

    tokenizer = offline_tokenizer(spec)
    if tokenizer is not None:
        return tokenizer
    from kitchen.adapters.local.models import load_tokenizer

    return load_tokenizer(spec.model, revision=spec.model_revision, chat_template=spec.chat_template)


def colorize(tokenizer: Any, tokens: Sequence[int], weights: Sequence[float], color: bool):
    """A Rich Text of ``tokens``: runs of trained tokens (weight > 0) styled apart from masked ones.

    With ``color=False`` trained runs are wrapped in ``[[ ]]`` instead, so the view
    survives a pipe or a log file.
    """
    from rich.text import Text

    text = Text()
    k = 0
    while k < len(tokens):
        trained = bool(weights[k])
        j = k
        while j < len(tokens) and bool(weights[j]) == trained:
            j += 1
        piece = tokenizer.decode(list(tokens[k:j]))
        if color:
            text.append(piece, style=TRAINED_STYLE if trained else MASKED_STYLE)
        else:
            text.append(f"{PLAIN_MARKERS[0]}{piece}{PLAIN_MARKERS[1]}" if trained else piece)
        k = j
    return text


def _lengths(data: Sequence[Any], preference: bool) -> list[int]:
    if preference:
        return [max(c.length, r.length) + 1 for c, r in data]
    return [d.length + 1 for d in data]


def _sequence_tokens(data: Sequence[Any], preference: bool) -> int:
    """Tokens of the rendered sequences (what the length column and each example's header count)."""
    if preference:
        return sum(c.length + r.length + 2 for c, r in data)
    return sum(d.length + 1 for d in data)


def _source_of(part: Any, split: str) -> str:
    """Where a split's rows come from: its file or hub name, or the train file it was carved off."""
    from kitchen.io.secrets import redact_url

    if part is None or (not part.rows and not part.source):
        return "none"
    if part.extra.get("carved_from_train"):
        return f"{redact_url(str(part.source))} (test_split_fraction={part.extra['test_split_fraction']} of train)"
    return redact_url(str(part.source))


def _full(datum) -> tuple[list[int], list[float]]:
    """A Datum back to its rendered sequence: tokens and per-token weights (first token untrained)."""
    targets = datum.loss_fn_inputs["target_tokens"]
    return list(datum.model_input) + [targets[-1]], [0.0] + list(datum.loss_fn_inputs["weights"])


def _print_sources(console: Any, loaded: Any, stream: Any) -> None:
    """A dataset list's share per source: its rows, its weight and the fraction of the mixture it makes."""
    from rich.table import Table

    from kitchen.io.secrets import redact_url

    mixture = loaded.train.extra.get("mixture")
    parts = getattr(stream, "parts", None)
    if not mixture and not parts:
        return
    if parts:  # streamed: no row counts, the fraction is the sampling probability
        title = f"sources (streamed, {stream.strategy}; fraction = sampling probability)"
        mixture = [{"path": p.source, "format": p.format.label(), "rows": p.num_rows, "weight": w.get("weight"),
                    "probability": q, "drawn": None} for p, w, q in zip(parts, stream.sources, stream.probabilities)]
    else:
        title = f"sources ({loaded.train.extra['strategy']}, seed {loaded.train.extra['seed']})"
    total = sum(m["drawn"] or 0 for m in mixture)
    table = Table(title=title, title_justify="left")
    table.add_column("source", overflow="fold")  # a long path folds instead of losing its file name
    for col in ("format", "rows", "weight", "in mixture", "fraction"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for m in mixture:
        weight = "-" if m["weight"] is None else f"{m['weight']:g}"
        fraction = m["drawn"] / total if m["drawn"] is not None and total else m["probability"]
        table.add_row(redact_url(str(m["path"])), m["format"], "?" if m["rows"] is None else str(m["rows"]), weight,
                      "-" if m["drawn"] is None else str(m["drawn"]), f"{fraction:.1%}")
    console.print(table)


def inspect_data(spec: Any, *, examples: int = 3, color: str = "auto", console=None) -> None:
    """Print the inspect view for ``spec`` (the composed run spec)."""
    from rich.console import Console
    from rich.table import Table

    from kitchen.config.instantiate import build
    from kitchen.data.load import data_kind, load_training_rows
    from kitchen.data.token_cache import cached_preference_data, cached_sft_data
    from kitchen.stages.session import make_renderer

    if color not in ("auto", "always", "never"):
        raise ConfigError(f"--color {color!r}: use auto, always or never.")
    if console is None:
        console = Console(highlight=False, force_terminal=True if color == "always" else None, no_color=color == "never")
        if not console.is_terminal:
            console.width = 140  # piped: as the other read-only tables
    use_color = color == "always" or (color == "auto" and console.is_terminal)
    if not hasattr(spec, "dataset"):
        raise ConfigError(f"Recipe '{spec.recipe}' (workflow {spec.workflow.name}) reads no dataset; nothing to inspect.")
    kind = data_kind(spec)
    store = build("adapters", dict(spec.adapters.dataset_store))
    if spec.dataset_streaming:  # never materialise a streamed train set: its first rows only
        from kitchen.data.load import LoadedData, LoadedSplit
        from kitchen.data.stream import CHECKED_ROWS, load_test_split, open_train_stream

        stream = open_train_stream(spec, store, kind)
        loaded = LoadedData(LoadedSplit(stream.first_rows, stream.source, stream.format, None,
                                        {"streaming": True, "first_rows": CHECKED_ROWS}), load_test_split(spec, store, kind))
        console.print(stream.summary(loaded.test) + f"; the train rows below are its first {len(stream.first_rows)} "
                      "(in file order)")
    else:
        loaded = load_training_rows(spec, store, kind)
        console.print(loaded.summary())
    tokenizer = tokenizer_for(spec)
    renderer = make_renderer(spec, tokenizer)
    console.print(f"tokenizer: {getattr(tokenizer, 'name_or_path', '') or spec.model} (no model weights loaded); "
                  f"renderer {renderer.name}, train_on_what {renderer.train_on_what.value}, max_length {spec.max_length}")
    cached = cached_preference_data if kind == "preference" else cached_sft_data
    table = Table(title="data", title_justify="left")
    for col in ("split", "rows", "kept", "truncated", "empty (dropped)", "tokens", "trained", "length min/mean/p95/max"):
        table.add_column(col, justify="left" if col == "split" else "right")
    shown = {}
    for split in ("train", "test"):
        part = getattr(loaded, split)
        if not part.rows:
            continue
        rows = part.rows
        data, stats, _ = cached(part.source, lambda rows=rows: rows, tokenizer, renderer,
                                source_fingerprint=part.fingerprint, extra=part.extra, num_proc=spec.tokenize_num_proc,
                                use_cache=not part.extra.get("streaming"))  # a stream's first rows: not worth a cache entry
        lengths = sorted(_lengths(data, kind == "preference"))
        if lengths:
            p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
            dist = f"{lengths[0]}/{statistics.fmean(lengths):.0f}/{p95}/{lengths[-1]}"
        else:
            dist = "-"
        table.add_row(split, str(stats.examples), str(stats.kept), str(stats.truncated), str(stats.dropped_empty),
                      str(_sequence_tokens(data, kind == "preference")), str(stats.trained_tokens), dist)
        shown[split] = data
    console.print(table)
    _print_sources(console, loaded, stream if spec.dataset_streaming else None)
    for split in ("train", "test"):  # where each split comes from (a dataset= override drops the recipe's test set)
        console.print(f"{split} source: {_source_of(getattr(loaded, split), split)}", soft_wrap=True)
    train = shown.get("train") or []
    if examples and train:
        legend = (f"[{TRAINED_STYLE}]trained[/] / [{MASKED_STYLE}]masked[/]" if use_color
                  else f"trained text between {PLAIN_MARKERS[0]} {PLAIN_MARKERS[1]}, the rest masked")
        console.print(f"first {min(examples, len(train))} train examples ({legend}):")
        for k in range(min(examples, len(train))):
            item = train[k]
            sides = (("chosen", item[0]), ("rejected", item[1])) if kind == "preference" else (("", item),)
            for name, datum in sides:
                tokens, weights = _full(datum)
                console.rule(f"example {k}" + (f" ({name})" if name else "") + f": {len(tokens)} tokens, "
                             f"{datum.num_loss_tokens()} trained", align="left")
                console.print(colorize(tokenizer, tokens, weights, use_color))


__all__ = ["colorize", "inspect_data", "tokenizer_for"]
