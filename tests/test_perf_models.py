"""Model specs of the end-to-end experiments: configs, analytic parameter counts, the block-count choice."""
import pytest
import torch

import slope
from performance_experiments.models import (MODELS, TOY_MODELS, build_config, build_model, choose_blocks,
                                            estimate_train_bytes, get_spec, param_counts)


@pytest.mark.parametrize("name", ["opt-13b", "llama-3-8b", "mistral-7b"])
def test_analytic_counts_match_the_real_architecture(name):
    # one block of the real model on the meta device: no memory, exact parameter shapes
    spec = MODELS[name]
    model = build_model(spec, 1, dtype=torch.bfloat16, device="meta")
    params = {id(p): p for p in model.parameters()}.values()  # OPT ties the LM head to the embedding
    assert sum(p.numel() for p in params) == param_counts(spec, 1)["total"]
    assert model.config.hidden_size == spec.hidden and model.config.num_hidden_layers == 1


@pytest.mark.parametrize("name", sorted(TOY_MODELS))
def test_sparse_count_is_what_prune_model_sparsifies(name):
    spec = TOY_MODELS[name]
    model = build_model(spec, 2)
    slope.prune_model(model)
    sparse = sum(layer.weight.numel() for layer in slope.sparse_layers(model).values())
    counts = param_counts(spec, 2)
    assert sparse == counts["sparse"]
    assert counts["sparse"] + counts["dense"] == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_same_seed_same_weights_and_attention_choice():
    spec = TOY_MODELS["llama-toy"]
    a, b = build_model(spec, 2, seed=3), build_model(spec, 2, seed=3, attention="eager")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config._attn_implementation == "sdpa" and b.config._attn_implementation == "eager"


def test_choose_blocks_is_the_largest_that_fits():
    spec = MODELS["opt-13b"]
    budget = 50e9
    blocks = choose_blocks(spec, budget, tokens=8192)
    assert estimate_train_bytes(spec, blocks, 8192) <= budget < estimate_train_bytes(spec, blocks + 1, 8192)
    assert choose_blocks(spec, budget, tokens=8192, max_blocks=2) == 2
    assert choose_blocks(spec, budget, tokens=8192, precision="amp") < blocks  # fp32 state is twice as large
    with pytest.raises(ValueError, match="even one block"):
        choose_blocks(MODELS["opt-66b"], 1e9, tokens=8192)


def test_bad_names_are_explained():
    with pytest.raises(ValueError, match="opt-13b"):
        get_spec("opt-13")
    with pytest.raises(ValueError, match="attention"):
        build_config(TOY_MODELS["opt-toy"], 1, attention="flash")
    with pytest.raises(ValueError, match="num_blocks"):
        build_config(TOY_MODELS["opt-toy"], 5)
