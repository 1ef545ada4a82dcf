"""Data-parallel pretraining (`slope.distributed`, `experiments.pretrain` under torchrun, `experiments.ddp_check`).

Two CPU processes with gloo stand in for two GPUs: the same code paths (DDP averaging, no_sync accumulation,
rank-0 checkpoints, N -> M resume, a real SIGKILL) run here; the NCCL / cuSPARSELt run is `make ddp-check`.
"""
import csv
import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from experiments import ddp_check, pretrain  # noqa: E402
from slope import distributed  # noqa: E402
from tests.test_pretrain import toy_corpus  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return toy_corpus(tmp_path_factory.mktemp("corpus"))


def toy_config(corpus, out, **overrides):
    """A 2-layer toy GPT-2 with SLoPe and adapters for the last quarter (so the DDP re-wrap is exercised)."""
    fields = dict(corpus=str(corpus), tokenizer=str(corpus / "tokenizers/gpt2-bpe"), out=str(out), steps=8,
                  batch_size=4, seq_len=32, n_embd=32, n_layer=2, n_head=2, eval_every=4, eval_batches=1,
                  checkpoint_every=2, method="slope", adapter_rank="12.5%", adapter_fraction=0.25, amp="none",
                  lr=3e-3, dropout=0.0)
    return replace(pretrain.PRESETS["tiny"], **(fields | overrides))


def test_single_process_helpers_are_identities():
    ctx = distributed.init_distributed("cpu")
    assert (ctx.world_size, ctx.rank, ctx.is_main, ctx.distributed) == (1, 0, True, False)
    x = torch.arange(6.0).reshape(3, 2)
    assert distributed.rank_rows(x, ctx) is x and distributed.all_reduce_mean(x, ctx) is x
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, ctx) is model and distributed.unwrap(model) is model
    assert distributed.replica_mismatches(model, ctx) == []


def test_rank_rows_splits_evenly_or_says_how():
    ctx = distributed.DistributedContext(rank=1, world_size=2, backend="gloo")
    rows = torch.arange(8).reshape(4, 2)
    assert torch.equal(distributed.rank_rows(rows, ctx), rows[2:])
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        distributed.rank_rows(rows[:3], ctx)


def test_tensor_digest_is_bit_exact_for_every_dtype():
    for dtype in (torch.bfloat16, torch.float32, torch.bool):
        a = torch.ones(4, 4, dtype=dtype)
        b = a.clone()
        assert distributed.tensor_digest(a) == distributed.tensor_digest(b)
        b[1, 2] = 0
        assert distributed.tensor_digest(a) != distributed.tensor_digest(b)
    assert distributed.tensor_digest(torch.tensor(1.0)) != distributed.tensor_digest(torch.tensor(2.0))  # 0-dim


def test_micro_batch_size_and_backward_compatible_configs(tmp_path):
    cfg = replace(pretrain.PRESETS["tiny"], batch_size=8, grad_accumulation=2)
    assert pretrain.micro_batch_size(cfg, 2) == 2
    with pytest.raises(SystemExit, match="--batch-size 8 .* multiple of processes \\(3\\)"):
        pretrain.micro_batch_size(cfg, 3)
    saved = {k: v for k, v in pretrain.asdict(cfg).items() if k not in ("dropout",)}  # older code: no dropout field
    assert pretrain.same_training(saved, cfg)  # absent field, cfg keeps the default: the same training
    assert not pretrain.same_training(saved, replace(cfg, dropout=0.0))
    assert pretrain.same_training({**saved, "out": "elsewhere", "stop_after": 3}, cfg)


def test_config_argv_round_trips(corpus, tmp_path):
    cfg = toy_config(corpus, tmp_path / "x", sparsity="2:4-2:8")
    assert pretrain.parse_config(pretrain.PRESETS, "", pretrain.config_argv(cfg)) == cfg


