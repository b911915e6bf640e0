"""The training facts REPORT.md takes from a run's log: a run paused twice and resumed, and a fresh one."""
import json

from train import report


def _log(tmp_path, events):
    path = tmp_path / "run.log.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(path)


def _epoch(n, seconds):
    return {"event": "epoch", "epoch": n, "train_acc": 0.5, "epoch_seconds": seconds}


def test_a_resumed_run_counts_its_resumes_and_the_median_epoch_of_every_piece(tmp_path):
    events = [{"event": "start", "device_name": "x86_64", "epochs": 4, "train_images": 12, "data": "a.tar.xz",
               "amp": True}, _epoch(1, 20.0), _epoch(2, 90.0),
              {"event": "resume", "epoch": 2}, _epoch(3, 21.0),
              {"event": "resume", "epoch": 3}, _epoch(4, 22.0),
              {"event": "done", "epochs": 4, "train_seconds": 153.0}]
    facts = report._read_log(_log(tmp_path, events))
    assert facts["resumes"] == 2
    assert facts["median_epoch_seconds"] == 21.5  # of 20, 21, 22 and the slowed 90
    assert (facts["epochs"], facts["train_seconds"], facts["planned_epochs"]) == (4, 153.0, 4)


def test_a_log_without_epoch_times_has_no_median(tmp_path):
    events = [{"event": "start", "epochs": 1, "train_images": 12}, {"event": "epoch", "epoch": 1, "train_acc": 0.5}]
    facts = report._read_log(_log(tmp_path, events))
    assert facts["resumes"] == 0 and "median_epoch_seconds" not in facts
    assert report._seconds(facts.get("median_epoch_seconds")) == "n/a"


def test_the_gpu_console_log_is_cited_only_while_a_shipped_run_trained_on_a_gpu(tmp_path):
    console = tmp_path / "console.log"
    console.write_text("[ce] event=start device=cuda device_name=NVIDIA H200 train_images=12306\nall runs finished in 421.0s\n")
    cpu = report._read_log(_log(tmp_path, [{"event": "start", "device": "cpu", "epochs": 1, "train_images": 12}]))
    gpu = dict(cpu, on_gpu=True)
    assert cpu["on_gpu"] is False
    assert "console.log" not in report._console_facts(str(console), {"proco": cpu, "ldam": {}})
    assert "NVIDIA H200, 421 s" in report._console_facts(str(console), {"proco": cpu, "ce": gpu})
