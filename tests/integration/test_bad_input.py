"""Every config mistake gets one paragraph on stderr, exit code 2, and no traceback."""

from __future__ import annotations

import json

import pytest

NOOP = ("adapters=noop", "telemetry=jsonl")


def assert_user_error(r, *needles: str) -> None:
    assert r.code == 2, r
    assert "Traceback" not in r.text, r
    assert r.err.strip().startswith("error:"), r
    for needle in needles:
        assert needle in r.err, (needle, r)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["recipe=nope"], ["Unknown recipe 'nope'", "sl_basic"]),
        (["sl_basic"], ["Did you mean recipe=sl_basic?"]),
        (["dataset_columns.question=prompt"], ["dataset_columns has no entry 'question'", "messages, output, prompt"]),
        (["--max_steps", "5"], ["write max_steps=5, not --max_steps 5"]),
        (["dataset=https://example.com/d.jsonl?token=abcdef123&split=x"],
         ["Quote the value of dataset", "'dataset=\"https://example.com/d.jsonl?token=***&split=x\"'"]),
        (["recipe=sl_basik"], ["Did you mean 'sl_basic'?"]),
        (["learnin_rate=3e-4"], ["Unknown key 'learnin_rate'", "Did you mean 'learning_rate'?"]),
        (["+learnin_rate=3e-4"], ["unknown key 'learnin_rate'", "Did you mean 'learning_rate'?"]),
        (["learning_rate=abc"], ["learning_rate", "'abc'", "valid number"]),
        (["batch_size=0"], ["batch_size", "greater than 0"]),
        (["max_steps=-5"], ["max_steps", "greater than 0"]),
        (["epochs=0"], ["epochs"]),
        (["adapters=nope"], ["Unknown adapters choice 'nope'", "local", "noop", "tinker"]),
        (["telemetry=loud"], ["Unknown telemetry choice 'loud'", "jsonl"]),
        (["workflow=superviced"], ["Unknown workflow choice 'superviced'", "Did you mean 'supervised'?"]),
        (["lr_schedule=wavy"], ["lr_schedule", "wavy", "cosine"]),
        (["dataset=/nonexistent/train.jsonl"], ["/nonexistent/train.jsonl"]),
    ],
)
def test_config_mistakes(kitchen, tmp_path, overrides, needles):
    r = kitchen("run", *NOOP, *overrides, f"run_dir={tmp_path / 'x'}")
    assert_user_error(r, *needles)
    assert not (tmp_path / "x" / "run.json").exists()


def test_a_url_token_in_an_error_never_reaches_the_terminal(kitchen):
    r = kitchen("validate", "adapters=noop", 'dataset="https://example.com/d.jsonl?token=abcdef123"')
    assert_user_error(r, "example.com/d.jsonl")
    assert "abcdef123" not in r.text


def test_validate_reports_the_same_mistakes(kitchen):
    assert_user_error(kitchen("validate", "batch_size=0"), "batch_size")
    assert_user_error(kitchen("validate", "adapters=noop", "dataset=/missing.jsonl"), "/missing.jsonl")


def test_malformed_jsonl_line_names_the_line(kitchen, tmp_path):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    data.write_text("\n".join([good, good, '{"messages": [ oops', good]) + "\n")
    r = kitchen("run", *NOOP, f"dataset={data}", f"run_dir={tmp_path / 'x'}")
    assert_user_error(r, str(data), "line 3")


def test_row_without_messages_names_the_row(kitchen, tmp_path):
    data = tmp_path / "rows.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"text": "no messages here"}) + "\n")
    r = kitchen("run", *NOOP, f"dataset={data}", "~test_dataset", f"run_dir={tmp_path / 'x'}")
    assert_user_error(r, "line 2", "field messages")


def test_malformed_recipe_yaml_names_file_and_line(kitchen, tmp_path):
    (tmp_path / "broken.yaml").write_text("# @package _global_\nmodel: tiny\nlearning_rate: [1e-4\nbatch_size: 4\n")
    r = kitchen("run", "recipe=broken", "--recipes-dir", str(tmp_path))
    assert_user_error(r, "broken.yaml", "line")


