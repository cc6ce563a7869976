"""TrainConfig's sections, and the data section being exactly what the data pipeline takes."""

from __future__ import annotations

import dataclasses

import pytest
from xt.config import DATA_OPTION_OF, FIELD_NAMES, SECTIONS, TrainConfig, from_dict, resolve_config
from xt.data import DataOptions


def test_sections_cover_every_key_once_in_class_order():
    assert list(SECTIONS) == ["model", "data", "train", "eval", "output"]
    in_order = [key for keys in SECTIONS.values() for key in keys]
    assert in_order == FIELD_NAMES


def test_data_section_is_what_the_pipeline_takes():
    option_fields = {f.name for f in dataclasses.fields(DataOptions)}
    assert set(DATA_OPTION_OF.values()) <= option_fields
    assert set(SECTIONS["data"]) == {"dataset", "image_folder", *DATA_OPTION_OF}
    # what the pipeline takes beyond the data section comes from elsewhere, named here
    assert option_fields - set(DATA_OPTION_OF.values()) == {"split", "micro_batch_size", "seed", "attention_weight",
                                                                "causal_share", "context", "objective"}


def test_data_options_carry_every_data_key_and_the_run_context():
    cfg = from_dict(dict(model="m", dataset="d", data_files=["a.json"], image_folder="imgs", max_length=77,
                         pack="auto", length_policy="drop", skip_bad_rows=True, num_proc=3, data_cache_dir="c",
                         use_data_cache=False, micro_batch_size=5, seed=9, output="out", model_args={"k": 1}))
    options = cfg.data_options("validation", rank=1, world_size=2, attention_weight=0.25, causal_share=1.0)
    assert (options.data_files, options.split, options.max_length, options.pack, options.length_policy) == \
        (["a.json"], "validation", 77, "auto", "drop")
    assert (options.skip_bad_rows, options.num_proc, options.cache_dir, options.use_cache) == (True, 3, "c", False)
    assert (options.micro_batch_size, options.seed, options.attention_weight, options.causal_share) == (5, 9, 0.25, 1.0)
    context = options.context
    assert (context.image_folder, context.model_args, context.rank, context.world_size, context.run_dir) == \
        ("imgs", {"k": 1}, 1, 2, "out")
    assert TrainConfig().data_options().data_files is None  # no files: the dataset spec's own


def test_section_values_and_flat_keys_round_trip(tmp_path):
    cfg = resolve_config(cli={"model": "m", "dataset": "d"}, overrides=["lr=1e-3", "max_length=128"])
    assert cfg.section("train")["lr"] == pytest.approx(1e-3)
    assert cfg.section("data")["max_length"] == 128
    cfg.save(tmp_path / "config.yaml")
    assert resolve_config(tmp_path / "config.yaml") == cfg
