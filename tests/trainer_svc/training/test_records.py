import json

from trainer_svc.training.records import JsonlRecord, TrainedSamples, plot_loss, read_jsonl


def test_trained_samples_groups_micro_batches_by_step(tmp_path):
    trained = TrainedSamples(JsonlRecord(tmp_path / "t.jsonl", truncate=True))
    trained.add(0, [1, 2])
    trained.add(0, [3])
    trained.add(1, [4])
    trained.flush()
    trained.flush()
    assert read_jsonl(tmp_path / "t.jsonl") == [
        {"step": 0, "indices": [1, 2, 3]},
        {"step": 1, "indices": [4]},
    ]


def test_truncate_starts_a_fresh_file(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps({"old": 1}) + "\n")
    JsonlRecord(tmp_path / "s.jsonl", truncate=True).append({"new": 1})
    assert read_jsonl(tmp_path / "s.jsonl") == [{"new": 1}]


def test_plot_loss_writes_a_png_or_nothing(tmp_path):
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"train_runtime": 1}]
    path = plot_loss(history, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss([{"train_runtime": 1}], tmp_path / "none.png") is None
