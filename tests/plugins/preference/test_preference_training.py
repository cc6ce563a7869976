"""``xt train`` with the preference objectives end to end: DPO under LoRA and full training, ORPO, the reward
model, ZeRO-3 with two processes, accumulation, exact resume after SIGKILL, ``xt merge`` / ``xt export`` of a
DPO result, and the offline demo (held-out reward accuracy >= 90% within 3 minutes of CPU)."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "core"))
from test_train_support import (  # noqa: E402
    MODEL,
    driver_env,
    make_model_dir,
    register_test_plugin,
    straight_and_resumed,
    write_driver,
)

pytestmark = pytest.mark.slow

DATASET = "preference-demo"
DEMO_CONFIG = ROOT / "plugins" / "xt-preference" / "xt_preference" / "configs" / "demo.yaml"


def run(tmp: Path, name: str, model_dir: Path, **overrides) -> Path:
    from xt.config import from_dict
    from xt.train.loop import train

    register_test_plugin(model_dir)
    values = dict(model=MODEL, dataset=DATASET, max_steps=4, lr=1e-2, micro_batch_size=2, grad_accum=1,
                  max_length=48, warmup_steps=0, save_steps=0, save_total_limit=0, output=str(tmp / name),
                  data_cache_dir=str(tmp / "cache"), lora_alpha=32, report_to=[])
    values.update(overrides)
    return train(from_dict(values), overwrite=True)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("preference-train")


@pytest.fixture(scope="module")
def model_dir(workdir):
    return make_model_dir(workdir / "tiny-llama")


@pytest.fixture(scope="module")
def runs(workdir, model_dir):
    return {
        "dpo-lora": run(workdir, "dpo-lora", model_dir, method="lora", eval_steps=4, eval_split="validation"),
        "dpo-full": run(workdir, "dpo-full", model_dir, method="full", zero_stage=2, lr=3e-3),
        "orpo-full": run(workdir, "orpo-full", model_dir, method="full", objective="orpo", lr=3e-3),
        "dpo-qlora": run(workdir, "dpo-qlora", model_dir, method="qlora", max_steps=2),
        "reward-lora": run(workdir, "reward-lora", model_dir, method="lora", objective="reward"),
        "reward-full-z3": run(workdir, "reward-full-z3", model_dir, method="full", objective="reward", zero_stage=3,
                              lr=3e-3),
    }


@pytest.mark.parametrize("name", ["dpo-lora", "dpo-full", "dpo-qlora"])
def test_dpo_starts_at_log_2_against_its_reference_and_logs_the_pair_metrics(runs, name):
    info = json.loads((runs[name] / "run.json").read_text())
    assert info["objective"] == "dpo" and info["status"] == "finished"
    steps = [r for r in records(runs[name]) if "loss" in r]
    # step 1: the policy is its reference (LoRA's B is zero; full training's frozen copy is the start)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["loss"] < math.log(2) and steps[-1]["reward_margin"] > 0
    for key in ("reward_accuracy", "chosen_reward", "rejected_reward", "logps_chosen", "logps_rejected"):
        assert key in steps[-1]
    assert 0.0 <= steps[-1]["reward_accuracy"] <= 1.0 and steps[-1]["logps_chosen"] < 0


def test_dpo_lora_validation_reports_reward_accuracy_and_saves_an_adapter(runs):
    evals = [r for r in records(runs["dpo-lora"]) if "eval_reward_accuracy" in r]
    assert evals and 0.0 <= evals[-1]["eval_reward_accuracy"] <= 1.0
    assert (runs["dpo-lora"] / "final" / "adapter_model.safetensors").is_file()
    assert (runs["dpo-full"] / "final" / "model.safetensors").is_file()


def test_orpo_trains_without_a_reference(runs):
    steps = [r for r in records(runs["orpo-full"]) if "loss" in r]
    assert json.loads((runs["orpo-full"] / "run.json").read_text())["objective"] == "orpo"
    assert steps[-1]["loss"] < steps[0]["loss"] and "reward_accuracy" in steps[-1]


@pytest.mark.parametrize("name", ["reward-lora", "reward-full-z3"])
def test_reward_run_saves_a_sequence_classifier_with_the_run_template(runs, name):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = runs[name] / "final"
    info = json.loads((runs[name] / "run.json").read_text())
    assert info["objective"] == "reward" and info["adapter"] is False  # LoRA merged into the classifier
    model = AutoModelForSequenceClassification.from_pretrained(str(final))
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    assert tokenizer.chat_template and (final / "xt_template.json").is_file()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"},
                                         {"role": "assistant", "content": "Paris"}], tokenize=True, return_dict=False)
    with torch.no_grad():
        assert model(input_ids=torch.tensor([ids])).logits.shape == (1, 1)
    assert model.score.weight.shape == (1, 32) and model.score.weight.abs().max() > 0  # the gathered, trained head


def test_accumulation_window_equals_the_concatenated_batch(workdir, model_dir):
    from safetensors.torch import load_file

    common = dict(method="full", max_steps=1, lr=1e-3, pack=True, max_length=48)
    a = run(workdir, "acc-4x2", model_dir, micro_batch_size=2, grad_accum=4, **common)
    b = run(workdir, "acc-1x8", model_dir, micro_batch_size=8, grad_accum=1, **common)
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    base = load_file(str(model_dir / "model.safetensors"))
    moved = max(float((wa[k] - base[k]).abs().max()) for k in base)
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert moved > 1e-4 and diff < 1e-6, (moved, diff)
    (step_a,), (step_b,) = [[r for r in records(x) if "loss" in r] for x in (a, b)]
    for key in ("loss", "reward_accuracy", "reward_margin", "logps_chosen"):
        assert step_a[key] == pytest.approx(step_b[key], rel=1e-5, abs=1e-7), key


def test_padded_collator_trains_as_the_rows_of_two_sequences(workdir, model_dir):
    common = dict(method="full", max_steps=2, lr=1e-3, pack=False, micro_batch_size=3)
    rows = run(workdir, "dpo-two-per-row", model_dir, **common)
    padded = run(workdir, "dpo-padded", model_dir, collator="preference-padded", **common)
    for a, b in zip(*[[r for r in records(x) if "loss" in r] for x in (rows, padded)], strict=True):
        for key in ("loss", "logps_chosen", "logps_rejected", "reward_margin"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("method", ["full", "lora"])
def test_precomputed_reference_gives_the_live_reference_losses(workdir, model_dir, method):
    common = dict(method=method, max_steps=3, lr=3e-3, eval_steps=3, eval_split="validation", lora_dropout=0.0)
    live = run(workdir, f"dpo-live-{method}", model_dir, **common)
    cached = run(workdir, f"dpo-cached-{method}", model_dir, precompute_reference=True, **common)
    live_records, cached_records = records(live), records(cached)
    assert len(live_records) == len(cached_records)
    for a, b in zip(live_records, cached_records, strict=True):
        for key in ("loss", "eval_loss", "reward_margin", "eval_reward_margin", "chosen_reward"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-6), key


def test_merge_and_export_of_a_dpo_lora_run(runs, model_dir, workdir):
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from xt.cli import cli

    register_test_plugin(model_dir)
    run_dir = runs["dpo-lora"]
    merged, exported = workdir / "dpo-merged", workdir / "dpo-exported"
    result = CliRunner().invoke(cli, ["merge", MODEL, str(run_dir / "final"), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--to", "hf", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    ids = torch.tensor([[1, 300, 301, 302, 303, 2]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)),
                                             str(run_dir / "final"))(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(model_dir))(input_ids=ids).logits
        for folder in (merged, exported):
            logits = AutoModelForCausalLM.from_pretrained(str(folder))(input_ids=ids).logits
            assert torch.allclose(logits, expected, atol=1e-5)
    assert (expected - base).abs().max() > 1e-4  # DPO moved the adapter


@pytest.mark.parametrize("objective,option,words", [
    ("dpo", "objective_args.beta=-1", "objective_args.beta of 'dpo' must be a positive number"),
    ("dpo", "objective_args.loss_type=hinge", "must be one of sigmoid, ipo"),
    ("orpo", "objective_args.beta=0", "objective_args.beta of 'orpo' must be a positive number"),
    ("dpo", "objective_args.gamma=1", "has no option 'gamma'"),
])
def test_a_bad_option_is_one_sentence_and_leaves_no_run(workdir, model_dir, objective, option, words):
    from click.testing import CliRunner
    from xt.cli import cli

    register_test_plugin(model_dir)
    out = workdir / f"bad-{objective}-{option.split('=')[0]}"
    result = CliRunner().invoke(cli, ["train", "--model", MODEL, "--dataset", DATASET, "--objective", objective,
                                      "--output", str(out), "--set", option, "--set", "max_steps=1"])
    assert result.exit_code != 0 and words in result.output and "Traceback" not in result.output
    assert not out.exists() and not [p for p in workdir.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.fixture(scope="module")
def driver(workdir, model_dir):
    return write_driver(workdir, model_dir), driver_env(workdir / "driver-cache")


def test_dpo_with_zero_3_on_two_processes(driver, workdir):
    script, env = driver
    out = workdir / "dpo-z3-two"
    args = ["train", "--model", MODEL, "--dataset", DATASET, "--method", "full", "--nproc", "2", "--output", str(out),
            "--set", "max_steps=3", "--set", "zero_stage=3", "--set", "micro_batch_size=1", "--set", "max_length=48",
            "--set", "lr=3e-3", "--set", "report_to=[]"]
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["extra"]["world_size"] == 2 and info["objective"] == "dpo"
    steps = losses(out)
    assert sorted(steps) == [1, 2, 3] and steps[1] == pytest.approx(math.log(2), abs=1e-6)
    assert (out / "final" / "model.safetensors").is_file()


def test_dpo_resume_after_sigkill_is_bitwise(driver, workdir):
    from safetensors.torch import load_file

    script, env = driver
    args = ["train", "--model", MODEL, "--dataset", DATASET, "--method", "lora", "--set", "max_steps=16",
            "--set", "save_steps=4", "--set", "save_total_limit=2", "--set", "lr=3e-3", "--set", "micro_batch_size=2",
            "--set", "max_length=48", "--set", "warmup_steps=2", "--set", "lora_dropout=0.0", "--set", "report_to=[]"]
    work = workdir / "dpo-resume"
    work.mkdir()
    straight, crashed, resumed_from = straight_and_resumed(script, args, work, env, timeout=400)
    a = load_file(str(straight / "final" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "final" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    la, lb = losses(straight), losses(crashed)
    assert sorted(lb) == list(range(1, 17))
    assert all(lb[step] == la[step] for step in range(resumed_from + 1, 17))  # the same floats


def test_demo_reaches_90_percent_held_out_reward_accuracy_within_3_cpu_minutes(tmp_path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([str(Path(sys.executable).parent / "xt"), "train", str(DEMO_CONFIG), "--output",
                           str(tmp_path / "demo")], env=driver_env(tmp_path / "cache"), capture_output=True,
                          text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr[-3000:]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    final_eval = [r for r in records(tmp_path / "demo") if "eval_reward_accuracy" in r][-1]
    assert final_eval["eval_reward_accuracy"] >= 0.90, final_eval
    assert cpu_s <= 180, cpu_s
    assert "reward accuracy:" in done.stderr
