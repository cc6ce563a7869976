"""``report_to``: TensorBoard (default), Weights & Biases (offline run folder) and MLflow (file store)
receive the same losses as ``metrics.jsonl``, the config and the eval samples."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import DATASET, MODEL, make_model_dir, register_test_plugin  # noqa: E402
from xt.config import from_dict  # noqa: E402
from xt.errors import XtError  # noqa: E402


def wandb_records(run_file: Path) -> list:
    """Records of a W&B ``.wandb`` file, read independently of wandb's writer: a 7-byte file header,
    then LevelDB-log chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending, records = run_file.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (2, 3) or (kind == 0 and length == 0):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from xt.train.loop import train

    tmp = tmp_path_factory.mktemp("trackers")
    register_test_plugin(make_model_dir(tmp / "tiny-llama"))
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        cfg = from_dict(dict(model=MODEL, dataset=DATASET, max_steps=6, lr=1e-2, micro_batch_size=2, max_length=64,
                             warmup_steps=0, save_steps=0, save_total_limit=0, output=str(tmp / "run"),
                             data_cache_dir=str(tmp / "cache"), val_ratio=0.1, eval_steps=3, eval_samples=2,
                             eval_max_new_tokens=3, report_to=["wandb", "mlflow"]))
        run_dir = train(cfg, overwrite=True)
    finally:
        patch.undo()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, records


def test_wandb_offline_run_has_the_same_losses_config_and_samples(tracked_run):
    run_dir, records = tracked_run
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    parsed = wandb_records(run_file)
    history = {}
    for record in parsed:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            history.setdefault(record.history.step.num, {}).update(items)
    expected = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert {step: float(v["loss"]) for step, v in history.items() if "loss" in v} == pytest.approx(expected, rel=1e-12)
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert len(evals) == 2
    assert {s: float(history[s]["eval_loss"]) for s in evals} == pytest.approx(evals, rel=1e-12)
    assert all("eval_samples/_type" in history[s] for s in evals)  # the eval samples table at each eval
    (run,) = [r.run for r in parsed if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["lr"] == 0.01 and config["report_to"] == ["wandb", "mlflow"]


def test_mlflow_file_store_has_the_same_losses_config_and_samples(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, records = tracked_run
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())  # the file store xt chose
    (run,) = client.search_runs([client.get_experiment_by_name("xt").experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx({r["step"]: r["loss"] for r in records if "loss" in r}, rel=1e-12)
    eval_history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")}
    assert eval_history == pytest.approx({r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}, rel=1e-12)
    assert run.data.params["lr"] == "0.01" and run.info.status == "FINISHED"
    samples_file = Path(client.download_artifacts(run.info.run_id, "eval/step-6.json", str(run_dir / "dl")))
    samples = json.loads(samples_file.read_text())
    on_disk = [json.loads(line) for line in (run_dir / "eval" / "step-6.jsonl").read_text().splitlines()]
    assert samples == on_disk and len(samples) == 2


def test_unknown_or_missing_tracker_is_one_sentence(monkeypatch):
    import importlib.util

    with pytest.raises(XtError, match="unknown tracker 'wandbb'; choose from tensorboard, wandb, mlflow"):
        from_dict({"report_to": ["wandbb"]})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(XtError) as info:
        from_dict({"report_to": ["tensorboard", "mlflow"]})
    assert str(info.value) == ("config: report_to includes 'mlflow' but the mlflow package is not installed; "
                               "pip install 'xt-core[mlflow]'.")
