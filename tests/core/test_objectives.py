"""The objective hook: rows that become several sequences, kept whole; the sequence helpers against
plain per-sequence forwards; the kit's loss contract; a third-party objective used by ``xt train``,
with its reference model (the adapter disabled under LoRA, a frozen copy under full training)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import MODEL, make_model_dir, register_test_plugin  # noqa: E402
from xt import hookimpl  # noqa: E402
from xt.api import ObjectiveSpec, RowError, model_inputs, sequence_last_index, sequence_logps  # noqa: E402
from xt.errors import XtError  # noqa: E402
from xt.specs import DatasetSpec  # noqa: E402
from xt.template import IGNORE_INDEX  # noqa: E402

PAIR_SET = "tiny-pairs"
WORDS = ["red", "green", "blue", "cyan", "black", "white", "pink", "grey"]


def pair_rows(split: str = "train", seed: int = 0) -> list[dict]:
    rows = [{"q": f"Say {w}.", "good": w, "bad": f"not {w} but {WORDS[(i + 3) % len(WORDS)]}"}
            for i, w in enumerate(WORDS)]
    return rows[:6] if split == "train" else rows[6:]


def map_pair(row: dict) -> dict:
    if not row.get("good"):
        raise RowError("empty chosen reply")
    return {"messages": [{"role": "user", "content": row["q"]}], "chosen": row["good"], "rejected": row["bad"]}


def pair_problems(row: dict) -> list[str]:
    return [] if {"messages", "chosen", "rejected"} <= set(row) else ["a pair needs messages, chosen and rejected"]


def pair_sequences(row: dict) -> list[dict]:
    return [{"messages": [*row["messages"], {"role": "assistant", "content": row[key]}]} for key in ("chosen", "rejected")]


def _pair_logps(model, batch):
    output = model(**model_inputs(batch), use_cache=False)
    n = int(batch["sequence_roles"].numel())
    logps, _ = sequence_logps(output.logits, batch["labels"], batch["sequence_ids"], n)
    roles = batch["sequence_roles"]
    return logps[roles == 0], logps[roles == 1]


def margin_loss(model, batch, context):
    """A DPO-like toy objective: -log sigmoid(beta * ((c - c_ref) - (r - r_ref))), summed over pairs."""
    import torch
    import torch.nn.functional as F

    chosen, rejected = _pair_logps(model, batch)
    if "reference_logps" in batch:  # precompute_reference: the values came with the batch
        roles = batch["sequence_roles"]
        ref_chosen, ref_rejected = batch["reference_logps"][roles == 0], batch["reference_logps"][roles == 1]
    else:
        with context.reference() as reference:
            ref_chosen, ref_rejected = _pair_logps(reference, batch)
    margin = context.args["beta"] * ((chosen - ref_chosen) - (rejected - ref_rejected))
    gap = (chosen - ref_chosen).abs() + (rejected - ref_rejected).abs()
    return -F.logsigmoid(margin).sum(), {"wins": (margin > 0).float().sum(), "ref_gap": gap.sum().detach(),
                                          "one": torch.tensor(float(len(chosen)))}


PRECOMPUTED = {"calls": 0}


def pair_reference(reference, batch, context):
    """Each sequence's log-probability under the reference model (what precompute_reference caches)."""
    PRECOMPUTED["calls"] += 1
    output = reference(**model_inputs(batch), use_cache=False)
    logps, _ = sequence_logps(output.logits, batch["labels"], batch["sequence_ids"], int(batch["sequence_roles"].numel()))
    return {"logps": logps}


def count_pairs(batch) -> int:
    return int((batch["sequence_roles"] == 0).sum())


PAIR_ROWS = ({"messages": [{"role": "user", "content": "Say red."}], "chosen": "red", "rejected": "blue"},
             {"messages": [{"role": "user", "content": "Say one."}], "chosen": "one", "rejected": "two"})
MARGIN = ObjectiveSpec(name="pair-margin", loss=margin_loss, units=count_pairs, sequences=pair_sequences,
                       row_problems=pair_problems, reference=True, defaults={"beta": 0.5}, sample_rows=PAIR_ROWS,
                       precompute=pair_reference)


