"""Nothing lost, nothing run: locked run folders, safe overwrite, safe and falling-back resume, owned
export folders, one-line errors naming the plugin that failed.

The command-line cases run the real ``xt`` in a subprocess (through the test driver that registers
the tiny Llama) and share one small trained run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import DATASET, MODEL, driver_env, make_model_dir  # noqa: E402
from xt import hookimpl  # noqa: E402

pytestmark = pytest.mark.slow

TRAIN = ["train", "--model", MODEL, "--dataset", DATASET, "--method", "full", "--set", "max_length=48",
         "--set", "micro_batch_size=2", "--set", "lr=3e-3", "--set", "warmup_steps=1", "--set", "zero_stage=2"]

DRIVER = """\
import sys
sys.path.insert(0, {tests!r})
from test_train_support import register_test_plugin
from test_run_safety import register_broken_plugin
register_test_plugin({model_dir!r})
register_broken_plugin()
from xt.cli import main
sys.argv[0] = __file__
main()
"""


class BrokenPlugin:
    """An exporter that fails, one that writes nothing, and one that records the options it got."""

    @staticmethod
    def boom(run_dir, out_dir, **options):
        raise ZeroDivisionError("division by zero in the test exporter")

    @staticmethod
    def idle(run_dir, out_dir, **options):
        return None

    @staticmethod
    def record(run_dir, out_dir, **options):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "options.json").write_text(json.dumps(options))
        return out_dir

    @hookimpl
    def exporter(self, register):
        from xt.specs import ExporterSpec

        for name in ("boom", "idle", "record"):
            register(ExporterSpec(name=name, export=getattr(self, name)))


def register_broken_plugin() -> None:
    from xt.plugins import get_plugin_manager

    get_plugin_manager().register(BrokenPlugin(), name="xt-test-broken")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(folder, command prefix, environment, a finished run with checkpoints step-2 and step-4)."""
    folder = tmp_path_factory.mktemp("safety")
    model_dir = make_model_dir(folder / "tiny-llama")
    driver = folder / "xt_driver.py"
    driver.write_text(DRIVER.format(tests=str(Path(__file__).resolve().parent), model_dir=str(model_dir)))
    xt = [sys.executable, str(driver)]
    env = driver_env(folder / "cache")
    run = folder / "run"
    done = subprocess.run([*xt, *TRAIN, "--set", "max_steps=4", "--set", "save_steps=2", "--set", "save_total_limit=3",
                           "--output", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, xt, env, run


def checksums(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder`` (the lock file aside: taking it rewrites it)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".xt-lock"}


def xt_run(xt, env, *args, cwd=None, timeout=600):
    return subprocess.run([*xt, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr[-2000:]


class Payload:
    """Unpickling this calls ``open(marker, 'w')``: the file appears if the pickle is executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_resume_refuses_a_planted_pickle_payload_without_running_it(work, tmp_path):
    import torch

    _, xt, env, run = work
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    states = copy / "checkpoints" / "step-4" / "mp_rank_00_model_states.pt"
    data = torch.load(states, weights_only=True)
    marker = tmp_path / "payload-ran"
    data["payload"] = Payload(marker)
    torch.save(data, states)
    before = checksums(copy)

    result = xt_run(xt, env, "train", "--resume", copy)
    assert_one_line_error(result, "could run code", "step-4")
    assert not marker.exists()
    assert checksums(copy) == before


def test_resume_skips_a_truncated_latest_checkpoint_and_matches_bitwise(work, tmp_path):
    from safetensors.torch import load_file

    _, xt, env, run = work
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "final")
    states = copy / "checkpoints" / "step-4" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])

    result = xt_run(xt, env, "train", "--resume", copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step-4 is unusable" in result.stderr and "resuming from step-2 instead" in result.stderr
    a, b = load_file(str(run / "final" / "model.safetensors")), load_file(str(copy / "final" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch_equal(a[k], b[k]) for k in a)  # bitwise


def torch_equal(x, y) -> bool:
    import torch

    return x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize(("damage", "expected"), [
    ("empty-model", "mp_rank_00_model_states.pt is truncated"),
    ("garbage-state", "xt_state.json is unreadable"),
    ("no-rng", "xt_rng_rank0.pt (the random-number states) is missing"),
    ("flipped-byte", "mp_rank_00_model_states.pt is"),
])
def test_unusable_checkpoints_are_named_and_skipped(work, tmp_path, damage, expected):
    from xt.errors import XtError
    from xt.train.checkpoint import latest_checkpoint

    _, _, _, run = work
    root = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", root)
    step4 = root / "step-4"
    states = step4 / "mp_rank_00_model_states.pt"
    if damage == "empty-model":
        states.write_bytes(b"")
    elif damage == "garbage-state":
        (step4 / "xt_state.json").write_text('{"step": 4, "sampl')
    elif damage == "no-rng":
        (step4 / "xt_rng_rank0.pt").unlink()
    else:
        raw = bytearray(states.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        states.write_bytes(bytes(raw))
    assert latest_checkpoint(root) == root / "step-2"
    shutil.rmtree(root / "step-2")
    with pytest.raises(XtError, match="No usable checkpoint") as caught:
        latest_checkpoint(root)
    assert expected in str(caught.value)


@pytest.mark.parametrize(("setting", "needle"), [
    ("collator=nope", "Unknown collator 'nope'"),
    ("micro_batch_size=1000", "fewer than one optimizer step"),
    ("deepspeed_config=missing-ds.json", "missing-ds.json"),
    ("lr=nan", "lr must be a finite number"),
    ("epochs=inf", "epochs must be a finite number"),
])
def test_invalid_overwrite_keeps_the_old_run(work, setting, needle, monkeypatch):
    """In-process (the subprocess cases above and below cover the command line's one-line output)."""
    from click.testing import CliRunner
    from test_train_support import register_test_plugin
    from xt.cli import cli

    folder, xt, env, run = work
    monkeypatch.setenv("XT_CACHE_DIR", env["XT_CACHE_DIR"])
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # as a fresh process sees it
        monkeypatch.delenv(key, raising=False)
    register_test_plugin(folder / "tiny-llama")
    before = checksums(run)
    result = CliRunner().invoke(cli, [*TRAIN, "--set", setting, "--output", str(run), "--overwrite"])
    assert result.exit_code == 2 and needle in result.output, result.output[-2000:]
    assert "Traceback" not in result.output
    assert checksums(run) == before
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".run.")]  # no half-made sibling


def test_a_running_run_refuses_a_second_train_and_is_marked_failed_when_stopped(work):
    from xt.run import RunLock

    folder, xt, env, _ = work
    live = folder / "live"
    log = (folder / "live.log").open("w")
    first = subprocess.Popen([*xt, *TRAIN, "--set", "max_steps=100000", "--set", "save_steps=1", "--output", str(live)],
                             env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 300
        while not (live / "checkpoints" / "latest").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, (folder / "live.log").read_text()[-3000:]
        before = json.loads((live / "run.json").read_text())
        second = xt_run(xt, env, *TRAIN, "--set", "max_steps=2", "--output", live, "--overwrite")
        assert_one_line_error(second, "is in use by 'xt train'", f"pid {first.pid}")
        resumed = xt_run(xt, env, "train", "--resume", live)
        assert_one_line_error(resumed, "is in use by 'xt train'")
        assert first.poll() is None and json.loads((live / "run.json").read_text()) == before
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    log.close()
    assert first.returncode != 0
    info = json.loads((live / "run.json").read_text())
    assert info["status"] == "failed" and "SIGTERM" in info["extra"]["error"]
    RunLock(live, "test").release()  # the dead process's lock is stale: taken over at once


def test_export_owns_its_out_folder(work, tmp_path):
    folder, xt, env, run = work
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("keep me")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me too")
    before = {p: checksums(p) for p in (here, foreign, run)}
    for out, needle in ((".", "would replace"), (run.parent, "would replace"), (run, "would replace"),
                        (foreign, "was not written by 'xt export'")):
        result = xt_run(xt, env, "export", run, "--to", "hf", "--out", out, "--overwrite", cwd=here)
        assert_one_line_error(result, needle)
    assert {p: checksums(p) for p in (here, foreign, run)} == before

    out = tmp_path / "hf"
    for _ in range(2):  # the second replaces the first: a previous xt export
        done = xt_run(xt, env, "export", run, "--to", "hf", "--out", out, "--overwrite")
        assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and oct(out.stat().st_mode & 0o777) != "0o700"


def test_plugin_failures_name_the_plugin_and_set_values_parse_alike(work, tmp_path):
    _, xt, env, run = work
    boom = xt_run(xt, env, "export", run, "--to", "boom", "--out", tmp_path / "a")
    assert_one_line_error(boom, "exporter 'boom' (plugin xt-test-broken)", "ZeroDivisionError")
    debug = xt_run(xt, env, "--debug", "export", run, "--to", "boom", "--out", tmp_path / "a")
    assert debug.returncode != 0 and "Traceback" in debug.stderr

    idle = xt_run(xt, env, "export", run, "--to", "idle", "--out", tmp_path / "b")
    assert_one_line_error(idle, "returned without writing")
    assert "Exported" not in idle.stdout

    record = xt_run(xt, env, "export", run, "--to", "record", "--out", tmp_path / "c", "--set", "n=3",
                    "--set", "flag=true", "--set", "rate=1e-4", "--set", "name=bf16")
    assert record.returncode == 0, record.stderr[-2000:]
    assert json.loads((tmp_path / "c" / "options.json").read_text()) == {"n": 3, "flag": True, "rate": 1e-4,
                                                                          "name": "bf16"}


@pytest.mark.parametrize(("args", "needle"), [
    ([*TRAIN, "--output", "{file}"], "is a file"),
    ([*TRAIN, "--nproc", "0"], "--nproc must be at least 1, got 0"),
    ([*TRAIN, "--model-path", "{folder}/missing"], "is not a folder"),
    (["train", "--resume", "{run}", "--set", "lr=0.5"], "lr (0.003 in the run, 0.5 now)"),
    (["data", "preview", "--model", MODEL, "--dataset", DATASET, "-n", "-1"], "Invalid value for '-n'"),
    ([*TRAIN, "--set", "lr=nan", "--output", "{run}", "--overwrite"], "lr must be a finite number, got nan"),
    (["chat", "{folder}/garbage", "--prompt", "hi"], "SafetensorError"),
])
def test_bad_command_lines_are_one_line_errors(work, args, needle):
    folder, xt, env, run = work
    a_file = folder / "a-file.txt"
    a_file.write_text("not a folder")
    if not (folder / "garbage").exists():  # a model folder whose weights file is garbage
        shutil.copytree(run / "final", folder / "garbage")
        (folder / "garbage" / "model.safetensors").write_bytes(b"\x07" * 4096)
    before = {p: checksums(p) for p in (run,)}, a_file.read_bytes()
    result = xt_run(xt, env, *(a.format(file=a_file, folder=folder, run=run) for a in args))
    assert_one_line_error(result, needle)
    assert ({p: checksums(p) for p in (run,)}, a_file.read_bytes()) == before


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def _rank_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"RANK=")), None)


def signal_rank_one(xt: list[str], env: dict[str, str], out: Path, log_path: Path, sig: int,
                    collective_timeout: int) -> tuple[int, float]:
    """Start a two-process run into ``out`` (stderr to ``log_path``), send ``sig`` to rank 1 once it trains,
    and wait for the launcher: (its exit code, seconds from the signal to its end). Nothing is left running."""
    from contextlib import suppress

    with log_path.open("w") as log:
        launcher = subprocess.Popen([*xt, *TRAIN, "--nproc", "2", "--set", "max_steps=100000", "--set", "save_steps=0",
                                     "--set", "save_total_limit=0", "--output", str(out)],
                                    env={**env, "XT_COLLECTIVE_TIMEOUT": str(collective_timeout)},
                                    stdout=subprocess.DEVNULL, stderr=log)
        rank1 = None
        try:
            deadline = time.time() + 300
            while not (out / "metrics.jsonl").is_file() and launcher.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert launcher.poll() is None, log_path.read_text()[-3000:]
            workers = [p for c in _children(launcher.pid) for p in _children(c)]
            rank1 = next(p for p in workers if _rank_of(p) == "1")
            os.kill(rank1, sig)
            signalled = time.time()
            launcher.wait(timeout=180)
            return launcher.returncode, time.time() - signalled
        finally:
            if launcher.poll() is None:
                launcher.kill()
            if rank1 is not None:
                with suppress(ProcessLookupError):
                    os.kill(rank1, signal.SIGKILL)


def test_a_killed_rank_ends_a_two_process_run_with_one_line(work):
    folder, xt, env, _ = work
    out, log_path = folder / "two", folder / "two.log"
    returncode, _ = signal_rank_one(xt, env, out, log_path, signal.SIGKILL, collective_timeout=60)
    stderr = log_path.read_text()
    assert returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "process rank 1 stopped first (exit code -9)" in stderr, stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed"  # rank 0 was ended by the launcher and said why
