"""``pack: auto``: the estimated cost of packed rows vs length-grouped batches, and the choice it makes."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner
from xt.cli import cli
from xt.data import DataOptions, build_dataset
from xt.data.layout import attention_weight, batch_cost, causal_share, choose_layout, grouped_cost, packed_cost
from xt.plugins import get_registry

try:
    from .test_data_support import TEST_DATASET, TEST_MODEL, alpaca_spec, register_test_plugin
except ImportError:
    from test_data_support import TEST_DATASET, TEST_MODEL, alpaca_spec, register_test_plugin


def test_costs_match_a_hand_count():
    # Samples of 2 and 6 tokens, rows of 8, batches of 2, one attention pair costing one token.
    # Packed: one row of 8 slots, pairs 2*2/2 + 6*6/2 = 20 -> (8 + 20) / 8 real tokens.
    assert packed_cost([2, 6], 8, 2, 1.0, seed=0, step_cost=0) == pytest.approx(28 / 8)
    # Grouped: one batch padded to 6 -> 12 slots, masked attention over 2 rows of 6*6 -> (12 + 72) / 8.
    assert grouped_cost([2, 6], 2, 1.0, seed=0, step_cost=0) == pytest.approx(84 / 8)
    # Equal lengths need no padding: causal attention, half the square.
    assert grouped_cost([4, 4], 2, 1.0, seed=0, step_cost=0) == pytest.approx((8 + 16) / 8)
    # Each batch adds its fixed cost: batches of one sample -> two batches.
    assert grouped_cost([4, 4], 1, 0.0, seed=0, step_cost=10) == pytest.approx((8 + 20) / 8)


def test_batch_cost_prices_each_attention_kind_by_hand():
    # Two rows: samples 3 + 2 (5 tokens) and one sample of 4, padded to 5; one pair costs one token.
    rows = [[3, 2], [4]]
    # per sample, causal share 0.5: (9 + 4 + 0) + (16 + 1 for the padding tail) pairs, halved
    assert batch_cost(rows, 1.0, 0.5, per_sample=True, step_cost=0) == pytest.approx(10 + 15)
    # the same on a device whose causal kernel computes the whole square
    assert batch_cost(rows, 1.0, 1.0, per_sample=True, step_cost=0) == pytest.approx(10 + 30)
    # through a mask (several samples in a row, or padding): two whole 5 x 5 squares, causal or not
    assert batch_cost(rows, 1.0, 0.5, step_cost=0) == batch_cost(rows, 1.0, 1.0, step_cost=0) == pytest.approx(10 + 50)
    # unpadded single-sample rows attend causally
    assert batch_cost([[4], [4]], 1.0, 0.5, step_cost=7) == pytest.approx(7 + 8 + 16)
    assert causal_share("cpu") == 1.0 and causal_share("cuda") == 0.5


def test_the_devices_causal_share_can_change_the_choice():
    # Samples of 180 to 219 tokens, each length twice: packed two to a 450-token row (about 11% padding) with
    # per-sample causal attention, or grouped four to a batch (under 1% padding, but every batch padded, so
    # masked attention over the whole square).
    lengths = list(range(180, 220)) * 2
    cuda = choose_layout(lengths, 450, 4, 0.01, step_cost=0, causal=causal_share("cuda"))
    cpu = choose_layout(lengths, 450, 4, 0.01, step_cost=0, causal=causal_share("cpu"))
    assert cuda["layout"] == "packed"  # causal kernels skip half of each sample's square
    assert cpu["layout"] == "grouped"  # the CPU kernel computes all of it: packing's padding decides
    assert cpu["cost_grouped"] == cuda["cost_grouped"]  # every grouped batch is padded: masked either way


def test_short_samples_pack_and_near_full_ones_group():
    rng = random.Random(0)
    short = [rng.randint(20, 400) for _ in range(400)]  # alpaca-like: several per 1024-token row
    assert choose_layout(short, 1024, 2, 0.01)["layout"] == "packed"
    long = [rng.randint(560, 1024) for _ in range(400)]  # never two in one row: packing only adds padding
    choice = choose_layout(long, 1024, 4, 0.0)
    assert choice["layout"] == "grouped" and choice["cost_grouped"] < choice["cost_packed"]
    # Tiny samples, nearly equal: grouping pads little but needs many more batches than packing.
    tiny = [rng.randint(18, 20) for _ in range(400)]
    assert choose_layout(tiny, 256, 4, 0.0)["layout"] == "packed"
    assert choose_layout(tiny, 256, 4, 0.0, step_cost=0)["layout"] == "grouped"  # what the fixed cost changes


def test_attention_weight_counts_hidden_layers_and_parameters():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    per_layer = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64  # q k v o, gate up down, two norms
    parameters = 3 * per_layer + 64 + 64 * 1000  # layers, final norm, lm head (input embedding not counted)
    assert attention_weight(model) == pytest.approx(2 * 64 * 3 / parameters, rel=1e-6)


def test_auto_layout_in_the_pipeline_and_in_xt_data_stats(tmp_path, sp_tokenizer, alpaca_file):
    template = get_registry().get("templates", "default")
    options = DataOptions(max_length=1024, pack="auto", micro_batch_size=2, attention_weight=0.001,
                          cache_dir=str(tmp_path / "cache"))
    built = build_dataset(alpaca_spec([alpaca_file]), template, sp_tokenizer, options)
    assert built.stats["layout"] == "packed" and built.stats["packed"]
    assert built.stats["layout_choice"]["cost_packed"] < built.stats["layout_choice"]["cost_grouped"]
    forced = build_dataset(alpaca_spec([alpaca_file]), template, sp_tokenizer,
                           DataOptions(max_length=1024, pack=False, use_cache=False))
    assert forced.stats["layout"] == "single" and forced.stats["layout_choice"] is None

    register_test_plugin(sp_tokenizer, alpaca_file)
    res = CliRunner().invoke(cli, ["data", "stats", "--dataset", TEST_DATASET, "--model", TEST_MODEL,
                                   "--max-length", "1024", "--auto-layout", "--micro-batch-size", "2"],
                             env={"XT_CACHE_DIR": str(tmp_path / "cli-cache")})
    assert res.exit_code == 0, res.output
    assert "layout          packed (chosen: estimated cost per token" in res.output


def test_stats_say_how_many_tokenizer_processes_and_threads(monkeypatch):
    from xt.data.pipeline import encode_parallelism

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setenv("RAYON_NUM_THREADS", "3")
    assert encode_parallelism(1, 100) == {"encode_processes": 1, "encode_threads": 3}
    assert encode_parallelism(2, 100) == {"encode_processes": 2, "encode_threads": 1}  # forked: one thread each
    assert encode_parallelism(2, 3) == {"encode_processes": 1, "encode_threads": 3}  # too few rows to split
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert encode_parallelism(1, 100)["encode_threads"] == 1
