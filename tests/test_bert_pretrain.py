"""BERT at toy scale: MLM pretraining resumes bit for bit; fine-tuning keeps the sparsity (SLoPe and Wanda)."""
import csv
import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("sklearn")

import slope  # noqa: E402
from experiments import bert_pretrain, finetune, finetune_sets  # noqa: E402
from experiments.data.tokenizer import train_bert_wordpiece  # noqa: E402
from experiments.provenance import REPO_ROOT  # noqa: E402
from tests.test_finetune_sets import _corpus as finetune_corpus  # noqa: E402


def toy_bert_data(root):
    """train/validation text from the shipped Devil's Dictionary excerpt, a 400-token WordPiece, toy tasks."""
    lines = [line for line in (REPO_ROOT / "tests/data/devils_dictionary.txt").read_text().split("\n\n") if line]
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("\n".join(p.replace("\n", " ") for p in lines[:-40]) + "\n")
    (corpus / "validation.txt").write_text("\n".join(p.replace("\n", " ") for p in lines[-40:]) + "\n")
    train_bert_wordpiece([str(corpus / "train.txt")], corpus / "tokenizers" / "bert-wordpiece", 400)
    (root / "tasks").mkdir()
    finetune_sets.build_finetune_sets(finetune_corpus(root / "tasks"), root / "finetune", train_items=64,
                                      validation_items=24)
    return corpus, root / "finetune"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return toy_bert_data(tmp_path_factory.mktemp("bert"))


# a 2-layer, hidden-64 BERT on 32-token windows: seconds per run on 2 cores
TOY = {"steps": 8, "batch-size": 4, "seq-len": 32, "hidden": 64, "n-layer": 2, "n-head": 2, "intermediate": 128,
       "eval-every": 4, "eval-batches": 1, "checkpoint-every": 2, "amp": "none", "lr": 3e-3}
TOY_FINETUNE = {"steps": 3, "batch_size": 4, "seq_len": 32, "span_seq_len": 32, "doc_stride": 8, "max_query_len": 12,
                "eval_limit": 12, "calibration_batches": 1, "amp": "none"}


def _args(corpus, out, **overrides):
    options = {"corpus": corpus, "tokenizer": corpus / "tokenizers/bert-wordpiece", "out": out, "method": "slope",
               "adapter-rank": "12.5%", "adapter-fraction": 0.25, **TOY} | overrides
    return [arg for key, value in options.items() for arg in (f"--{key}", str(value))]