def test_recipe_with_unknown_key_names_the_recipe_file(kitchen, tmp_path):
    (tmp_path / "typo.yaml").write_text("# @package _global_\ndefaults:\n  - override /adapters: noop\nlearing_rate: 1e-4\n")
    r = kitchen("run", "recipe=typo", "--recipes-dir", str(tmp_path))
    assert_user_error(r, "typo.yaml", "learing_rate", "Did you mean 'learning_rate'?")


def test_recipe_naming_unknown_workflow(kitchen, tmp_path):
    (tmp_path / "odd.yaml").write_text("# @package _global_\ndefaults:\n  - override /workflow: telepathy\n")
    r = kitchen("run", "recipe=odd", "--recipes-dir", str(tmp_path))
    assert_user_error(r, "Recipe 'odd'", "odd.yaml", "telepathy", "supervised")


def test_missing_recipe_dir(kitchen, tmp_path):
    r = kitchen("recipes", "--recipes-dir", str(tmp_path / "nowhere"))
    assert_user_error(r, "nowhere", "does not exist")


def test_finished_run_dir_is_refused_and_kept(kitchen, tmp_path):
    run_dir = tmp_path / "done"
    assert kitchen("run", *NOOP, "max_steps=3", f"run_dir={run_dir}").code == 0
    before = (run_dir / "metrics.jsonl").read_text()
    r = kitchen("run", *NOOP, "max_steps=3", f"run_dir={run_dir}")
    assert_user_error(r, "already holds a finished run", "resume=true", "overwrite=true")
    assert (run_dir / "metrics.jsonl").read_text() == before
    # overwrite moves the old run aside rather than deleting it
    r = kitchen("run", *NOOP, "max_steps=2", f"run_dir={run_dir}", "overwrite=true")
    assert r.code == 0, r
    moved = list(tmp_path.glob("done.old-*"))
    assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_text() == before


def test_resume_without_a_run_is_refused(kitchen, tmp_path):
    r = kitchen("run", *NOOP, f"run_dir={tmp_path / 'empty'}", "resume=true")
    assert_user_error(r, "no run to resume")


def test_resume_refuses_a_shape_change_and_a_max_steps_below_the_checkpoint(kitchen, tmp_path):
    """Refused before any weights load (validate says the same), and nothing in the run changes."""
    run_dir = tmp_path / "r"
    assert kitchen("run", *NOOP, "max_steps=4", "save_every=2", f"run_dir={run_dir}").code == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".kitchen.lock"}
    r = kitchen("resume", str(run_dir), "lora_rank=8")
    assert_user_error(r, "lora_rank=8 (the run has lora_rank=16)", "start a new run")
    r = kitchen("validate", *NOOP, "lora_rank=8", "resume=true", f"run_dir={run_dir}")
    assert_user_error(r, "lora_rank=8 (the run has lora_rank=16)")
    r = kitchen("resume", str(run_dir), "max_steps=3")
    assert_user_error(r, "max_steps=3 is below step 4", "max_steps=4 or more", "resume_from=")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".kitchen.lock"} == before
    # from an earlier checkpoint, the same max_steps is fine
    assert kitchen("resume", str(run_dir), "max_steps=3", "resume_from=step_000002").code == 0


def test_a_bad_resume_from_lists_each_checkpoint_once(kitchen, tmp_path):
    run_dir = tmp_path / "r"
    assert kitchen("run", *NOOP, "max_steps=4", "save_every=2", f"run_dir={run_dir}").code == 0
    assert kitchen("resume", str(run_dir), "resume_from=step_000002").code == 0  # step 4 is indexed twice now
    assert [json.loads(x)["name"] for x in (run_dir / "checkpoints" / "checkpoints.jsonl").read_text().splitlines()].count("step_000004") == 2
    r = kitchen("resume", str(run_dir), "resume_from=step_9")
    assert_user_error(r, "no such checkpoint")
    listed = r.err.split("Checkpoints there:")[1].split(".")[0]
    names = [n.strip() for n in listed.replace("\n", " ").split(",")]
    assert names == ["step_000002", "step_000004"], names


