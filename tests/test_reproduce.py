"""`make reproduce` runs the stages that exist in order, reports missing / failed ones by name, and resumes."""
import shutil

import pytest

from experiments import reproduce

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

MAKEFILE = """\
VENV ?= .venv
STAMP := $(VENV)/stamp
.PHONY: data gpt2-zeroshot bert-glue claims
data:
\tmkdir -p data/corpus/tokenizers/gpt2-bpe-4k data/evalsets/slope_perplexity data/finetune/span
\ttouch data/corpus/manifest.json data/corpus/tokenizers/gpt2-bpe-4k/tokenizer.json data/finetune/span/validation.jsonl
\techo data >> log
gpt2-zeroshot:
\techo "gpt2 $(SCALE) $(SEEDS) $(RESULTS_DIR) $(RUNS_DIR)" >> log
bert-glue:
\techo glue >> log; exit 3
claims:
\techo "claims [$(SCALE)]" >> log
"""


def _checkout(tmp_path, makefile=MAKEFILE):
    (tmp_path / "Makefile").write_text(makefile)
    return tmp_path


def test_stages_run_in_order_and_missing_or_failed_ones_are_named(tmp_path, capsys):
    root = _checkout(tmp_path)
    assert reproduce.make_targets(root / "Makefile") >= {"data", "gpt2-zeroshot", "bert-glue", "claims"}
    assert "STAMP" not in reproduce.make_targets(root / "Makefile")
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["--root", str(root), "--scale", "tiny", "--seeds", "0,1"])
    assert exit_.value.code == 1
    # claims runs after a failed stage, with SCALE emptied so it judges the largest scale present
    # by default a fresh reproduction into runs/reproduce/<scale>/ (the committed tables would make it skip all work)
    assert (root / "log").read_text().splitlines() == [
        "data", "gpt2 tiny 0,1 runs/reproduce/tiny/results runs/reproduce/tiny/runs", "glue", "claims []"]
    err = capsys.readouterr().err
    # make exits 2 when a recipe fails
    assert "no `make bert-squad` target" in err and "bert-glue failed (exit 2)" in err
    assert "incomplete: bert-glue, bert-squad, bert-mixed" in err

    # rerun: data outputs exist, so it is skipped; missing targets tolerated with --allow-missing
    (root / "log").unlink()
    reports = reproduce.main(["--root", str(root), "--scale", "tiny", "--allow-missing", "--results-dir", "results",
                              "--stages", "data,gpt2-zeroshot,bert-mixed,claims"])
    assert [r["status"] for r in reports] == ["done before", "ran", "missing", "ran"]
    assert (root / "log").read_text().splitlines() == ["gpt2 tiny 0,1,2 results ", "claims []"]
    assert (root / "runs" / "reproduce" / "tiny.json").exists()


def test_a_failed_data_stage_stops_everything(tmp_path):
    root = _checkout(tmp_path, MAKEFILE.replace("\techo data >> log", "\texit 2"))
    with pytest.raises(SystemExit):
        reproduce.main(["--root", str(root), "--scale", "tiny", "--rebuild-data"])
    assert not (root / "log").exists()


def test_bad_arguments_are_refused(tmp_path, capsys):
    for argv in (["--stages", "data,bert-nope"], ["--seeds", "a,b"]):
        with pytest.raises(SystemExit):
            reproduce.main(["--root", str(_checkout(tmp_path)), *argv])
    err = capsys.readouterr().err
    assert "--stages: unknown ['bert-nope']" in err and "--seeds 'a,b'" in err
