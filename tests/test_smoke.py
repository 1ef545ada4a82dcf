import math

import pytest

pytest.importorskip("transformers")


def test_smoke_run_trains_every_method_and_writes_rows(tmp_path):
    from experiments import smoke

    out = tmp_path / "smoke.csv"
    rows = smoke.main(["--steps", "6", "--batch-size", "2", "--seq-len", "32", "--n-embd", "32", "--eval-batches", "1",
                       "--device", "cpu", "--output", str(out)])
    by_method = {row["method"]: row for row in rows}
    assert set(by_method) == set(smoke.METHODS)
    assert by_method["dense"]["sparse_layers"] == 0 and by_method["slope"]["sparse_layers"] == 7
    assert by_method["slope+adapters"]["adapter_loss_jump"] == 0.0  # adapters appear without moving the loss
    for row in rows:
        assert math.isfinite(row["val_loss"]) and row["final_train_loss"] < row["first_loss"]
    header = out.read_text().splitlines()[0]
    assert "git_sha" in header and len(out.read_text().splitlines()) == 1 + len(rows)