@pytest.mark.parametrize(("overrides", "env", "needles"), [
    (["model=tiny-llama", "device=cpu", "mixed_precision=fp16"], {}, ["mixed_precision=fp16", "CPU"]),
    (["model=tiny-llama", "device=cpu", "quantization=4bit"], {}, ["quantization=4bit", "CUDA GPU"]),
    (["adapters=noop", "batch_size=5", "distributed.nproc_per_node=2"], {}, ["batch_size=5 cannot be split evenly over 2"]),
    (["adapters=noop", "checkpoint_mirror=nosuchproto://bucket/run"], {}, ["nosuchproto", "fsspec backend"]),
    (["adapters=noop", "push_to_hub=me/x"], {"HF_HUB_OFFLINE": "1"}, ["push_to_hub=me/x", "HF_HUB_OFFLINE"]),
    (["model=tiny-llama", "max_length=32"], {}, ["No trainable examples", "max_length=32"]),
    (["model=tiny-llama", "max_tokens_per_micro_batch=10"], {}, ["max_tokens_per_micro_batch=10", "longest sequence", "at least"]),
    (["recipe=dpo_basic", "adapters=noop", "max_tokens_per_micro_batch=10"], {}, ["max_tokens_per_micro_batch=10", "preference pairs"]),
])
def test_validate_refuses_what_run_would_refuse_late(kitchen, tmp_path, overrides, env, needles):
    """Each of these once passed `kitchen validate`, then failed the run (some after training)."""
    for command in ("validate", "run"):
        r = kitchen(command, *overrides, f"run_dir={tmp_path / command}", env=env)
        assert_user_error(r, *needles)
    assert not (tmp_path / "run").exists()  # refused before the run dir was made


def test_rows_truncated_to_nothing_are_reported_once(kitchen, tmp_path):
    """Some rows too long for max_length: the run trains on the rest and says so in one warning."""
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = {"messages": [{"role": "user", "content": "tell me " * 40}, {"role": "assistant", "content": "no"}]}
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (short, long, short, short)))
    r = kitchen("run", "model=tiny-llama", f"dataset={data}", "~test_dataset", "max_length=64", "batch_size=2",
                "max_steps=1", "num_preview_samples=0", f"run_dir={tmp_path / 'run'}")
    assert r.code == 0, r
    said = [line for line in r.text.splitlines() if "nothing left to train on" in line]
    assert len(said) == 1 and "1 had nothing left" in said[0] and "max_length=64" in said[0], r.text
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert sum("nothing left to train on" in str(e.get("message", "")) for e in events) == 1


def test_validate_refuses_an_on_policy_teacher_with_another_tokenizer(kitchen, tmp_path):
    """The tokenizers are compared from disk (no weights load), as the run compares them after loading."""
    from transformers import AutoTokenizer

    from hub_fake import save_tiny_model

    teacher = save_tiny_model(tmp_path / "teacher")
    tok = AutoTokenizer.from_pretrained(str(teacher))
    tok.add_tokens(["the", "and"])  # another vocabulary: "the" is one token here, three for the student
    tok.save_pretrained(str(teacher))
    base = ("recipe=distill_basic", "model=tiny-llama", "distill_mode=on_policy", "max_steps=1")
    for command in ("validate", "run"):
        r = kitchen(command, *base, f"teacher={teacher}", f"run_dir={tmp_path / command}")
        assert_user_error(r, f"teacher={teacher}", "different tokenizer", "distill_mode=off_policy")
    assert not (tmp_path / "run").exists()
    same = save_tiny_model(tmp_path / "same-family")
    r = kitchen("validate", *base, f"teacher={same}", f"run_dir={tmp_path / 'ok'}")
    assert r.code == 0, r


def test_debug_shows_the_traceback(kitchen, tmp_path):
    r = kitchen("--debug", "run", *NOOP, "batch_size=0", f"run_dir={tmp_path / 'x'}")
    assert r.code == 2 and "Traceback" in r.err and "batch_size" in r.err


def test_resume_of_non_run_dir(kitchen, tmp_path):
    assert_user_error(kitchen("resume", str(tmp_path)), "not a kitchen run directory")


