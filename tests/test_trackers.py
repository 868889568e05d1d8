"""Trackers for real, offline: a real training run's metrics.jsonl and samples replayed into TensorBoard, W&B and
MLflow, then read back with each library's own reader (TensorBoard's EventAccumulator, the records of W&B's
offline .wandb file, MlflowClient). Needs the `tracking` extra; each test skips when its library is absent."""

import json
import math
import struct
import sys

import pytest

from conftest import base_overrides
from rlft.config import Config
from rlft.errors import ConfigError
from rlft.trackers import flatten, open_trackers
from rlft.train import train

ROWS = [{"step": 4, "prompt": "1+2=", "completion": "3 | x\ny", "reward": 1.0, "finish": "eos",
         "tokens": ["3", " |"], "advantages": [0.5, -0.25]},
        {"step": 4, "prompt": "2+2=", "completion": "5", "reward": None, "finish": "length"}]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tiny_data, tmp_path_factory):
    """(config, the metric lines of a real 3-step run with an evaluation at steps 0 and 3)."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, out, **{
        "train.steps": 3, "data.eval": str(tiny_data), "train.eval_every": 3}))
    train(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lines[1]["loss/kl"] = float("nan")  # what a NaN looks like before log.py writes it as null
    lines[1]["note"] = "text"
    return cfg, lines


def _replay(names, out, cfg, lines):
    with open_trackers(names, out, "my-run", cfg.to_dict()) as t:
        for m in lines:
            t.log(m["step"], {k: v for k, v in m.items() if k != "step"})
        t.samples(4, ROWS)


def _assert_series(got, lines, key):
    """``got`` ((step, value) pairs read back) == the finite values of ``key`` in ``lines`` (float32 precision)."""
    want = [(m["step"], m[key]) for m in lines if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
    assert want, key
    assert [s for s, _ in got] == [s for s, _ in want], key
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key


def test_flatten_config():
    flat = flatten(Config.load(None, ["algo.kl_coef=0.05"]).to_dict())
    assert flat["algo.kl_coef"] == 0.05 and flat["model.lora.r"] == 0
    assert json.loads(flat["model.lora.target_modules"]) == ["all-linear"]  # a list goes in as JSON text


def test_tensorboard(run, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, lines = run
    _replay(["tensorboard"], tmp_path, cfg, lines)
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    ea.Reload()
    for key in ("reward/mean", "grad_norm", "eval/reward/mean", "perf/sample_seconds"):
        _assert_series([(e.step, e.value) for e in ea.Scalars(key)], lines, key)
    assert [e.step for e in ea.Scalars("loss/kl")] == [2, 3]  # the NaN at step 1 was skipped
    assert "note" not in ea.Tags()["scalars"] and "time" in ea.Tags()["scalars"]
    (text,) = ea.Tensors("samples/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert text.step == 4 and "| step | prompt | completion | reward | finish |" in table
    assert "3 \\| x\\ny" in table and "tokens" not in table  # one line per row; lists left out
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content)
    hp = start.session_start_info.hparams
    assert hp["algo.estimator"].string_value == cfg.algo.estimator
    assert hp["rollout.num_generations"].number_value == 4
    assert hp["run.name"].string_value == "my-run" and hp["run.folder"].string_value == str(tmp_path)


def _wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header (':W&B', magic, version), then LevelDB-log chunks
    (crc32, length, type) in 32 KiB blocks; type 1 = a whole record, 2/3/4 = first/middle/last piece."""
    from wandb.proto import wandb_internal_pb2

    data, pos, piece, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            break
        piece += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(piece)
            piece = b""
            yield rec


def test_wandb_offline(run, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg, lines = run
    _replay(["wandb"], tmp_path, cfg, lines)
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")  # default dir: the run folder
    history, config, name = {}, {}, None
    for rec in _wandb_records(next(folder.glob("run-*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "run":
            name = rec.run.display_name
            config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
    assert name == "my-run"
    assert config["algo.kl_coef"] == cfg.algo.kl_coef and config["run.folder"] == str(tmp_path)
    for key in ("reward/mean", "eval/reward/mean", "loss/pg"):
        _assert_series([(s, h[key]) for s, h in sorted(history.items()) if key in h], lines, key)
    assert "loss/kl" not in history[1] and "note" not in history[1]
    assert history[4]["samples/_type"] == "table-file"
    t = json.loads((folder / "files" / history[4]["samples/path"]).read_text())
    assert t["columns"] == ["step", "prompt", "completion", "reward", "finish"]
    assert t["data"][0][2] == "3 | x\ny" and t["data"][1][3] is None


def test_mlflow_local_store(run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    cfg, lines = run
    _replay(["mlflow"], tmp_path, cfg, lines)
    db = tmp_path / "mlruns" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    (r,) = client.search_runs([client.get_experiment_by_name("rlft").experiment_id])
    assert r.info.run_name == "my-run" and r.info.status == "FINISHED" and r.data.tags["rlft.out"] == str(tmp_path)
    assert r.data.params["algo.estimator"] == cfg.algo.estimator and r.data.params["rollout.num_generations"] == "4"
    for key in ("reward/mean", "eval/reward/mean", "grad_norm"):
        _assert_series(sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)), lines, key)
    assert [m.step for m in client.get_metric_history(r.info.run_id, "loss/kl")] == [2, 3]
    path = client.download_artifacts(r.info.run_id, "samples/step_000004.json", str(tmp_path / "dl"))
    t = json.loads(open(path).read())
    assert t["columns"] == ["step", "prompt", "completion", "reward", "finish"]
    assert t["data"][0][1:3] == ["1+2=", "3 | x\ny"]
    assert (tmp_path / "mlruns" / "artifacts").is_dir()  # artifacts beside the store, not in the working folder


def test_unknown_tracker_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"log.report_to: unknown tracker 'tensorbaord'; choose among tensorboard"):
        open_trackers(["tensorbaord"], tmp_path, "r", {})


def test_missing_library_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python marks a module that cannot be imported
    with pytest.raises(ConfigError, match=r"names wandb, but the 'wandb' package is not installed: "
                                          r"pip install 'rlft\[tracking\]'"):
        open_trackers(["tensorboard", "wandb"], tmp_path, "r", {})
    assert not (tmp_path / "tensorboard").exists()  # checked before any tracker opened
