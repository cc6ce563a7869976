"""Bad input: each a clear XtError (or the documented skip/count), and a non-zero CLI exit."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from xt.cli import cli
from xt.data import DataOptions, build_dataset, load_conversations
from xt.errors import XtError
from xt.plugins import get_registry

try:
    from .test_data_support import TEST_DATASET, TEST_MODEL, alpaca_spec, register_test_plugin
except ImportError:
    from test_data_support import TEST_DATASET, TEST_MODEL, alpaca_spec, register_test_plugin

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi!"}


def _write(path, rows):
    path.write_text(json.dumps(rows))
    return str(path)


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"instruction": "x", "output": "y"},\n {"instruction": ]')
    with pytest.raises(XtError, match=r"Malformed JSON in '.*bad\.json' at line 2"):
        load_conversations(alpaca_spec([str(path)]), DataOptions())
    jl = tmp_path / "bad.jsonl"
    jl.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(XtError, match=r"bad\.jsonl' on line 2"):
        load_conversations(alpaca_spec([str(jl)]), DataOptions())


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(XtError, match="is empty"):
        load_conversations(alpaca_spec([str(empty)]), DataOptions())
    with pytest.raises(XtError, match="holds no rows"):
        load_conversations(alpaca_spec([_write(tmp_path / "none.json", [])]), DataOptions())
    with pytest.raises(XtError, match="does not exist.*--data-files"):
        load_conversations(alpaca_spec([str(tmp_path / "nope.json")]), DataOptions())
    with pytest.raises(XtError, match="No files match"):
        load_conversations(alpaca_spec([str(tmp_path / "*.parquet")]), DataOptions())


def test_bad_rows_named_with_file_index_and_reason(tmp_path, sp_tokenizer):
    rows = [GOOD, {"instruction": "no output"}, {"instruction": 3, "input": "", "output": "x"},
            {"instruction": "empty reply", "input": "", "output": "  "}, GOOD, "not a dict"]
    path = _write(tmp_path / "rows.json", rows)
    with pytest.raises(XtError) as err:
        load_conversations(alpaca_spec([path]), DataOptions())
    msg = str(err.value)
    assert "4 of 6 rows" in msg and "rows.json row 1: missing key 'output'" in msg
    assert "row 2: instruction, input and output must be strings" in msg
    assert "row 3: message 1 is an empty assistant reply" in msg
    assert "row 5: a row must be an object" in msg and "--skip-bad-rows" in msg
    convs = load_conversations(alpaca_spec([path]), DataOptions(skip_bad_rows=True))
    assert len(convs) == 2
    ds = build_dataset(alpaca_spec([path]), get_registry().get("templates", "default"), sp_tokenizer,
                       DataOptions(skip_bad_rows=True, use_cache=False))
    assert ds.stats["skipped"] == 4 and ds.stats["samples"] == 2


def test_many_bad_rows_show_first_few_and_total(tmp_path):
    path = _write(tmp_path / "many.json", [{"x": i} for i in range(40)])
    with pytest.raises(XtError, match=r"40 of 40 rows .*\(first 5 shown\)") as err:
        load_conversations(alpaca_spec([path]), DataOptions(num_proc=2))
    assert "many.json row 4:" in str(err.value) and "row 5:" not in str(err.value)


def test_length_policies(tmp_path, sp_tokenizer):
    long = {"instruction": "Tell me a story.", "input": "", "output": "once upon a time " * 60}
    path = _write(tmp_path / "long.json", [GOOD, long])
    template = get_registry().get("templates", "default")
    drop = build_dataset(alpaca_spec([path]), template, sp_tokenizer,
                         DataOptions(max_length=64, length_policy="drop", use_cache=False))
    assert drop.stats["dropped"] == 1 and drop.stats["samples"] == 1 and drop.stats["truncated"] == 0
    cut = build_dataset(alpaca_spec([path]), template, sp_tokenizer, DataOptions(max_length=64, use_cache=False))
    assert cut.stats["truncated"] == 1 and cut.stats["samples"] == 2 and max(cut.lengths) <= 64
    # The vectorized pipeline equals the one-sample rule (apply_length_policy) sample by sample.
    from xt.data.process import apply_length_policy

    rows = build_dataset(alpaca_spec([path]), template, sp_tokenizer,
                         DataOptions(max_length=64, pack=False, use_cache=False))
    convs = load_conversations(alpaca_spec([path]), DataOptions())
    expected = [apply_length_policy(template.encode(c, sp_tokenizer), 64, "truncate")[0] for c in convs]
    assert [{k: r[k] for k in ("input_ids", "labels")} for r in rows] == expected
    assert [r["position_ids"] for r in rows] == [list(range(len(e["input_ids"]))) for e in expected]
    # A sample whose reply is cut away entirely has nothing to learn: dropped and counted.
    long_prompt = {"instruction": "word " * 100, "input": "", "output": "ok"}
    path2 = _write(tmp_path / "prompt.json", [GOOD, long_prompt])
    res = build_dataset(alpaca_spec([path2]), template, sp_tokenizer, DataOptions(max_length=32, use_cache=False))
    assert res.stats["dropped_no_labels"] == 1 and res.stats["samples"] == 1
    with pytest.raises(XtError, match="No sample .* left") as err:
        build_dataset(alpaca_spec([path2]), template, sp_tokenizer,
                      DataOptions(max_length=4, length_policy="drop", use_cache=False))
    assert "--set max_length=N" in str(err.value)  # the option xt train really has


def test_hub_unreachable_fails_fast(monkeypatch):
    from xt.specs import DatasetSpec

    spec = DatasetSpec(name="hubby", map_row=lambda r: r, source="someone/some-dataset")
    for offline in ("1", None):
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        else:
            for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
                monkeypatch.delenv(var, raising=False)
        start = time.monotonic()
        with pytest.raises(XtError, match="--data-files"):
            load_conversations(spec, DataOptions())
        assert time.monotonic() - start < 10


def test_other_formats(tmp_path):
    import datasets

    rows = [GOOD, {"instruction": "Add", "input": "1+1", "output": "2"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    (tmp_path / "b.csv").write_text("instruction,input,output\nSay hi.,,Hi!\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for files, n in (([str(tmp_path / "a.parquet")], 2), ([str(tmp_path / "b.csv")], 1),
                     ([str(tmp_path / "*.jsonl"), str(tmp_path / "a.parquet")], 4), ([str(tmp_path / "saved")], 2)):
        convs = load_conversations(alpaca_spec(files), DataOptions())
        assert len(convs) == n and convs[0]["messages"][1]["content"] == "Hi!"


def test_generated_rows_take_priority():
    spec = alpaca_spec(generate=lambda split, seed: [dict(GOOD, output=f"seed {seed}")])
    assert load_conversations(spec, DataOptions(seed=3))[0]["messages"][1]["content"] == "seed 3"


def test_cli_stats_and_preview(tmp_path, sp_tokenizer, alpaca_file):
    register_test_plugin(sp_tokenizer, alpaca_file)
    runner = CliRunner()
    env = {"XT_CACHE_DIR": str(tmp_path / "cache")}
    good = _write(tmp_path / "good.json", [GOOD, {"instruction": "Add", "input": "1+1", "output": "2"}])
    res = runner.invoke(cli, ["data", "preview", "--dataset", TEST_DATASET, "--model", TEST_MODEL,
                              "--data-files", good, "-n", "2"], env=env)
    assert res.exit_code == 0, res.output
    assert "[[Hi!</s>]]" in res.output and "[[2</s>]]" in res.output and "<|user|>" in res.output
    res = runner.invoke(cli, ["data", "stats", "--dataset", TEST_DATASET, "--model", TEST_MODEL,
                              "--data-files", good, "--max-length", "128"], env=env)
    assert res.exit_code == 0, res.output
    assert "rows            2" in res.output and "fill" in res.output
    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    res = runner.invoke(cli, ["data", "stats", "--dataset", TEST_DATASET, "--model", TEST_MODEL,
                              "--data-files", str(bad)], env=env)
    assert res.exit_code == 2 and "Malformed JSON" in res.output
    res = runner.invoke(cli, ["data", "stats", "--dataset", "no-such-set", "--model", TEST_MODEL], env=env)
    assert res.exit_code == 2 and "Unknown dataset" in res.output
