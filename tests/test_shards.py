"""Weight shards for moving trained models between machines: exact masks, fp16 values, ties, size limits."""
import pytest
import torch
from torch import nn

import slope
from experiments.shards import export_shards, has_shards, import_shards, shard_name


def test_round_trip_keeps_masks_exactly_values_to_fp16_and_ties(tmp_path):
    model = nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 64), nn.Linear(64, 50, bias=False))
    model[2].weight = model[0].weight.__class__(torch.randn(50, 64))
    slope.prune_model(model, filter_fn=lambda module, name: name == "1")
    state = model.state_dict()
    state["tied"] = state["2.weight"]  # a second name for the same tensor
    paths = export_shards(state, tmp_path, "run", {"history": [{"step": 1}]}, max_bytes=8_000)
    assert len(paths) > 1 and all(p.stat().st_size < 8_000 + 4_000 for p in paths)
    loaded, meta = import_shards(tmp_path, "run")
    assert meta == {"history": [{"step": 1}]}
    assert torch.equal(loaded["1.mask"], state["1.mask"]) and loaded["1.mask"].dtype == torch.bool
    for key in ("0.weight", "1.weight", "2.weight"):
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], state[key].half().float())
    assert loaded["tied"] is loaded["2.weight"]
    assert has_shards(tmp_path, "run") and not has_shards(tmp_path, "other")


def test_oversized_tensor_and_names():
    with pytest.raises(ValueError, match="does not fit"):
        export_shards({"w": torch.zeros(1000)}, "/nonexistent-never-written", "x", {}, max_bytes=100)
    assert shard_name("slope-r0.5%", 2) == "slope-r0.5pct-s2"


def test_token_pack_round_trips_the_token_cache(tmp_path):
    from experiments.data.token_pack import pack, unpack

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    tokens = torch.randint(0, 65535, (1000,), dtype=torch.int32)
    torch.save(tokens, corpus / "train.gpt2-bpe.tokens.pt")
    (corpus / "tokenizers" / "gpt2-bpe").mkdir(parents=True)
    (corpus / "tokenizers" / "gpt2-bpe" / "tokenizer.json").write_text("{}")
    pack(corpus, "gpt2-bpe", tmp_path / "packed")
    unpack(tmp_path / "packed", tmp_path / "there")
    assert torch.equal(torch.load(tmp_path / "there" / "train.gpt2-bpe.tokens.pt"), tokens)
    assert (tmp_path / "there" / "tokenizers" / "gpt2-bpe" / "tokenizer.json").exists()