@pytest.mark.parametrize("stop", [5, 6], ids=["mid-run", "at-the-adapter-step"])
def test_interrupted_pretraining_resumes_to_the_uninterrupted_result(data, tmp_path, stop):
    corpus, _ = data
    whole = bert_pretrain.main(_args(corpus, tmp_path / "whole", optimizer="lamb"))
    first = bert_pretrain.main(_args(corpus, tmp_path / "split", optimizer="lamb", **{"stop-after": stop}))
    assert len(first) == stop  # step 6 of 8 is where the adapters start: that checkpoint holds none yet
    resumed = bert_pretrain.main(_args(corpus, tmp_path / "split", optimizer="lamb"))
    assert resumed == whole  # every loss of every step, bit for bit (masks and batches come from the checkpoint)
    a = torch.load(tmp_path / "whole/checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split/checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("lora_left" in k for k in a)  # adapters were added for the last 25% of the steps
    rows = list(csv.DictReader((tmp_path / "split/losses.csv").open()))
    assert len(rows) == 8 and rows[3]["val_loss"] and rows[7]["val_loss"]
    with pytest.raises(SystemExit, match="another configuration"):
        bert_pretrain.main(_args(corpus, tmp_path / "split", optimizer="adamw"))


def test_a_rank_run_started_from_a_rank0_branch_equals_one_run_from_scratch(data, tmp_path):
    corpus, _ = data
    rank0 = bert_pretrain.main(_args(corpus, tmp_path / "r0", **{"adapter-rank": "0"}))
    branch = torch.load(tmp_path / "r0" / bert_pretrain.BRANCH, weights_only=False)
    assert branch["step"] == 6 and "adapters" not in branch["optimizers"]  # before where rank-r adapters start
    scratch = bert_pretrain.main(_args(corpus, tmp_path / "scratch"))
    cfg = bert_pretrain.parse_config(bert_pretrain.PRESETS, "", _args(corpus, tmp_path / "branched"))
    assert bert_pretrain.start_from_branch(cfg, tmp_path / "r0")
    assert bert_pretrain.start_from_branch(cfg, tmp_path / "r0") is False  # has its own checkpoint now
    branched = bert_pretrain.train(cfg)
    assert branched == scratch and branched[:6] == rank0[:6] and branched[6:] != rank0[6:]
    a = torch.load(tmp_path / "scratch/checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "branched/checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and any("lora_left" in k for k in a)
    other = bert_pretrain.parse_config(bert_pretrain.PRESETS, "", _args(corpus, tmp_path / "other", lr=1e-3))
    with pytest.raises(ValueError, match="more than the adapter rank"):
        bert_pretrain.start_from_branch(other, tmp_path / "r0")


def _sparse_masks(model):
    return {name.removeprefix("bert."): layer.mask.clone() for name, layer in slope.sparse_layers(model).items()}


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """Finished 4-step runs: SLoPe 2:4-2:8 with adapters, and dense."""
    corpus, _ = data
    root = tmp_path_factory.mktemp("pretrained")
    short = {"steps": 4, "eval-every": 4, "checkpoint-every": 4}
    bert_pretrain.main(_args(corpus, root / "slope", sparsity="2:4-2:8", **short))
    bert_pretrain.main(_args(corpus, root / "dense", method="dense", **{"adapter-rank": "0"}, **short))
    return root


def test_finetuning_keeps_the_pretrained_mask_and_adapters_and_scores_tasks(data, pretrained, tmp_path):
    _, tasks = data
    _, _, mlm, _ = bert_pretrain.load_pretrained(pretrained / "slope")
    before = _sparse_masks(mlm)
    results = {}
    for task in ("coherence", "span"):
        cfg = finetune.FinetuneConfig(task=task, pretrained=str(pretrained / "slope"), data=str(tasks),
                                      out=str(tmp_path / task), span_steps=5, **TOY_FINETUNE)
        results[task] = finetune.finetune(cfg)
        model, *_ = finetune.build_task_model(cfg)
        after = _sparse_masks(model)
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        assert slope.lora_parameters(model)  # the adapters came along
    assert set(results["coherence"]["metrics"]) == {"acc", "f1"} and set(results["span"]["metrics"]) == {"em", "f1"}
    # the span task ran its own step count, the classification task the common one
    assert len(results["span"]["train_losses"]) == 5 and len(results["coherence"]["train_losses"]) == 3
    assert all(-1 <= v <= 1 for r in results.values() for v in r["metrics"].values())
    saved = json.loads((tmp_path / "span/metrics.json").read_text())
    assert saved["final_val_loss"] == results["span"]["final_val_loss"] != ""
    cfg = finetune.FinetuneConfig(task="span", pretrained=str(pretrained / "slope"), data=str(tasks),
                                  out=str(tmp_path / "span"), span_steps=5, **TOY_FINETUNE)
    assert finetune.finetune(cfg) == results["span"]  # an identical configuration is not trained again


def test_span_tasks_take_their_own_recipe_where_one_is_set():
    small = finetune.PRESETS["small"]
    assert finetune.recipe(replace(small, task="span")) == (small.span_steps, small.lr) != (small.steps, small.lr)
    assert finetune.recipe(replace(small, task="coherence")) == (small.steps, small.lr)
    assert finetune.recipe(replace(small, task="squad", span_steps=7, span_lr=0.0)) == (7, small.lr)


def test_wanda_prunes_the_dense_model_and_the_mask_survives_finetuning(data, pretrained, monkeypatch):
    _, tasks = data
    seen = {}
    original = finetune.evaluate

    def spy(cfg, model, *args, **kwargs):  # look at the model as it is scored, after fine-tuning
        seen["layers"] = slope.sparse_layers(model)
        return original(cfg, model, *args, **kwargs)

    monkeypatch.setattr(finetune, "evaluate", spy)
    cfg = finetune.FinetuneConfig(task="source", pretrained=str(pretrained / "dense"), data=str(tasks), prune="wanda",
                                  sparsity="2:4-2:8", **TOY_FINETUNE)
    assert set(finetune.finetune(cfg)["metrics"]) == {"acc"}
    layers = seen["layers"]
    assert layers and "bert.encoder.layer.0.attention.self.query" not in layers  # block 0's attention input: dense
    for name, layer in layers.items():
        n, m = (2, 4) if slope.block_index(name) == 0 else (2, 8)
        assert (layer.n, layer.m) == (n, m) and slope.is_nm_sparse(layer.weight.detach(), n, m)
    with pytest.raises(SystemExit, match="prunes a dense model"):
        finetune.finetune(replace(cfg, pretrained=str(pretrained / "slope")))


def test_two_processes_pretrain_like_one_and_resume_on_one(data, tmp_path):
    """torchrun with 2 gloo processes: per-step MLM loss as one process (dropout off), masks bit for bit; a
    2-process checkpoint resumes on 1 process to the same end."""
    import subprocess
    import sys

    corpus, _ = data
    args = _args(corpus, tmp_path / "one", dropout=0.0, **{"grad-accumulation": 2})
    one = bert_pretrain.main(args)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "experiments.bert_pretrain"]
    subprocess.run([*launch, *_args(corpus, tmp_path / "two", dropout=0.0, **{"grad-accumulation": 2})], check=True)
    two = torch.load(tmp_path / "two/checkpoint.pt", weights_only=False)
    assert two["world_size"] == 2 and len(two["history"]) == len(one)
    for a, b in zip(two["history"], one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == b["val_loss"] == "" or a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    single = torch.load(tmp_path / "one/checkpoint.pt", weights_only=False)["model"]
    masks = [k for k, v in single.items() if v.dtype == torch.bool]
    assert masks and all(torch.equal(single[k], two["model"][k]) for k in masks)
    # stopped after 5 steps on 2 processes, finished on 1
    subprocess.run([*launch, *_args(corpus, tmp_path / "moved", dropout=0.0, **{"grad-accumulation": 2,
                                                                                "stop-after": 5})], check=True)
    resumed = bert_pretrain.main(_args(corpus, tmp_path / "moved", dropout=0.0, **{"grad-accumulation": 2}))
    for a, b in zip(resumed, one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.parametrize("n, count", [(5, 0), (5, 3), (5, 5), (5, 12)])
def test_fine_tuning_order_is_epochs_of_fresh_permutations(n, count):
    """draw_order (drawn up front, indexed on the device) = a sampler drawing a new permutation per epoch."""
    generator, lazy = torch.Generator().manual_seed(7), []
    while len(lazy) < count:
        lazy += torch.randperm(n, generator=generator).tolist()
    order = finetune.draw_order(n, count, torch.Generator().manual_seed(7))
    assert order.tolist() == lazy[:count]
    assert all(sorted(order[i:i + n].tolist()) == list(range(n)) for i in range(0, count - count % n, n))
