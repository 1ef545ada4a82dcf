import io

import pytest
import torch
from torch import nn

import slope
from slope import SLoPeLinear

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), ["h.0.attn.c_attn", "lm_head"]


def _bert():
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=128, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config), [
        "layer.0.attention.self.query", "layer.0.attention.self.key", "layer.0.attention.self.value",
        "pooler.dense", "classifier"]


def _opt():
    config = transformers.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                                    vocab_size=128, max_position_embeddings=32, word_embed_proj_dim=64)
    return transformers.OPTForCausalLM(config), [
        "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj", "lm_head"]


def _llama():
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=160, vocab_size=128, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config), [
        "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj", "lm_head"]


MODELS = {"gpt2": _gpt2, "bert": _bert, "opt": _opt, "llama": _llama}


def _logits(model, ids):
    return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", MODELS)
def test_prune_converts_expected_modules_and_densify_restores_function(arch):
    model, dense_suffixes = MODELS[arch]()
    model.eval()
    linears_before = {n: type(m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    ids = torch.randint(0, 128, (2, 16))
    slope.prune_model(model)
    sparse = slope.sparse_layers(model)
    kept_dense = {name for name in linears_before if name not in sparse}
    expected_dense = {name for name in linears_before if any(name.endswith(s) for s in dense_suffixes)}
    assert len(expected_dense) == len(dense_suffixes) and kept_dense == expected_dense
    assert len(sparse) == len(linears_before) - len(kept_dense) > 0
    for layer in sparse.values():
        assert slope.is_nm_sparse(layer.weight, 2, 4, dim=1)
    pruned_logits = _logits(model, ids)
    slope.densify_model(model)
    restored = {n: type(m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    assert restored == linears_before  # same names, same classes (GPT-2 gets Conv1D back)
    torch.testing.assert_close(_logits(model, ids), pruned_logits, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_conversion_preserves_the_function_on_kept_weights():
    model, _ = _gpt2()
    model.eval()
    conv = model.transformer.h[1].mlp.c_fc
    x = torch.randn(3, 64)
    w = conv.weight.detach().t().clone()  # Conv1D stores (d_in, d_out)
    slope.prune_model(model)
    layer = model.transformer.h[1].mlp.c_fc
    assert isinstance(layer, SLoPeLinear) and layer.origin == "conv1d"
    mask = layer.mask
    torch.testing.assert_close(layer(x), x @ (w * mask).t() + conv.bias)


def test_pruned_model_state_dict_round_trip():
    model, _ = _gpt2()
    slope.prune_model(model, add_lora=True, lora_rank="6.25%")
    for p in slope.lora_parameters(model):
        nn.init.normal_(p)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    torch.manual_seed(123)
    fresh, _ = _gpt2()
    slope.prune_model(fresh, add_lora=True, lora_rank="6.25%")
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    ids = torch.randint(0, 128, (2, 16))
    model.eval(), fresh.eval()
    assert torch.equal(_logits(model, ids), _logits(fresh, ids))
    for (name, a), b in zip(slope.sparse_layers(model).items(), slope.sparse_layers(fresh).values()):
        assert torch.equal(a.mask, b.mask), name


def test_split_blocks_schedule_gives_mixed_sparsity():
    config = transformers.BertConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=128, max_position_embeddings=32)
    model = transformers.BertForMaskedLM(config)
    slope.prune_model(model, sparsity=slope.split_blocks("2:4", "2:8"))
    by_block = {}
    for name, layer in slope.sparse_layers(model).items():
        by_block.setdefault(slope.block_index(name), set()).add(layer.sparsity)
    assert by_block == {0: {"2:4"}, 1: {"2:4"}, 2: {"2:8"}, 3: {"2:8"}}
    assert "cls.predictions.transform.dense" not in slope.sparse_layers(model)  # MLM head stays dense


def test_paper_filter_skips_narrow_layers():
    model = nn.Sequential(nn.Linear(16, 96), nn.Linear(96, 64), nn.Linear(64, 64))
    slope.prune_model(model)
    assert [type(m) for m in model] == [nn.Linear, SLoPeLinear, SLoPeLinear]  # 96/16 = 6 > 5 stays dense


def test_mode_flags_and_backend_resolution():
    assert slope.resolve_backend("auto", compress=False) == "dense"
    assert slope.resolve_backend("cusparselt", compress=False) == "dense"
    with pytest.raises(ValueError, match="compress=True: needs the model on a CUDA GPU"):
        slope.prune_model(nn.Sequential(nn.Linear(16, 16)), compress=True)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(backend="cuda"), ValueError, r"backend='cuda' is unknown; choose one of"),
    (dict(sparsity="2:5"), ValueError, r"^0: sparsity='2:5': M=5 is not supported"),
    (dict(sparsity="3:2"), ValueError, r"0 < N < M"),
    (dict(merge_lora=True), ValueError, "add_lora=True"),
    (dict(add_lora=True, lora_rank=-2), ValueError, ">= 0"),
    (dict(add_lora=True, lora_rank=16), ValueError, r"^0: adapter rank 16 must be < min\(d_in, d_out\) = 16"),
    (dict(add_lora=True, lora_rank=2, merge_lora=True, compress=True, backend="dense"), ValueError,
     "use compress=False"),
    (dict(method="magnitude"), ValueError, "method='magnitude' is unknown"),
])
def test_bad_input_is_named_and_leaves_model_untouched(kwargs, error, match):
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16))
    with pytest.raises(error, match=match):
        slope.prune_model(model, filter_fn=lambda module, name: True, **kwargs)
    assert [type(m) for m in model] == [nn.Linear, nn.Linear]


def test_indivisible_layer_is_named_with_the_fix():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 30))
    with pytest.raises(ValueError, match=r"^1: d_out \(dim 0\) = 30 is not divisible by M=4.*filter_fn"):
        slope.prune_model(model, filter_fn=lambda module, name: True)
    assert type(model[0]) is nn.Linear  # checked before anything was replaced