# ------------------------------------------------------------------------------------------
# The catalog (issue 13): every malformed input class through the real CLI, with a tally.
# Each case: (class, name, setup(tmp) -> argv, needles that must appear in the one paragraph).

_MSG = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
_CATALOG_NOOP = ("adapters=noop", "telemetry=jsonl", "max_steps=2", "num_preview_samples=0")
_LOCAL = ("adapters=local", "telemetry=jsonl", "max_steps=2", "batch_size=2", "~test_dataset", "num_preview_samples=0")


def _run(*extra):
    return lambda tmp: ["run", *_CATALOG_NOOP, *extra, f"run_dir={tmp / 'x'}"] if not any(e.startswith("run_dir=") for e in extra) \
        else ["run", *_CATALOG_NOOP, *extra]


def _file(name: str, content: bytes | str, *argv_of_path):
    def setup(tmp):
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return [a.replace("{path}", str(path)).replace("{tmp}", str(tmp)) for a in argv_of_path]
    return setup


def _finished_run(*resume_args):
    def setup(tmp):
        from conftest import run_kitchen

        assert run_kitchen("run", *_CATALOG_NOOP, f"run_dir={tmp / 'done'}").code == 0
        return ["resume", str(tmp / "done"), *resume_args]
    return setup


def _fake_run(config_text: str):
    def setup(tmp):
        (tmp / "r").mkdir()
        (tmp / "r" / "config.yaml").write_text(config_text)
        return ["resume", str(tmp / "r")]
    return setup


def _recipe(body: str, *argv):
    def setup(tmp):
        (tmp / "rec").mkdir()
        (tmp / "rec" / "evil.yaml").write_text("# @package _global_\n" + body)
        data = tmp / "ok.jsonl"
        data.write_text(_MSG + "\n")
        return [a.replace("{tmp}", str(tmp)).replace("{data}", str(data)) for a in argv]
    return setup