class PairPlugin:
    @hookimpl
    def objective(register):
        register(MARGIN)

    @hookimpl
    def dataset_map(register):
        register(DatasetSpec(name=PAIR_SET, map_row=map_pair, generate=pair_rows, splits=("train", "validation"),
                             objective="pair-margin"))


@pytest.fixture
def pairs_registered(tmp_path):
    from xt.plugins import get_plugin_manager

    register_test_plugin(make_model_dir(tmp_path / "model"))
    pm = get_plugin_manager()
    if pm.get_plugin("pair-plugin") is None:
        pm.register(PairPlugin, name="pair-plugin")
    return tmp_path


def _tokenizer():
    from xt.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def _build(rows, **options):
    from xt.data.pipeline import DataOptions, build_dataset
    from xt.plugins import get_registry

    dataset = DatasetSpec(name="pairs", map_row=map_pair, generate=lambda split, seed: rows, objective="pair-margin")
    return build_dataset(dataset, get_registry().get("templates", "default"), _tokenizer(),
                         DataOptions(use_cache=False, objective=MARGIN, **options))


def test_the_objective_is_explicit_else_the_datasets_else_sft():
    from xt.train.objective import objective_name

    assert objective_name(None, DatasetSpec(name="d", map_row=dict)) == "sft"
    assert objective_name(None, DatasetSpec(name="d", map_row=dict, objective="dpo")) == "dpo"
    assert objective_name("orpo", DatasetSpec(name="d", map_row=dict, objective="dpo")) == "orpo"


def test_pair_rows_are_packed_whole_and_dropped_together():
    rows = pair_rows()
    built = _build(rows, max_length=64, pack=True)
    assert built.stats["samples"] == len(rows) and built.stats["sequences_per_sample"] == 2
    seen = 0
    for i in range(len(built)):
        row = built[i]
        assert set(row["group_sizes"]) == {2}
        assert sum(row["sequence_lengths"]) == len(row["input_ids"])
        starts = [j for j, p in enumerate(row["position_ids"]) if p == 0]
        assert len(starts) == len(row["sequence_lengths"])  # attention restarts at every sequence
        seen += len(row["group_sizes"])
    assert seen == len(rows)
    # one rejected reply longer than max_length: with the drop policy its whole pair goes
    long = dict(rows[0], bad=" ".join(["words"] * 80))
    dropped = _build([long, *rows[1:]], max_length=40, pack=False, length_policy="drop")
    assert dropped.stats["samples"] == len(rows) - 1 and dropped.stats["dropped_too_long"] == 1
    assert all(row["group_sizes"] == [2] for row in dropped)


def test_sequence_logps_of_a_packed_batch_equal_each_sequence_alone():
    """Independent check: run the model on every sequence alone and sum log p(label token)."""
    import torch
    from xt.data.collate import make_default_collator
    from xt.testing import _tiny_llama

    model, tokenizer = _tiny_llama()
    model.config._attn_implementation = "sdpa"
    built = _build(pair_rows(), max_length=48, pack=True)
    batch = make_default_collator(pad_token_id=0, attn_implementation="sdpa")([built[0], built[1]])
    assert "attention_mask" not in batch  # packed: attention kept per sequence by the position ids
    n = int(batch["sequence_roles"].numel())
    with torch.no_grad():
        logps, counts = sequence_logps(model(**model_inputs(batch), use_cache=False).logits, batch["labels"],
                                       batch["sequence_ids"], n)
    expected, expected_counts = [], []
    for r in range(batch["input_ids"].size(0)):
        for s in batch["sequence_ids"][r].unique().tolist():
            if s < 0:
                continue
            cols = (batch["sequence_ids"][r] == s).nonzero().flatten()
            ids, labels = batch["input_ids"][r, cols], batch["labels"][r, cols]
            with torch.no_grad():
                logits = model(input_ids=ids[None]).logits[0]
            logp = torch.log_softmax(logits[:-1].double(), -1)
            keep = labels[1:] != IGNORE_INDEX
            expected.append(float(logp[keep].gather(-1, labels[1:][keep, None]).sum()))
            expected_counts.append(int(keep.sum()))
    assert counts.tolist() == expected_counts
    assert torch.allclose(logps.double(), torch.tensor(expected, dtype=torch.double), atol=1e-5, rtol=0)
    rows_, cols_ = sequence_last_index(batch["sequence_ids"], n)
    for s in range(n):
        assert batch["sequence_ids"][rows_[s], cols_[s]] == s
        after = batch["sequence_ids"][rows_[s], cols_[s] + 1:] if cols_[s] + 1 < batch["sequence_ids"].size(1) else []
        assert all(int(a) != s for a in after)


