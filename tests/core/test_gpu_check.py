"""`make gpu-check` on a machine without CUDA: exits 0, writes the JSON, every GPU row skipped with a reason; and
every row's measuring code run on the CPU (``--device cpu``, a tiny shape), also without the packages the
accelerator image lacks."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW_FIELDS = {
    "train": {"model": str, "params": int, "method": str, "layout": str},
    "packed_logits": {"model": str, "attn": str},
    "trl": {"model": str, "method": str, "layout": str},
}
MEASURED = {"train": ("tokens_per_s", "mfu", "peak_mem_gib"), "packed_logits": ("max_abs_diff", "tolerance"),
            "trl": ("trl_tokens_per_s", "ratio")}


def gpu_bench():
    spec = importlib.util.spec_from_file_location("xt_bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_schema(report: dict) -> None:
    """The report's shape, checked field by field (what a reader of gpu-check.json relies on)."""
    assert report["schema"] == "xt-gpu-check/1"
    assert set(report) == {"schema", "created", "device", "versions", "settings", "rows", "seconds"}
    assert set(report["device"]) == {"cuda", "name", "memory_gib", "peak_bf16_tflops"}
    assert isinstance(report["device"]["cuda"], bool)
    assert {"python", "torch", "transformers", "peft", "bitsandbytes", "flash-attn", "trl"} <= set(report["versions"])
    assert isinstance(report["seconds"], float) and report["seconds"] >= 0
    for row in report["rows"]:
        fields = ROW_FIELDS[row["check"]]
        for name, kind in fields.items():
            assert isinstance(row[name], kind), (name, row)
        assert row["status"] in ("ok", "skipped", "failed")
        if row["status"] == "ok":
            assert all(isinstance(row[k], (int, float)) for k in MEASURED[row["check"]] if row.get(k) is not None)
        else:
            assert isinstance(row["reason"], str) and row["reason"], row


