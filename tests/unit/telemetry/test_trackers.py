"""Tracker sinks (issue 10): W&B, TensorBoard, MLflow and Prometheus on real runs, read back with their own readers.

One `kitchen run` on the noop backend with every tracker on (W&B offline, MLflow on a local
sqlite store) is shared by the read-back tests; each tracker's records are read with that
tracker's own reader: `wandb leet inspect --json`, tensorboard's EventAccumulator,
MlflowClient, prometheus_client's text parser over a loopback scrape.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from conftest import assert_completed, run_kitchen
from kitchen.errors import ConfigError
from kitchen.telemetry.events import EventBus
from kitchen.telemetry.sinks import BUILTIN_SINKS, SinkContext, build_sinks, resolve_sinks

STEPS = 12
SECRET_TINKER = "tml-this-key-must-not-leak-1234"
SECRET_WANDB = "wandb-api-key-must-not-leak-5678"
ALL = "telemetry.sinks=[jsonl,wandb,tensorboard,mlflow,prometheus]"


def tracker_env(tmp: Path) -> dict[str, str]:
    return {
        "WANDB_MODE": "offline", "WANDB_API_KEY": SECRET_WANDB, "WANDB_SILENT": "true",
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"), "WANDB_ARTIFACT_DIR": str(tmp / "wandb-artifacts"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "TINKER_API_KEY": SECRET_TINKER,
    }


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A completed 12-step noop run with every tracker on, then resumed to 16 steps."""
    tmp = tmp_path_factory.mktemp("trackers")
    run_dir = tmp / "run"
    env = tracker_env(tmp)
    r = run_kitchen("run", "recipe=sl_basic", "adapters=noop", f"max_steps={STEPS}", "eval_every=6", "save_every=6",
                    f"run_dir={run_dir}", ALL, cwd=tmp, env=env)
    assert r.code == 0, r
    first_info = json.loads((run_dir / "run.json").read_text())
    return tmp, run_dir, env, first_info, r


