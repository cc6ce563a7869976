"""The processed-data cache: reused without re-tokenizing, rebuilt when anything that matters changes."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import replace

import pytest
from xt.data import DataOptions, build_dataset, tokenizer_fingerprint
from xt.data.process import counters
from xt.errors import XtError
from xt.plugins import get_registry

try:
    from .test_data_support import alpaca_spec
except ImportError:
    from test_data_support import alpaca_spec

ROWS = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} " * (i % 7 + 1)} for i in range(60)]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS))
    return path


def _build(path, cache, tokenizer, template="default", **opts):
    options = DataOptions(max_length=opts.pop("max_length", 128), cache_dir=str(cache), **opts)
    return build_dataset(alpaca_spec([str(path)]), get_registry().get("templates", template), tokenizer, options)


def test_second_build_reuses_cache_and_changes_rebuild(data_file, tmp_path, sp_tokenizer, bpe_tokenizer):
    cache = tmp_path / "cache"
    first = _build(data_file, cache, sp_tokenizer)
    assert first.stats["cached"] is False and os.path.isdir(first.stats["cache_path"])
    before = counters["encoded"]
    second = _build(data_file, cache, sp_tokenizer)
    assert second.stats["cached"] is True and counters["encoded"] == before  # nothing re-tokenized
    assert [second[i] for i in range(len(second))] == [first[i] for i in range(len(first))]
    assert second.lengths == first.lengths

    changes = [dict(template="chatml"), dict(max_length=96), dict(length_policy="drop"), dict(pack=False),
               dict(tokenizer=bpe_tokenizer)]
    paths = {first.stats["cache_path"]}
    for change in changes:
        again = _build(data_file, cache, **{"tokenizer": sp_tokenizer, **change})
        assert again.stats["cached"] is False, change
        paths.add(again.stats["cache_path"])
    assert len(paths) == len(changes) + 1
    # Changing the file contents (same name) rebuilds too.
    data_file.write_text(json.dumps(ROWS[:-1]))
    assert _build(data_file, cache, sp_tokenizer).stats["cached"] is False
    # A no-cache build writes nothing.
    assert _build(data_file, tmp_path / "unused", sp_tokenizer, use_cache=False).stats["cache_path"] is None
    assert not (tmp_path / "unused").exists()


def test_map_identity_changes_key(data_file, tmp_path, sp_tokenizer):
    cache = tmp_path / "cache"
    template, tok = get_registry().get("templates", "default"), sp_tokenizer
    spec = alpaca_spec([str(data_file)])
    build_dataset(spec, template, tok, DataOptions(cache_dir=str(cache)))

    def other_map(row):
        return {"messages": [{"role": "user", "content": row["instruction"]},
                             {"role": "assistant", "content": row["output"].upper()}]}

    res = build_dataset(replace(spec, map_row=other_map), template, tok, DataOptions(cache_dir=str(cache)))
    assert res.stats["cached"] is False


def test_tokenizer_fingerprint_sees_vocab_changes(bpe_tokenizer, sp_tokenizer):
    from transformers import PreTrainedTokenizerFast

    a = bpe_tokenizer
    b = PreTrainedTokenizerFast(tokenizer_object=a.backend_tokenizer.__class__.from_str(a.backend_tokenizer.to_str()),
                                eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    b.add_tokens(["<new_token>"])
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(sp_tokenizer)


def test_num_proc_gives_the_same_result(data_file, tmp_path, sp_tokenizer):
    one = _build(data_file, tmp_path / "c", sp_tokenizer, use_cache=False)
    two = _build(data_file, tmp_path / "c", sp_tokenizer, use_cache=False, num_proc=2)
    assert [one[i] for i in range(len(one))] == [two[i] for i in range(len(two))]


def _rank_worker(rank, path, cache, tokenizer, queue):
    try:
        ds = build_dataset(alpaca_spec([path]), get_registry().get("templates", "default"), tokenizer,
                           DataOptions(max_length=128, cache_dir=cache), rank=rank, world_size=2)
        queue.put((rank, "ok", ds.stats["cached"], len(ds)))
    except XtError as exc:
        queue.put((rank, "error", str(exc), 0))


def _run_ranks(path, cache, tokenizer):
    ctx = multiprocessing.get_context("fork")  # the forked ranks inherit the loaded tokenizer
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_worker, args=(r, path, cache, tokenizer, queue)) for r in (1, 0)]  # waiter first
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    return results


def test_rank_zero_builds_and_others_wait(data_file, tmp_path, sp_tokenizer):
    results = _run_ranks(str(data_file), str(tmp_path / "cache"), sp_tokenizer)
    assert [r[1] for r in results] == ["ok", "ok"]
    assert results[0][2] is False and results[1][2] is True  # rank 1 loaded what rank 0 wrote
    assert results[0][3] == results[1][3]


def test_rank_zero_failure_stops_the_waiters(tmp_path, sp_tokenizer):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "no output"}]))
    results = _run_ranks(str(bad), str(tmp_path / "cache"), sp_tokenizer)
    assert results[0][1] == "error" and "cannot be used" in results[0][2]
    assert results[1][1] == "error" and "Rank 0 failed" in results[1][2] and "cannot be used" in results[1][2]


def test_generator_fingerprint_follows_its_module_tables(tmp_path, monkeypatch):
    """Editing a data table that a generator reads (not the function itself) changes the cache key."""
    import importlib

    from xt.data.load import callable_fingerprint

    module = tmp_path / "gen_tables_mod.py"
    body = "TABLE = {table!r}\n\ndef generate(split, seed):\n    return [dict(q=k, a=v) for k, v in TABLE.items()]\n"
    module.write_text(body.format(table={"a": "b"}))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("gen_tables_mod")
    before = callable_fingerprint(mod.generate)
    module.write_text(body.format(table={"a": "c"}))
    mod = importlib.reload(mod)
    assert callable_fingerprint(mod.generate) != before
