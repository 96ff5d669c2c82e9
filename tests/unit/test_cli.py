"""Bad input to `headguard lab build` fails fast with one line, exit 2, and writes nothing."""

import pytest

from tests.conftest import run_cli

GOOD = ["lab", "build", "--base", "minilm", "--dataset", "movies", "--attack", "badnets"]


def swap(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize(
    "args, message",
    [
        (swap(GOOD, "--base", "gpt5"), "invalid choice"),
        (swap(GOOD, "--dataset", "imdb"), "invalid choice"),
        (swap(GOOD, "--attack", "magic"), "invalid choice"),
        (GOOD + ["--poison-rate", "0"], "poison-rate"),
        (GOOD + ["--poison-rate", "0.6"], "poison-rate"),
        (GOOD + ["--poison-rate", "abc"], "invalid float"),
        (GOOD + ["--target", "neutral"], "not a label"),
        (swap(GOOD, "--attack", "composite") + ["--trigger", "one"], "at least two"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "model"
    proc = run_cli(*args, "--out", str(out), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli(*GOOD, "--out", str(blocker / "model"), check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot write" in proc.stderr
    assert blocker.read_text() == "not a folder"


def test_existing_out_needs_force(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli(*GOOD, "--out", str(out), check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_eval_refuses_a_folder_that_is_not_a_lab_model(tmp_path):
    proc = run_cli("lab", "eval", "--model", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not a lab model" in proc.stderr


@pytest.mark.parametrize("extra, message", [
    (["--defense", "headguard", "--families", "toward,bogus"], "unknown feature families ['bogus']"),
    (["--defense", "strip", "--top-k", "2"], "headguard's"),
])
def test_eval_refuses_scoring_settings_it_cannot_use(tmp_path, extra, message):
    proc = run_cli("lab", "eval", "--model", str(tmp_path), *extra, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_terminated_build_leaves_nothing_behind(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "model"
    cli = Path(sys.executable).with_name("headguard")
    proc = subprocess.Popen([str(cli), *GOOD, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".model.partial-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(tmp_path.glob(".model.partial-*")), "the build never started writing"
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert list(tmp_path.iterdir()) == []
