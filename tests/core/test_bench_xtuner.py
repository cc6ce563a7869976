"""bench/data.py's XTuner baseline without XTuner installed: argument handling, the JSON line that
bench/xtuner_build.py writes and bench/data.py reads, and one clear sentence when XTuner cannot run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
VERSIONS = {"python": "3.11.7", "xtuner": "0.2.0", "transformers": "4.48.0", "tokenizers": "0.21.4",
            "datasets": "4.8.5", "torch": "2.13.0+cpu"}


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def scripts(monkeypatch):
    """bench/data.py and bench/xtuner_build.py as modules; sys.path and sys.modules restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    data = load("data")
    monkeypatch.setitem(sys.modules, "data", data)
    return data, load("xtuner_build")


def run(script: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *options], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def one_sentence(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def rows_file(tmp_path) -> Path:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]))
    return path


def test_xtuner_build_says_xtuner_is_not_importable(rows_file, tmp_path):
    if importlib.util.find_spec("xtuner") is not None:
        pytest.skip("xtuner is installed in this environment")
    message = one_sentence(run("xtuner_build.py", "--rows", str(rows_file), "--tokenizer", str(tmp_path)))
    assert "xtuner is not importable" in message and "make bench-xtuner" in message
    assert "xtuner is not importable" in one_sentence(run("xtuner_build.py", "--versions"))


def test_xtuner_build_checks_its_arguments_first(rows_file, tmp_path):
    missing = tmp_path / "nope.json"
    assert f"rows file {missing} not found" in one_sentence(
        run("xtuner_build.py", "--rows", str(missing), "--tokenizer", str(tmp_path)))
    assert f"tokenizer folder {tmp_path / 'none'} not found" in one_sentence(
        run("xtuner_build.py", "--rows", str(rows_file), "--tokenizer", str(tmp_path / "none")))
    assert "--repeats (0) must be at least 1" in one_sentence(
        run("xtuner_build.py", "--rows", str(rows_file), "--tokenizer", str(tmp_path), "--repeats", "0"))


def test_data_py_names_a_missing_interpreter_in_one_sentence(tmp_path):
    missing = tmp_path / "bin" / "python"
    message = one_sentence(run("data.py", "--xtuner-python", str(missing)))
    assert f"--xtuner-python {missing} is not an executable interpreter" in message
    assert "make bench-xtuner" in message


def test_data_py_passes_on_why_xtuner_cannot_run():
    if importlib.util.find_spec("xtuner") is not None:
        pytest.skip("xtuner is installed in this environment")
    message = one_sentence(run("data.py", "--xtuner-python", sys.executable))
    assert message.startswith(f"data.py: the XTuner build under {sys.executable} failed: ")
    assert "xtuner is not importable" in message


def xtuner_record(xtuner_build, repeat: int, samples: int, tokens: int, build_s: float) -> dict:
    """A record as bench/xtuner_build.py prints it, through its own functions and a JSON round trip."""
    line = json.dumps(xtuner_build.record(repeat, 1998, 2048, build_s, {"samples": samples, "tokens": tokens},
                                          0.5, 391410, (build_s * 1.25, {"samples": 207, "tokens": 423936}), VERSIONS))
    return json.loads(line)


def test_the_json_line_is_what_data_py_reads(scripts, capsys):
    data, xtuner_build = scripts
    records = [xtuner_record(xtuner_build, k, 1998, 424552, seconds) for k, seconds in ((1, 4.0), (2, 6.0))]
    assert set(records[0]) == {"bench", "repeat", "template", "versions", "rows", "max_length", "build_s", "samples",
                               "tokens", "bound_s", "bound_tokens", "packed"}
    assert records[0]["template"] == "PROMPT_TEMPLATE.default" and records[1]["packed"]["build_s"] == 7.5
    times = {"xt": [0.5, 2.0], "bound": [0.25, 0.5], "xtuner": [4.0, 6.0], "xtuner-packed": [5.0, 7.5],
             "xtuner-bound": [0.5, 0.5]}

    def ratio(a: str, b: str) -> str:
        return data.spread([y / x for x, y in zip(times[a], times[b])])

    data.print_xtuner(records, ratio, {"samples": 1998, "tokens": 423354}, 391418)
    out = capsys.readouterr().out
    assert "xt vs XTuner process_hf_dataset: 5.50 (3.00-8.00)x faster" in out  # 4.0/0.5 and 6.0/2.0
    assert "pack_to_max_length=True: 6.88 (3.75-10.00)x" in out
    assert "its bound (tokenizers 0.21.4)" in out and "1.50 (1.00-2.00)x the time (391410 vs 391418 tokens)" in out
    assert "1998 samples, 424552 tokens; packed: 207 rows, 423936 tokens" in out and "(same order)" in out

    far = [xtuner_record(xtuner_build, 1, 1998, 3 * 424552, 4.0)]
    data.print_xtuner(far, ratio, {"samples": 1998, "tokens": 423354}, 391418)
    assert "(NOT the same order)" in capsys.readouterr().out
