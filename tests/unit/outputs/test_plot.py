"""`kitchen plot` (issue 10): PNG curves per run, sweep overlays labelled by swept values, terminal charts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import run_kitchen


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    r = run_kitchen("run", "-m", "recipe=sl_basic", "adapters=noop", "telemetry=jsonl", "max_steps=8", "eval_every=4",
                    "num_preview_samples=0", "learning_rate=1e-4,1e-3", f"hydra.sweep.dir={root / 'sweep'}")
    assert r.code == 0, r
    return root / "sweep"


def test_png_overlays_a_sweep_labelled_by_swept_values(sweep, tmp_path):
    import matplotlib.image

    from kitchen.outputs.plot import find_runs, label_runs, load

    out = tmp_path / "curves.png"
    r = run_kitchen("plot", str(sweep), "--metrics", "loss,test_nll", "--out", str(out))
    assert r.code == 0, r
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[1] > image.shape[0] > 200  # two panels side by side
    runs = [load(p) for p in find_runs([sweep])]
    label_runs(runs)
    assert sorted(r.label for r in runs) == ["learning_rate=0.0001", "learning_rate=0.001"]
    assert sorted(runs[0].series["loss"]) == list(range(1, 9)) and sorted(runs[0].series["test_nll"]) == [0, 4, 8]


def test_terminal_chart_without_out(sweep):
    r = run_kitchen("plot", str(sweep / "0"), str(sweep / "1"))
    assert r.code == 0, r
    assert "loss" in r.out and "test_nll" in r.out  # default: loss and every eval metric
    assert "• learning_rate=0.0001: " in r.out and "× learning_rate=0.001: " in r.out
    assert "step 1" in r.out and "step 8" in r.out


def test_plot_bad_input_is_one_paragraph(sweep, tmp_path):
    r = run_kitchen("plot", str(tmp_path / "nope"))
    assert r.code == 2 and "does not exist" in r.err and "Traceback" not in r.text
    r = run_kitchen("plot", str(sweep), "--metrics", "test_nl")
    assert r.code == 2 and "Did you mean 'test_nll'?" in r.err and "loss" in r.err


def test_plot_does_not_import_torch(sweep):
    code = ("import sys; from kitchen.outputs.plot import plot; plot([sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name, says", [("curves.txt", "must end in .png"), ("curves", "must end in .png")])
def test_out_must_name_a_png(sweep, tmp_path, name, says):
    r = run_kitchen("plot", str(sweep / "0"), "--out", str(tmp_path / name))
    assert r.code == 2, r
    assert says in r.err and "--out" in r.err and "Traceback" not in r.err
    assert list(tmp_path.iterdir()) == []  # neither the named file nor a .png beside it


def test_out_refuses_a_directory_and_an_existing_file_unless_forced(sweep, tmp_path):
    folder = tmp_path / "plots.png"
    folder.mkdir()
    r = run_kitchen("plot", str(sweep / "0"), "--out", str(folder))
    assert r.code == 2 and "is a directory" in r.err, r
    out = tmp_path / "curves.png"
    out.write_bytes(b"keep me")
    r = run_kitchen("plot", str(sweep / "0"), "--out", str(out))
    assert r.code == 2 and "--force" in r.err, r
    assert out.read_bytes() == b"keep me"
    r = run_kitchen("plot", str(sweep / "0"), "--out", str(out), "--force")
    assert r.code == 0, r
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in r.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "plots.png"]
