"""The pretraining runner at toy scale: it learns, and a run stopped mid-way resumes to the same result."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from experiments import pretrain  # noqa: E402
from experiments.data.tokenizer import train_gpt2_bpe  # noqa: E402
from experiments.provenance import REPO_ROOT  # noqa: E402


def toy_corpus(root):
    """train/validation text from the shipped Devil's Dictionary excerpt and a 400-token BPE."""
    lines = [line for line in (REPO_ROOT / "tests/data/devils_dictionary.txt").read_text().split("\n\n") if line]
    (root / "train.txt").write_text("\n".join(p.replace("\n", " ") for p in lines[:-40]) + "\n")
    (root / "validation.txt").write_text("\n".join(p.replace("\n", " ") for p in lines[-40:]) + "\n")
    train_gpt2_bpe([str(root / "train.txt")], root / "tokenizers" / "gpt2-bpe", 400)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return toy_corpus(tmp_path_factory.mktemp("corpus"))


def _args(corpus, out, **overrides):
    options = {"corpus": corpus, "tokenizer": corpus / "tokenizers/gpt2-bpe", "out": out, "steps": 8,
               "batch-size": 2, "seq-len": 32, "n-embd": 32, "n-layer": 2, "n-head": 2, "eval-every": 4,
               "eval-batches": 1, "checkpoint-every": 2, "method": "slope", "adapter-rank": "12.5%",
               "adapter-fraction": 0.25, "amp": "none", "lr": 3e-3} | overrides
    return [arg for key, value in options.items() for arg in (f"--{key}", str(value))]


@pytest.mark.parametrize("stop", [5, 6], ids=["mid-run", "at-the-adapter-step"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(corpus, tmp_path, stop):
    whole = pretrain.main(_args(corpus, tmp_path / "whole"))
    first = pretrain.main(_args(corpus, tmp_path / "split", **{"stop-after": stop}))
    assert len(first) == stop  # step 6 of 8 is where the adapters start: that checkpoint holds none yet
    resumed = pretrain.main(_args(corpus, tmp_path / "split"))
    assert resumed == whole  # every loss of every step, bit for bit
    a = torch.load(tmp_path / "whole/checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split/checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("lora_left" in k for k in a)  # adapters were added for the last 25% of the steps
    rows = list(csv.DictReader((tmp_path / "split/losses.csv").open()))
    assert len(rows) == 8 and rows[3]["val_loss"] and rows[7]["val_loss"]


def test_training_lowers_the_loss_and_refuses_a_changed_config(corpus, tmp_path):
    history = pretrain.main(_args(corpus, tmp_path / "run", steps=30, **{"checkpoint-every": 30, "eval-every": 30}))
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.5
    with pytest.raises(SystemExit, match="another configuration"):
        pretrain.main(_args(corpus, tmp_path / "run", steps=30, lr=1e-3))


def test_token_cache_is_rebuilt_for_another_tokenizer(corpus, tmp_path):
    """A cache records the tokenizer it was made with; a retrained tokenizer (same name) gets fresh ids."""
    from experiments.data.tokenizer import corpus_token_ids, load_tokenizer

    (tmp_path / "validation.txt").write_text((corpus / "validation.txt").read_text())
    first = load_tokenizer(corpus / "tokenizers/gpt2-bpe", "gpt2", 64)
    ids = corpus_token_ids(tmp_path, "validation", first, "bpe", first.eos_token_id)
    assert torch.equal(corpus_token_ids(tmp_path, "validation", first, "bpe", first.eos_token_id), ids)
    other = load_tokenizer(train_gpt2_bpe([str(corpus / "train.txt")], tmp_path / "other", 300), "gpt2", 64)
    again = corpus_token_ids(tmp_path, "validation", other, "bpe", other.eos_token_id)
    expected = [i for line in (tmp_path / "validation.txt").read_text().splitlines()
                for i in other(line, add_special_tokens=False)["input_ids"] + [other.eos_token_id]]
    assert again.tolist() == expected and not torch.equal(again, ids)


def test_compress_is_refused_where_it_cannot_run(corpus, tmp_path):
    with pytest.raises(SystemExit, match="--compress trains SLoPe 2:4 .* not --method srste --sparsity 2:4"):
        pretrain.main(_args(corpus, tmp_path / "a", method="srste", compress=True))
    with pytest.raises(SystemExit, match="not --method slope --sparsity 2:4-2:8"):
        pretrain.main(_args(corpus, tmp_path / "b", sparsity="2:4-2:8", compress=True))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--compress needs a CUDA GPU"):
            pretrain.main(_args(corpus, tmp_path / "c", compress=True))


def _gpu_args(corpus, out, **overrides):
    # every sparse-able dimension a multiple of 32 (cuSPARSELt); bf16 autocast, no dropout: runs comparable
    return _args(corpus, out, **{"n-embd": 64, "amp": "bf16", "dropout": 0.0, "steps": 12, "eval-every": 6,
                                 "checkpoint-every": 6, "adapter-fraction": 0.25, **overrides})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compressed_pretraining_tracks_the_simulated_run_and_resumes(corpus, tmp_path):
    simulated = pretrain.main(_gpu_args(corpus, tmp_path / "sim"))
    compressed = pretrain.main(_gpu_args(corpus, tmp_path / "comp", compress=True))
    for a, b in zip(simulated, compressed):  # bf16 values with fp32 masters vs fp32 weights under bf16 autocast
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.02 * a["train_loss"], (a, b)
    state = torch.load(tmp_path / "comp/checkpoint.pt", weights_only=False, map_location="cpu")
    assert set(state["optimizers"]) == {"model", "sparse", "adapters"}  # adapters came in at step 9 of 12
    assert all(s["master"].dtype == torch.float32 for s in state["optimizers"]["sparse"]["state"].values())
    sim_masks = {k.removesuffix(".mask"): v for k, v in
                 torch.load(tmp_path / "sim/checkpoint.pt", weights_only=False, map_location="cpu")["model"].items() if k.endswith(".mask")}
    from slope.kernels import nm_pack
    comp_masks = {k.removesuffix(".mask_nibbles"): nm_pack.unpack_nibbles(v.cuda()).cpu()
                  for k, v in state["model"].items() if k.endswith(".mask_nibbles")}
    assert comp_masks.keys() == sim_masks.keys() and all(torch.equal(comp_masks[k].bool(), sim_masks[k].bool()) for k in sim_masks)
    first = pretrain.main(_gpu_args(corpus, tmp_path / "split", compress=True, **{"stop-after": 6}))
    resumed = pretrain.main(_gpu_args(corpus, tmp_path / "split", compress=True))
    assert len(first) == 6 and len(resumed) == 12
    for a, b in zip(compressed, resumed):  # the same run, up to GPU reduction order
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-3 * a["train_loss"], (a, b)


def test_runners_import_the_slope_submodules_they_use():
    # The compressed and fp16 paths reach `slope.optim` through the package; on a fresh interpreter that works
    # only if something imports the submodule — the package does (found on the GPU: AttributeError in --compress).
    code = "import experiments.pretrain, experiments.bert_pretrain, slope; slope.optim.ADAMWSparse, slope.optim.DynamicLossScaler"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_the_package_exposes_its_optimizers_after_a_plain_import():
    subprocess.run([sys.executable, "-c", "import slope; slope.optim.ADAMWSparse, slope.optim.dense_parameters"],
                   check=True, cwd=Path(__file__).resolve().parents[1])