def test_the_kit_passes_a_sum_and_names_a_mean(pairs_registered):
    import dataclasses

    from xt.testing import check_plugin_object

    report = check_plugin_object(PairPlugin, "pairs-ok", raise_on_problems=False)
    assert report.problems == []

    def mean_loss(model, batch, context):
        loss, metrics = margin_loss(model, batch, context)
        return loss / count_pairs(batch), metrics

    class MeanPlugin:
        @hookimpl
        def objective(register):
            register(dataclasses.replace(MARGIN, name="pair-mean", loss=mean_loss))
            register(dataclasses.replace(MARGIN, name="pair-no-rows", sample_rows=()))

    problems = check_plugin_object(MeanPlugin, "pairs-bad", raise_on_problems=False).problems
    assert any("'pair-mean'" in p and "not a sum over its units" in p for p in problems), problems
    assert any("'pair-no-rows'" in p and "no sample_rows" in p for p in problems), problems


def test_an_unknown_objective_option_is_one_sentence(pairs_registered):
    from xt.train.objective import resolve_objective

    spec, args = resolve_objective("pair-margin", {"beta": 0.1})
    assert spec is not None and args == {"beta": 0.1}
    with pytest.raises(XtError, match=r"objective 'pair-margin' has no option 'bta' \(its options: beta\)"):
        resolve_objective("pair-margin", {"bta": 0.1})


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_third_party_objective_is_used_by_xt_train(pairs_registered, method):
    from click.testing import CliRunner
    from xt.cli import cli

    tmp = pairs_registered
    out = tmp / f"run-{method}"
    result = CliRunner().invoke(cli, ["train", "--model", MODEL, "--dataset", PAIR_SET, "--method", method,
                                      "--output", str(out), "--set", "max_steps=3", "--set", "micro_batch_size=6",
                                      "--set", "pack=false", "--set", "eval_steps=3", "--set", "max_length=64",
                                      "--set", "objective_args.beta=0.5", "--set", "report_to=[]",
                                      "--set", f"data_cache_dir={tmp / 'cache'}", "--set", "lr=0.01"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["objective"] == "pair-margin" and info["status"] == "finished"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    # step 1: policy == reference (LoRA's B is zero; full training's copy is the start), so every pair's loss is log 2
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert steps[0]["ref_gap"] == pytest.approx(0.0, abs=1e-5) and steps[0]["one"] == pytest.approx(1.0)
    assert steps[-1]["ref_gap"] > 1e-4  # the policy moved away from the reference, which did not move
    # one micro-batch holds all 6 pairs: the step's tokens are the data's tokens, padding not counted
    assert all(r["tokens"] == _build(pair_rows(), max_length=64, pack=False).stats["tokens"] for r in steps)
    evals = [r for r in records if "eval_loss" in r]
    assert evals and 0.0 <= evals[-1]["eval_wins"] <= 1.0 and evals[-1]["eval_one"] == pytest.approx(1.0)


def test_lora_reference_is_the_base_without_a_copy(pairs_registered):
    """Under LoRA the reference is the trained model with its adapter disabled: no frozen copy is made."""
    import torch
    from transformers import AutoModelForCausalLM
    from xt.config import from_dict
    from xt.model.setup import build_model
    from xt.plugins import get_registry
    from xt.train.loop import prepare_objective
    from xt.train.objective import reference_model

    cfg = from_dict(dict(model=MODEL, dataset=PAIR_SET, method="lora"))
    loaded = build_model(cfg, get_registry().resolve_model(MODEL))
    context, frozen = prepare_objective(cfg, MARGIN, {"beta": 0.5}, loaded)
    assert frozen is None
    for name, p in loaded.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter
    ids = torch.tensor([[1, 5, 9, 13, 17, 2]])
    base = AutoModelForCausalLM.from_pretrained(str(pairs_registered / "model"))
    with torch.no_grad(), reference_model(True, lambda: loaded.model)() as reference:
        ref_logits = reference(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(ref_logits, base(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(loaded.model(input_ids=ids).logits, ref_logits, atol=1e-3)


def test_a_classifier_result_is_refused_by_chat_and_export(tmp_path):
    from xt.export import describe_run
    from xt.run import RunInfo

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    RunInfo(model="m", model_source=None, template="default", status="finished", final_dir="final", adapter=False,
            objective="reward").save(run)
    with pytest.raises(XtError, match="trained objective 'reward'.*sequence classifier"):
        describe_run(run)


def test_data_preview_shows_both_sequences_of_a_pair(pairs_registered):
    from click.testing import CliRunner
    from xt.cli import cli

    result = CliRunner().invoke(cli, ["data", "preview", "--model", MODEL, "--dataset", PAIR_SET, "-n", "1"],
                                env={"XT_CACHE_DIR": str(pairs_registered / "cache")})
    assert result.exit_code == 0, result.output
    assert "2 sample(s)" in result.output and "not cyan but black" not in result.output
    assert "red" in result.output and "not red but cyan" in result.output


def test_a_window_of_pairs_updates_like_the_concatenated_batch(pairs_registered):
    """grad_accum 3 x 2 pairs equals 1 x 6 pairs: the loss is a per-pair mean over the whole window."""
    from safetensors.torch import load_file
    from xt.config import from_dict
    from xt.train.loop import train

    tmp = pairs_registered

    def run(name, **batching):
        cfg = from_dict(dict(model=MODEL, dataset=PAIR_SET, method="full", max_steps=1, lr=1e-3, pack=False,
                             max_length=64, save_total_limit=0, report_to=[], output=str(tmp / name),
                             data_cache_dir=str(tmp / "cache"), objective_args={"beta": 0.5}, **batching))
        out = train(cfg)
        loss = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        return load_file(str(out / "final" / "model.safetensors")), loss

    # one pair per row: both runs see the same 6 pairs in their one step
    (wa, la), (wb, lb) = run("acc-3x2", micro_batch_size=2, grad_accum=3), run("acc-1x6", micro_batch_size=6)
    base = load_file(str(tmp / "model" / "model.safetensors"))
    assert max(float((wa[k] - base[k]).abs().max()) for k in base) > 1e-4
    # Adam's first step moves every weight by about lr = 1e-3; the two batch shapes sum in another order,
    # so allow 1% of one step (the sft test of the same property holds to 1e-6 with one shape per row)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    assert la == pytest.approx(lb, rel=1e-6)


def test_precomputed_reference_values_train_like_the_live_reference(pairs_registered):
    """precompute_reference: the same losses as the frozen copy, computed once, cached with the data, reused."""
    from xt.config import from_dict
    from xt.train.loop import train

    tmp = pairs_registered

    def run(name, **more):
        cfg = from_dict(dict(model=MODEL, dataset=PAIR_SET, method="full", max_steps=3, lr=1e-2, pack=False,
                             micro_batch_size=2, max_length=64, save_total_limit=0, report_to=[], eval_steps=3,
                             output=str(tmp / name), data_cache_dir=str(tmp / "cache"), **more))
        out = train(cfg)
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    live = run("live")
    PRECOMPUTED["calls"] = 0
    first = run("precomputed", precompute_reference=True)
    computed = PRECOMPUTED["calls"]
    again = run("precomputed-again", precompute_reference=True)
    assert computed > 0 and PRECOMPUTED["calls"] == computed  # the second run read the cached table
    assert list((tmp / "cache").rglob("reference-*-train.npz")) and list((tmp / "cache").rglob("reference-*-validation.npz"))
    for a, b, c in zip(live, first, again):
        for key in ("loss", "wins", "ref_gap", "eval_loss", "eval_wins"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-6) and c[key] == pytest.approx(a[key], abs=1e-6), key