def wandb_records(run_path: Path) -> list[dict]:
    """The offline run's transaction log, decoded by wandb's own reader."""
    exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(exe), "leet", "inspect", str(run_path), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_has_config_steps_evals_samples_and_weights(tracked):
    tmp, run_dir, env, info, _ = tracked
    wb = info["trackers"]["wandb"]
    runs = list((run_dir / "wandb").glob(f"offline-run-*-{wb['id']}"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    recs = wandb_records(runs[0])
    run = next(r["run"] for r in recs if r["type"] == "run")
    assert run["run_id"] == wb["id"] and run["display_name"] == wb["name"] == "run"
    config = run["config"]["update"]
    assert config["learning_rate"] > 0 and config["adapters"]["name"] == "noop" and config["git_sha"] == info["git_sha"]
    assert "recipe:sl_basic" in run.get("tags", [])
    history = [r["history"]["item"] for r in recs if r["type"] == "history"]
    losses = {h["step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert sorted(losses) == list(range(1, STEPS + 1))
    metrics = {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in row}
    assert losses[STEPS] == pytest.approx(metrics[STEPS]["loss"])
    evals = {h["step"]: h["eval/test_nll"] for h in history if "eval/test_nll" in h}
    assert sorted(evals) == [0, 6, 12]
    samples = [h for h in history if h.get("samples._type") == "table-file"]
    assert samples and samples[-1]["samples.nrows"] == 4  # 2 before + 2 after
    table = json.loads(next(runs[0].glob("files/media/table/samples_*.table.json")).read_text())
    assert table["columns"] == ["step", "tag", "prompt", "completion", "reward"]
    assert {row[1] for row in table["data"]} == {"before", "after"}
    arts = [r["artifact"] for r in recs if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert len(arts) == 1
    refs = [c.get("ref") for c in arts[0]["manifest"]["contents"]]
    assert refs and all(ref.startswith((run_dir / "final").resolve().as_uri()) for ref in refs)


def test_the_trackers_own_variables_decide_where_and_what(tmp_path):
    """W&B's and MLflow's conventions: WANDB_DIR decides where the offline run is written (not the
    run dir), WANDB_PROJECT / NAME / RUN_GROUP / TAGS / JOB_TYPE what it is called, and
    MLFLOW_EXPERIMENT_NAME which experiment the MLflow run joins; each read back by its own library."""
    from mlflow.tracking import MlflowClient

    run_dir, wandb_dir = tmp_path / "run", tmp_path / "elsewhere"
    env = {**tracker_env(tmp_path), "WANDB_DIR": str(wandb_dir), "WANDB_PROJECT": "pasta", "WANDB_NAME": "salted",
           "WANDB_RUN_GROUP": "ablation-3", "WANDB_TAGS": "night,cpu", "WANDB_JOB_TYPE": "sft",
           "MLFLOW_EXPERIMENT_NAME": "team-pasta"}
    r = run_kitchen("run", "recipe=sl_basic", "adapters=noop", "max_steps=3", f"run_dir={run_dir}",
                    "telemetry.sinks=[jsonl,wandb,mlflow]", cwd=tmp_path, env=env)
    assert r.code == 0, r
    info = json.loads((run_dir / "run.json").read_text())
    wb = info["trackers"]["wandb"]
    assert (wb["project"], wb["name"]) == ("pasta", "salted")
    runs = list((wandb_dir / "wandb").glob(f"offline-run-*-{wb['id']}"))
    assert len(runs) == 1 and not (run_dir / "wandb").exists(), list(wandb_dir.rglob("*"))[:10]
    recs = wandb_records(runs[0])
    run = next(rec["run"] for rec in recs if rec["type"] == "run")
    assert run["project"] == "pasta" and run["display_name"] == "salted" and run["run_group"] == "ablation-3"
    assert run["job_type"] == "sft" and {"night", "cpu", "recipe:sl_basic"} <= set(run.get("tags", []))
    steps = [rec for rec in recs if "train/loss" in json.dumps(rec)]
    assert steps, "the run's steps are in the W&B run under WANDB_DIR"
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    ml = client.get_run(info["trackers"]["mlflow"]["run_id"])
    assert client.get_experiment(ml.info.experiment_id).name == "team-pasta"


def test_tensorboard_scalars_evals_text_and_hparams(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, run_dir, _, info, _ = tracked
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, STEPS + 1))
    assert loss[-1].value == pytest.approx(info["final_metrics"]["loss"], rel=1e-5)
    assert [e.step for e in acc.Scalars("eval/test_nll")] == [0, 6, 12]
    assert "train/lr" in tags["scalars"]
    text = [t for t in tags["tensors"] if t.startswith("samples/")]
    assert {t.split("/")[1] for t in text} == {"before", "after"}
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["learning_rate"].number_value > 0
    assert session.hparams["recipe"].string_value == "sl_basic"


def test_mlflow_params_metrics_tags_and_artifacts(tracked):
    from mlflow.tracking import MlflowClient

    tmp, run_dir, env, info, _ = tracked
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run = client.get_run(info["trackers"]["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert float(run.data.params["learning_rate"]) > 0 and run.data.params["adapters.name"] == "noop"
    assert run.data.tags["recipe"] == "sl_basic" and run.data.tags["workflow"] == "supervised"
    assert run.data.tags["backend"] == "noop" and run.data.tags.get("git_sha") == info["git_sha"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert [m.step for m in sorted(client.get_metric_history(run.info.run_id, "test_nll"), key=lambda m: m.step)] == [0, 6, 12]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "run.json"} <= names


def test_tracker_runs_stay_the_same_on_resume(tracked):
    tmp, run_dir, env, first, _ = tracked
    r = run_kitchen("resume", str(run_dir), f"max_steps={STEPS + 4}", cwd=tmp, env=env)
    assert r.code == 0, r
    info = assert_completed(run_dir, STEPS + 4)
    assert info["trackers"]["wandb"]["id"] == first["trackers"]["wandb"]["id"]
    assert info["trackers"]["mlflow"]["run_id"] == first["trackers"]["mlflow"]["run_id"]
    wb_id = first["trackers"]["wandb"]["id"]
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{wb_id}"))) == 2  # same W&B run id, second session
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    steps = {m.step for m in client.get_metric_history(first["trackers"]["mlflow"]["run_id"], "loss")}
    assert steps == set(range(1, STEPS + 5))  # one MLflow run holds both sessions
    assert len(client.search_runs([client.get_experiment_by_name("kitchen").experiment_id])) == 1


def test_api_keys_never_reach_the_run_dir_or_the_trackers(tracked):
    tmp, run_dir, env, _, r = tracked
    hits = []
    for path in [*run_dir.rglob("*"), tmp / "mlflow.db"]:
        if path.is_file():
            data = path.read_bytes()
            if SECRET_TINKER.encode() in data or SECRET_WANDB.encode() in data:
                hits.append(path)
    assert hits == []
    assert SECRET_WANDB not in r.text and SECRET_TINKER not in r.text


# ------------------------------------------------------------------ prometheus, user sinks


SCRAPER = '''
import json, urllib.request
from pathlib import Path

class Scraper:
    """A user's own sink: scrapes the live Prometheus endpoint once, mid-run."""
    def __init__(self, run, at_step=5):
        self.run, self.at_step, self.done = run, at_step, False
    def handle(self, event):
        if event.name == "training.step" and event.data["step"] == self.at_step and not self.done:
            url = self.run.trackers["prometheus"]["url"]
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            Path(self.run.run_dir, "scrape.txt").write_text(text)
            self.done = True
    def close(self):
        pass
'''


def test_prometheus_is_scraped_live_by_a_users_own_sink(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    (tmp_path / "my_sinks.py").write_text(textwrap.dedent(SCRAPER))
    run_dir = tmp_path / "run"
    r = run_kitchen("run", "recipe=sl_basic", "adapters=noop", "max_steps=8", f"run_dir={run_dir}",
                    "telemetry.sinks=[jsonl,prometheus,{_target_: my_sinks.Scraper, at_step: 5}]",
                    env={"PYTHONPATH": str(tmp_path)})
    assert r.code == 0, r
    families = {f.name: f for f in text_string_to_metric_families((run_dir / "scrape.txt").read_text())}
    value = {f: families[f].samples[0].value for f in ("kitchen_step", "kitchen_loss", "kitchen_learning_rate", "kitchen_tokens_per_second")}
    assert value["kitchen_step"] == 5 and value["kitchen_loss"] > 0 and value["kitchen_learning_rate"] > 0
    assert families["kitchen_steps"].samples[0].value == 5  # counter: kitchen_steps_total
    evals = {s.labels["metric"]: s.value for s in families["kitchen_eval"].samples}
    assert "test_nll" in evals  # the eval before training
    stage = [s for s in families["kitchen_stage_duration_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["stage"] for s in stage} >= {"load_model"} or stage
    info = json.loads((run_dir / "run.json").read_text())
    assert info["trackers"]["prometheus"]["url"].startswith("http://127.0.0.1:")


def emit_steps(bus: EventBus, steps: int = 10) -> None:
    bus.emit("workflow.start", workflow="supervised", recipe="t", run_dir="x", total_steps=steps)
    bus.emit("stage.stop", stage="load_model", path="load_model", step=0, duration_s=0.25)
    for step in range(1, steps + 1):
        bus.emit("training.step", step=step, total_steps=steps, loss=1.0 / step, lr=1e-4, tokens=100, tokens_per_s=50.0,
                 reward_mean=0.5)
        if step % 5 == 0:
            bus.emit("eval.result", step=step, split="test", metrics={"test_nll": 2.0 / step})
    bus.emit("sample.completion", tag="after", step=steps, prompt="p", completion="c")
    bus.emit("workflow.stop", status="completed", step=steps, duration_s=1.0, final_metrics={"loss": 0.1})


def test_prometheus_series_over_loopback(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    run = SinkContext(run_dir=tmp_path, recipe="t", workflow="supervised", backend="noop")
    bus = EventBus()
    (sink,) = build_sinks(["prometheus"], run)
    bus.subscribe(sink)
    emit_steps(bus, 10)
    text = urllib.request.urlopen(run.trackers["prometheus"]["url"], timeout=10).read().decode()
    bus.close()
    fam = {f.name: f for f in text_string_to_metric_families(text)}
    assert fam["kitchen_step"].samples[0].value == 10
    assert fam["kitchen_tokens"].samples[0].value == 1000
    assert {s.labels["name"]: s.value for s in fam["kitchen_metric"].samples}["reward_mean"] == 0.5
    assert {s.labels["metric"]: s.value for s in fam["kitchen_eval"].samples}["test_nll"] == pytest.approx(0.2)
    hist = {s.name: s.value for s in fam["kitchen_stage_duration_seconds"].samples if s.labels.get("stage") == "load_model"}
    assert hist["kitchen_stage_duration_seconds_count"] == 1 and hist["kitchen_stage_duration_seconds_sum"] == 0.25
    assert [s.value for s in fam["kitchen_up"].samples] == [0]  # the run has stopped
    with pytest.raises(OSError):  # closed with the run
        urllib.request.urlopen(run.trackers["prometheus"]["url"], timeout=2)


# ------------------------------------------------------------- a tracker failing mid-run


def _break(name: str, sink, monkeypatch) -> None:
    """Make the tracker's own SDK call fail mid-run, as a network error or a quota would.

    MLflow gets the queued steps in one ``log_batch``, so its first metrics call fails; the
    others fail on their fourth call.
    """
    calls = {"n": 0}
    after = 1 if name == "mlflow" else 4

    def failing(original):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] >= after:
                raise ConnectionError("HTTP 429: tracker quota exceeded")
            return original(*args, **kwargs)
        return call

    if name == "wandb":
        import wandb  # the package first: importing its wandb_run submodule alone is a circular import

        wandb_run = wandb.sdk.wandb_run

        monkeypatch.setattr(wandb_run.Run, "log", failing(wandb_run.Run.log))
    elif name == "mlflow":
        monkeypatch.setattr(sink.client, "log_batch", failing(sink.client.log_batch))
    elif name == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        monkeypatch.setattr(SummaryWriter, "add_scalar", failing(SummaryWriter.add_scalar))
    elif name == "prometheus":  # steps are read at scrape time; evals update prometheus_client gauges
        monkeypatch.setattr(sink.eval, "labels", failing(sink.eval.labels))


@pytest.mark.parametrize("name", ["wandb", "mlflow", "tensorboard", "prometheus"])
def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(name, tmp_path, monkeypatch, caplog):
    from kitchen.telemetry.jsonl import JsonlSink

    for key, value in tracker_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    run = SinkContext(run_dir=tmp_path, config={"learning_rate": 1e-4}, recipe="t", workflow="supervised", backend="noop")
    (sink,) = build_sinks([name], run)
    _break(name, sink, monkeypatch)
    bus = EventBus()
    bus.subscribe(sink)
    bus.subscribe(JsonlSink(tmp_path))
    with caplog.at_level(logging.WARNING, logger="kitchen.telemetry"):
        bus.emit("workflow.start", workflow="supervised", total_steps=40)
        for step in range(1, 41):
            bus.emit("training.step", step=step, total_steps=40, loss=1.0, lr=1e-4)
            if step % 5 == 0:
                bus.emit("eval.result", step=step, split="test", metrics={"test_nll": 1.0})
        bus.emit("workflow.stop", status="completed", step=40)
        bus.close()
    warnings = [r for r in caplog.records if "failed and was dropped" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "quota exceeded" in warnings[0].getMessage()
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 48  # 40 steps + 8 evals: the run (and the other sinks) went on


# ---------------------------------------------------------------------------- bad input


def test_unknown_sink_lists_the_sinks_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    r = run_kitchen("run", "recipe=sl_basic", "adapters=noop", f"run_dir={run_dir}", "telemetry.sinks=[console,wandbb]")
    assert r.code == 2, r
    assert "unknown sink 'wandbb'" in r.err and "Did you mean 'wandb'?" in r.err
    for name in BUILTIN_SINKS:
        assert name in r.err
    assert "Traceback" not in r.text and not list(run_dir.glob("*"))  # Hydra may make the folder; nothing is written


def test_validate_checks_sinks_like_run_does(tmp_path):
    r = run_kitchen("validate", "recipe=sl_basic", "adapters=noop", f"run_dir={tmp_path / 'run'}", "telemetry.sinks=[jsonl,tensorbord]")
    assert r.code == 2 and "Did you mean 'tensorboard'?" in r.err, r


def test_missing_tracker_package_names_the_extra_before_the_run_starts(tmp_path):
    run_dir = tmp_path / "run"
    code = ("import sys; sys.modules['wandb'] = None; sys.argv = ['kitchen'] + sys.argv[1:]; "
            "from kitchen.cli.commands import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "run", "recipe=sl_basic", "adapters=noop", f"run_dir={run_dir}",
                           "telemetry.sinks=[console,wandb]"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'crucible-kitchen[wandb]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(run_dir.glob("*"))


def test_sink_entries_shapes():
    resolved = resolve_sinks(["console", {"mlflow": {"experiment": "x"}}, {"_target_": "my.Sink", "a": 1}])
    assert [r.node["_target_"] for r in resolved] == [BUILTIN_SINKS["console"].target, BUILTIN_SINKS["mlflow"].target, "my.Sink"]
    assert resolved[1].node["experiment"] == "x" and resolved[2].node["a"] == 1
    with pytest.raises(ConfigError, match="telemetry.sinks\\[0\\]"):
        resolve_sinks([42])
    with pytest.raises(ConfigError, match="Could not import sink no_such_module"):
        build_sinks([{"_target_": "no_such_module.Sink"}], SinkContext(run_dir=Path(".")))
