"""performance_experiments.seed_notes: the tiled variants compute the layer (checked inside the benchmark against
a dense fp32 reference) and every section writes its rows; on a CPU the module refuses clearly."""
import csv

import pytest
import torch

from performance_experiments import seed_notes


def test_unknown_section_is_refused():
    with pytest.raises(SystemExit, match="--sections"):
        seed_notes.main(["--sections", "tiles_everywhere"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cpu_refuses_with_the_reason(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        seed_notes.main(["--output", str(tmp_path / "x.csv")])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_preset_writes_every_section(tmp_path):
    out = seed_notes.main(["--preset", "quick", "--output", str(tmp_path / "notes.csv")])
    rows = list(csv.DictReader(out.open()))
    assert {r["benchmark"] for r in rows} == {"out_probe", "out_write", "tile_streams", "hf_fp16"}
    assert all(r["git_sha"] and r["device"] for r in rows)
    timed = [r for r in rows if r["benchmark"] in ("out_write", "tile_streams")]
    assert all(float(r["median"]) > 0 and r["unit"] == "ms" for r in timed)
    ours = [r for r in rows if r["variant"].startswith("slope.optim")]
    assert ours and float(ours[0]["median"]) >= 1  # the library's fp16 route applies steps