CATALOG = [
    # config values
    ("config", "unknown key", _run("learnin_rate=3e-4"), ["learnin_rate"]),
    ("config", "not a number", _run("learning_rate=abc"), ["learning_rate"]),
    ("config", "zero batch", _run("batch_size=0"), ["batch_size"]),
    ("config", "negative steps", _run("max_steps=-5"), ["max_steps"]),
    ("config", "bad literal", _run("lr_schedule=wavy"), ["lr_schedule"]),
    ("config", "unknown recipe", _run("recipe=nope"), ["nope"]),
    ("config", "unknown group choice", _run("adapters=nope"), ["nope"]),
    ("float", "learning_rate=inf", _run("learning_rate=inf"), ["learning_rate", "finite"]),
    ("float", "learning_rate=1e999", _run("learning_rate=1e999"), ["learning_rate", "finite"]),
    ("float", "learning_rate=nan", _run("learning_rate=nan"), ["learning_rate", "finite"]),
    ("float", "weight_decay=inf", _run("weight_decay=inf"), ["weight_decay", "finite"]),
    ("float", "temperature=-inf", _run("temperature=-inf"), ["temperature"]),
    ("override", "empty key =3", _run("=3"), ["'=3'", "key before '=' is empty"]),
    ("override", "integer of 5000 digits", _run("max_steps=" + "9" * 5000), ["max_steps", "5000 digits"]),
    ("run_dir", "an existing file", _file("afile", "x", "run", *_CATALOG_NOOP, "run_dir={path}"), ["is not a folder"]),
    ("run_dir", "under /proc", _run("run_dir=/proc/kitchen-run"), ["/proc"]),
    ("run_dir", "a name too long", lambda tmp: ["run", *_CATALOG_NOOP, f"run_dir={tmp / ('a' * 300)}"], ["255 bytes"]),
    ("run_dir", "empty", _run("run_dir="), ["run_dir", "empty"]),
    ("run_dir", "empty with overwrite", _run("run_dir=", "overwrite=true"), ["run_dir", "empty"]),
    ("run_dir", "under a file", _file("afile", "x", "run", *_CATALOG_NOOP, "run_dir={path}/sub"), ["is a file"]),
    ("data", "missing file", _run("dataset=/nonexistent/train.jsonl"), ["/nonexistent/train.jsonl"]),
    ("data", ".jsonl.gz that is not gzip", _file("bad.jsonl.gz", b"plain text", "run", *_CATALOG_NOOP, "dataset={path}", "run_dir={tmp}/x"), ["gzip"]),
    ("data", "deeply nested JSON line", _file("deep.jsonl", _MSG + "\n" + '{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n",
                                              "run", *_CATALOG_NOOP, "dataset={path}", "~test_dataset", "run_dir={tmp}/x"), ["line 2", "deeply"]),
    ("data", "deeply nested .json", _file("deep.json", "[" * 5000 + "]" * 5000, "run", *_CATALOG_NOOP, "dataset={path}", "run_dir={tmp}/x"), ["deeply"]),
    ("data", "malformed JSONL line", _file("bad.jsonl", _MSG + "\n{oops\n", "run", *_CATALOG_NOOP, "dataset={path}", "run_dir={tmp}/x"), ["line 2"]),
    ("local", "garbage .gguf", _file("model.gguf", b"garbage!", "run", *_LOCAL, "model={path}", "run_dir={tmp}/x"), ["not a GGUF file"]),
    ("local", "threads=-2", lambda tmp: ["run", *_LOCAL, "model=tiny-llama", "+adapters.training.threads=-2", f"run_dir={tmp / 'x'}"], ["threads"]),
    ("local", "lora_rank too large to allocate", lambda tmp: ["run", *_LOCAL, "model=tiny-llama", "lora_rank=100000000", f"run_dir={tmp / 'x'}"], ["lora_rank=100000000"]),
    ("resume", "override without '='", _finished_run("max_steps"), ["max_steps", "key=value"]),
    ("resume", "override with empty key", _finished_run("=5"), ["'=5'"]),
    ("resume", "bad value", _finished_run("max_steps=abc"), ["max_steps"]),
    ("resume", "unknown checkpoint", _finished_run("resume_from=step_000099"), ["no such checkpoint"]),
    ("resume", "config.yaml is a list", _fake_run("- a\n- b\n"), ["not the mapping"]),
    ("resume", "config.yaml is not YAML", _fake_run("a: [1\n"), ["not valid YAML"]),
    ("resume", "not a run dir", lambda tmp: ["resume", str(tmp)], ["not a kitchen run directory"]),
    ("recipe", "_target_: os.system (validate)", _recipe("adapters:\n  dataset_store:\n    _target_: os.system\n    command: echo hi\n",
                                                           "validate", "recipe=evil", "--recipes-dir", "{tmp}/rec", "dataset={data}"), ["os.system"]),
    ("recipe", "_target_: os.system (run)", _recipe("adapters:\n  training:\n    _target_: os.system\n    command: echo hi\n",
                                                      "run", "recipe=evil", "--recipes-dir", "{tmp}/rec", "run_dir={tmp}/x"), ["os.system"]),
    ("recipe", "malformed recipe YAML", _recipe("model: tiny\nlearning_rate: [1e-4\n", "run", "recipe=evil", "--recipes-dir", "{tmp}/rec"), ["evil.yaml"]),
]


# What only running can find: validate does not allocate the model.
RUNTIME_ONLY = {"lora_rank too large to allocate"}