def test_gradient_accumulation_is_the_same_step(corpus, tmp_path):
    whole = pretrain.train(toy_config(corpus, tmp_path / "k1"))
    accumulated = pretrain.train(toy_config(corpus, tmp_path / "k2", grad_accumulation=2))
    assert [r["step"] for r in whole] == [r["step"] for r in accumulated]
    for a, b in zip(whole, accumulated):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    a = torch.load(tmp_path / "k1/checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "k2/checkpoint.pt", weights_only=False)["model"]
    diff = ddp_check.compare_models(a, b)
    assert diff.masks == [] and diff.weights == [] and diff.max_rel_weight_diff < 1e-4
    assert diff.global_rel_weight_diff <= diff.max_rel_weight_diff


def test_two_processes_match_one_resume_after_a_kill_and_on_another_count(corpus, tmp_path):
    """The whole `make ddp-check` on two gloo processes: equivalence, SIGKILL + resume on 2 and on 1, throughput."""
    base = toy_config(corpus, tmp_path, steps=16)
    results = ddp_check.run(nproc=2, scale="tiny", methods=["slope"], results=tmp_path / "ddp.csv", throughput_pairs=2,
                            runs=tmp_path / "runs", overrides={k: v for k, v in pretrain.asdict(base).items()
                                                               if k not in ("preset", "method", "out")})
    rows = list(csv.DictReader(results.open()))
    checks = {(r["check"], r["world_size"], r["metric"]): r for r in rows}
    for key in [("equivalence", "2", "max_rel_loss_gap"), ("equivalence", "2", "final_masks_differing"),
                ("equivalence", "2", "final_weights_differing"), ("resume", "2", "max_rel_loss_gap"),
                ("resume", "1", "max_rel_loss_gap")]:
        assert checks[key]["verdict"] == "met", checks[key]
    assert float(checks[("equivalence", "2", "max_rel_loss_gap")]["value"]) < 1e-4  # only the reduction order
    assert "SIGKILL" in checks[("resume", "2", "max_rel_loss_gap")]["note"]
    for resume_on in (2, 1):  # the kill left a mid-run checkpoint, and the note keeps its step (not the resume's end)
        killed = json.loads((tmp_path / f"runs/tiny/slope/killed2_resumed{resume_on}/killed_at.json").read_text())
        assert 8 < killed["checkpoint_step"] < 16
        assert f"checkpoint at step {killed['checkpoint_step']}," in checks[("resume", str(resume_on),
                                                                             "max_rel_loss_gap")]["note"]
    weak = checks[("throughput", "2", "weak_scaling_speedup")]
    assert float(weak["value"]) > 0 and weak["note"].startswith("median of 2 interleaved pairs")
    for folder in ("1proc", "weak2proc", "1proc_pair1", "weak2proc_pair1"):
        assert (tmp_path / "runs/tiny/slope" / folder / "throughput.json").exists()
    exported = tmp_path / "ddp_losses/tiny/slope"  # beside the CSV, for `make figures`
    assert (exported / "2proc.csv").read_text() == (tmp_path / "runs/tiny/slope/2proc/losses.csv").read_text()
    from accuracy_experiments.ddp_curves import fig_ddp_losses, reference_of
    assert fig_ddp_losses(tmp_path) is not None
    assert [reference_of(r) for r in ("2proc", "killed2_resumed1", "1proc", "weak2proc")] == ["1proc", "2proc", None, None]
    final = torch.load(tmp_path / "runs/tiny/slope/2proc/checkpoint.pt", weights_only=False)
    assert final["world_size"] == 2 and len(final["rank_rng"]) == 2
    assert any("lora_left" in k for k in final["model"])  # the adapters joined mid-run under DDP
    assert results.with_suffix(".md").read_text().count("| slope |") == len(rows)



def test_compare_models_separates_fixed_masks_from_weight_derived_buffers():
    """Forward masks must match bit for bit; W_RCᵀ buffers follow the weights and are counted, not failed."""
    a = {"l.values": torch.ones(4, 4), "l.mask_nibbles": torch.zeros(4, 1, dtype=torch.uint8),
         "l.wt_nibbles": torch.zeros(4, 1, dtype=torch.uint8), "l.wt_packed": torch.zeros(8, dtype=torch.uint8),
         "b": torch.zeros(2)}
    b = {k: v.clone() for k, v in a.items()}
    b["l.wt_nibbles"][0, 0], b["l.wt_packed"][3] = 9, 1
    b["l.values"][0, 0] = 1.5
    diff = ddp_check.compare_models(a, b)
    assert diff.masks == [] and diff.derived_groups_differing == pytest.approx(0.25)
    assert diff.weights == ["l.values"] and diff.worst_weight == "l.values"
    assert diff.global_rel_weight_diff == pytest.approx(0.5 / (15 + 1.5 ** 2) ** 0.5)
    b["l.mask_nibbles"][1, 0] = 3
    assert ddp_check.compare_models(a, b).masks == ["l.mask_nibbles"]