@pytest.mark.slow
def test_gpu_check_on_cpu_skips_every_row_with_a_reason(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test checks the no-CUDA path")
    out = tmp_path / "gpu-check.json"
    done = subprocess.run(["make", "-C", str(ROOT), "gpu-check", f"GPU_PYTHON={sys.executable}", f"GPU_CHECK_OUT={out}"],
                          capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    check_schema(report)
    rows = report["rows"]
    models = {"llama-1b", "llama-7b", "baichuan2-7b", "baichuan2-13b"}
    assert {(r["model"], r["method"], r["layout"]) for r in rows if r["check"] == "train"} == \
        {(m, method, layout) for m in models for method in ("lora", "qlora", "full") for layout in ("packed", "padded")}
    assert {r["model"] for r in rows if r["check"] == "packed_logits"} == models
    assert {r["model"] for r in rows if r["check"] == "trl"} == models
    assert all(r["status"] == "skipped" and "no CUDA device" in r["reason"] for r in rows)
    assert report["device"]["cuda"] is False
    assert "0 ok, 36 skipped, 0 failed" in done.stdout


def test_skip_reasons_name_what_is_missing(monkeypatch):
    bench = gpu_bench()
    card = {"cuda": True, "name": "H200", "memory_gib": 139.8, "peak_bf16_tflops": 989.0}
    assert bench.skip_reason("lora", 7_000_000_000, card, spent=0, budget=420) is None
    assert "needs about 207 GiB" in bench.skip_reason("full", 13_896_668_160, card, spent=0, budget=420)
    assert bench.skip_reason("full", 7_000_000_000, card, spent=0, budget=420) is None  # 104 GiB fits
    assert bench.skip_reason("lora", 1_000_000, card, spent=421, budget=420) == "time budget of 420 s spent"
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    assert bench.skip_reason("qlora", 1_000_000, card, spent=0, budget=420) == "bitsandbytes is not installed"
    no_card = {**card, "cuda": False}
    assert "no CUDA device" in bench.model_skip_reason("llama-1b", no_card, on="cuda")
    assert bench.model_skip_reason("llama-tiny", no_card, on="cpu") is None  # --device cpu runs on the host


def test_a_plugin_whose_requirements_this_environment_does_not_meet_skips_its_shapes(monkeypatch):
    """The accelerator image's own transformers may be older than a plugin needs: its rows say which and how to fix."""
    bench = gpu_bench()
    card = {"cuda": True, "name": "H200", "memory_gib": 139.8, "peak_bf16_tflops": 989.0}
    assert bench.model_skip_reason("baichuan2-7b", card, on="cuda") is None  # this environment meets them
    installed = bench.importlib.metadata.version
    monkeypatch.setattr(bench.importlib.metadata, "version",
                        lambda name: "5.17.0" if name == "transformers" else installed(name))
    needs = next(r for r in bench.importlib.metadata.requires("xt-baichuan") if r.startswith("transformers"))
    reason = bench.model_skip_reason("baichuan2-13b-tiny", card, on="cpu")
    assert reason.startswith(f"xt-baichuan needs {needs}, this environment has transformers 5.17.0"), reason
    assert "GPU_WHEELS" in reason
    assert bench.model_skip_reason("llama-1b", card, on="cuda") is None  # xt-core asks less of transformers


def test_packed_and_padded_batches_hold_the_same_tokens():
    bench = gpu_bench()
    batches = bench.batches(512, 2, 1000, "cpu")
    packed, real_packed = batches["packed"]
    padded, real_padded = batches["padded"]
    assert real_packed == real_padded == int(padded["attention_mask"].sum())
    flat_packed = packed["input_ids"].reshape(-1).tolist()
    tokens = [t for row, mask in zip(padded["input_ids"].tolist(), padded["attention_mask"].tolist())
              for t, m in zip(row, mask) if m]
    assert tokens == [t for t in flat_packed if t != 0]  # the same samples in the same order (pad id 0)
    restarts = int((packed["position_ids"] == 0).sum())
    assert restarts >= padded["input_ids"].shape[0]  # one restart per sample (and per pad tail)


#: set in this process by earlier tests' in-process training; a child inheriting them would try to join that group
DISTRIBUTED_VARIABLES = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
#: what the accelerator image does not have (it has torch, transformers, peft, accelerate and the like)
NOT_ON_THE_IMAGE = ("datasets", "deepspeed", "bitsandbytes", "trl", "flash_attn")


def cpu_check(tmp_path, hidden: tuple[str, ...] = ()) -> tuple[dict, str]:
    """bench/gpu.py --device cpu on the tiny shape, with the ``hidden`` packages made impossible to find or import."""
    out = tmp_path / "gpu-check.json"
    argv = ["bench/gpu.py", "--device", "cpu", "--models", "llama-tiny,baichuan2-13b-tiny", "--steps", "2", "--seq", "256",
            "--out", str(out)]
    code = ("import importlib.util, runpy, sys\n"
            f"hidden = {set(hidden)!r}\n"
            "found = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] in hidden else found(name, *a)\n"
            "sys.modules.update(dict.fromkeys(hidden))\n"
            f"sys.argv = {argv!r}\n"
            "runpy.run_path('bench/gpu.py', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    check_schema(report)
    return {(r["model"], r["check"], r.get("method") or r["attn"], r.get("layout", "")): r
            for r in report["rows"]}, done.stdout


@pytest.mark.slow
def test_every_row_runs_on_the_cpu_with_tiny_shapes(tmp_path):
    """Llama (xt-core) and Baichuan2 with ALiBi (xt-baichuan's own attention), every method, both layouts."""
    rows, stdout = cpu_check(tmp_path)
    for model in ("llama-tiny", "baichuan2-13b-tiny"):
        for method in ("lora", "full"):
            for layout in ("packed", "padded"):
                row = rows[(model, "train", method, layout)]
                assert row["status"] == "ok" and row["tokens_per_s"] > 0, row
                assert row["mfu"] is None and row["peak_mem_gib"] is None  # no peak FLOP/s or CUDA memory on a CPU
        if importlib.util.find_spec("bitsandbytes") is not None:  # 4-bit on the CPU too
            assert all(rows[(model, "train", "qlora", layout)]["status"] == "ok" for layout in ("packed", "padded"))
        logits = rows[(model, "packed_logits", "sdpa", "")]
        assert logits["status"] == "ok" and logits["max_abs_diff"] <= logits["tolerance"], logits
        if importlib.util.find_spec("trl") is not None:  # the bench extra installs it
            trl = rows[(model, "trl", "lora", "packed")]
            assert trl["status"] == "ok" and trl["trl_tokens_per_s"] > 0 and trl["ratio"] > 0, trl
    assert rows[("llama-tiny", "packed_logits", "sdpa", "")]["attn_used"] == "xt_packed_sdpa"
    assert " 0 failed" in stdout


@pytest.mark.slow
def test_the_check_runs_without_the_packages_the_accelerator_image_lacks(tmp_path):
    rows, _ = cpu_check(tmp_path, hidden=NOT_ON_THE_IMAGE)
    for model in ("llama-tiny", "baichuan2-13b-tiny"):
        assert all(rows[(model, "train", m, layout)]["status"] == "ok" for m in ("lora", "full")
                   for layout in ("packed", "padded"))
        assert rows[(model, "packed_logits", "sdpa", "")]["status"] == "ok"
        assert {rows[(model, "train", "qlora", layout)]["reason"] for layout in ("packed", "padded")} == \
            {"bitsandbytes is not installed"}
        assert rows[(model, "trl", "lora", "packed")]["reason"] == "trl is not installed"
    assert rows[("llama-tiny", "packed_logits", "flash_attention_2", "")]["reason"] == "flash-attn is not installed"