def test_bad_input_catalog(tmp_path, capsys):
    """Every case: exit 2, one paragraph starting with 'error:', no traceback. Prints the tally.

    Every `run` case is also given to `kitchen validate` (the one preflight): it must be
    rejected there too, with exit 2, before anything runs."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import run_kitchen

    def one(i_case):
        i, (klass, name, setup, needles) = i_case
        tmp = tmp_path / f"case{i}"
        tmp.mkdir()
        try:
            argv = setup(tmp)
            r = run_kitchen(*argv, cwd=tmp)
        except Exception as exc:  # noqa: BLE001 - a setup failure is a failed case
            return klass, name, False, f"setup: {exc}"
        ok = r.code == 2 and "Traceback" not in r.text and r.err.strip().startswith("error:") and all(n in r.err for n in needles)
        if ok and argv[0] == "run" and name not in RUNTIME_ONLY:
            v = run_kitchen("validate", *argv[1:], cwd=tmp)
            if not (v.code == 2 and "Traceback" not in v.text and v.err.strip().startswith("error:")):
                return klass, name, False, f"run rejects it but validate gave exit {v.code}: {(v.err or v.out).strip()[-300:]}"
        return klass, name, ok, "" if ok else f"exit {r.code}: {r.err.strip()[-300:]}"

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, enumerate(CATALOG)))
    classes = sorted({k for k, *_ in results})
    with capsys.disabled():
        print(f"\nbad-input catalog: {sum(ok for _, _, ok, _ in results)}/{len(results)} exit 2 with one paragraph, no traceback")
        for klass in classes:
            mine = [r for r in results if r[0] == klass]
            print(f"  {klass:9s} {sum(ok for _, _, ok, _ in mine)}/{len(mine)}")
        for klass, name, ok, why in results:
            if not ok:
                print(f"  FAIL {klass}/{name}: {why}")
    assert all(ok for _, _, ok, _ in results), [(k, n, why) for k, n, ok, why in results if not ok]


@pytest.mark.parametrize(
    ("dataset", "extra", "needles"),
    [
        ("[{path:a.jsonl,weight:0.7},{path:b.jsonl,weight:0}]", [], ["dataset[1].weight = 0", "finite number > 0"]),
        ("[{path:a.jsonl,weight:-1}]", [], ["dataset[0].weight = -1", "> 0"]),
        ("[{path:a.jsonl,weight:lots}]", [], ["dataset[0].weight = 'lots' is not a number"]),
        ("[{path:a.jsonl,wieght:1}]", [], ["dataset[0].wieght is not a source key", "Did you mean 'weight'?",
                                          "path:", "split:", "columns:"]),
        ("[]", [], ["dataset = [] is an empty list", "{path: FILE, weight: W}"]),
        ("[a.jsonl,b.jsonl]", ["dataset_mix=zip"], ["dataset_mix = 'zip' is not allowed",
                                                    "concat, interleave_under, interleave_over"]),
        ("[{path:a.jsonl,weight:1},{path:b.jsonl,weight:2}]", ["dataset_mix=concat"],
         ["dataset_mix=concat", "weights", "interleave_under"]),
    ],
)
def test_dataset_list_mistakes_name_the_key(kitchen, tmp_path, dataset, extra, needles):
    """A bad dataset list is one paragraph naming dataset[i].key, in run and validate alike."""
    for command in ("validate", "run"):
        r = kitchen(command, *NOOP, f"dataset={dataset}", *extra, f"run_dir={tmp_path / 'x'}")
        assert_user_error(r, *needles)
        assert len(r.err.strip().splitlines()) == 1, r
    assert not (tmp_path / "x" / "run.json").exists()


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["loss=simpo", "dpo_loss=ipo"], ["dpo_loss=ipo has no effect with loss=simpo", "loss=dpo"]),
        (["simpo_gamma=1.0"], ["simpo_gamma=1.0 has no effect with loss=dpo", "loss=simpo"]),
        (["loss=orpo", "dpo_beta=0.3"], ["dpo_beta=0.3 has no effect with loss=orpo", "loss=dpo or loss=simpo"]),
        (["dpo_loss=hinge", "label_smoothing=0.1"], ["label_smoothing=0.1 has no effect with dpo_loss=hinge", "robust"]),
        (["label_smoothing=0.5"], ["label_smoothing", "less than 0.5"]),
        (["dpo_loss=nope"], ["dpo_loss", "'sigmoid', 'ipo', 'hinge' or 'robust'"]),
        (["loss=kto"], ["'loss' = 'kto'", "'dpo', 'simpo' or 'orpo'"]),
    ],
)
def test_preference_family_keys_that_do_not_apply(kitchen, tmp_path, overrides, needles):
    r = kitchen("run", *NOOP, "recipe=dpo_basic", *overrides, f"run_dir={tmp_path / 'x'}")
    assert_user_error(r, *needles)
    assert len(r.err.strip().splitlines()) == 1  # one paragraph
    assert not (tmp_path / "x" / "run.json").exists()
