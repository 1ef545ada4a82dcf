"""The compressed cuSPARSELt path against the simulator and an fp32 masked-dense reference (GPU only)."""
import io

import pytest
import torch

import slope
from slope import SLoPeLinear
from tests.reference import ref_double_pruned

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                                 reason="needs an sm_80+ CUDA GPU")]
if torch.cuda.is_available():
    from slope.compressed import CompressedSLoPeLinear
    from slope.kernels import cusparselt, nm_pack
    from slope.optim import ADAMWSparse, dense_parameters

DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True, scope="module")
def _extension_loaded():
    # some tests call torch.ops.slope_cslt directly: register the ops whatever ran before (pytest -n, -k)
    cusparselt.load_extension()


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_extension_builds_and_reports_version():
    ext = cusparselt.load_extension()
    assert ext.version() >= 500


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_compressed_buffer_starts_with_row_major_values(layout, dtype):
    w = torch.randn(128, 256, device="cuda", dtype=dtype)
    mask = slope.row_mask(w, 2, 4)
    packed = torch.ops.slope_cslt.compress((w * mask).contiguous(), layout)
    assert packed.numel() == cusparselt.compressed_nbytes(128, 256)
    assert torch.equal(cusparselt.values_view(packed, 128, 256, dtype), w[mask].view(128, 128))


# torch's private op has only the weight-as-operand-A layout (0); layout 1 is the extension's own
@pytest.mark.parametrize("implementation,layout", [("extension", 0), ("extension", 1), ("torch", 0)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [8, 256])
def test_spmm_matches_masked_dense(implementation, layout, dtype, tokens):
    op = cusparselt.SpMM(256, 128, dtype, layout=layout, implementation=implementation)
    w = torch.randn(256, 128, device="cuda", dtype=dtype)
    w = w * slope.row_mask(w, 2, 4)
    x = torch.randn(tokens, 128, device="cuda", dtype=dtype)
    bias = torch.randn(256, device="cuda", dtype=dtype)
    packed = op.compress(w)
    ref = x.double() @ w.double().t() + bias.double()
    torch_err = _rel(torch.nn.functional.linear(x, w, bias), ref)
    out = op(packed, x, bias)
    assert out.shape == (tokens, 256)
    assert _rel(out, ref) <= 2 * torch_err + 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_compressed_layer_outputs_and_gradients_match_reference(dtype):
    torch.manual_seed(0)
    sim = SLoPeLinear(256, 512, sparsity="2:4").cuda()
    comp = CompressedSLoPeLinear.from_simulated(sim.to(dtype))
    sim = sim.float()
    x = torch.randn(4, 64, 256, device="cuda")
    g = torch.randn(4, 64, 512, device="cuda")
    # fp32 masked-dense reference on the 16-bit weights
    w = sim.weight.detach()
    ref_y = x @ (w * sim.mask).t() + sim.bias
    ref_dx = g @ ref_double_pruned(w.cpu(), sim.mask.cpu(), 2, 4).cuda()
    ref_dw = (g.reshape(-1, 512).t() @ x.reshape(-1, 256)) * sim.mask
    xc = x.to(dtype).requires_grad_()
    y = comp(xc)
    y.backward(g.to(dtype))
    # torch's own error at this dtype on the same products is the yardstick
    lo = lambda t: t.to(dtype)  # noqa: E731
    torch_y = torch.nn.functional.linear(lo(x), lo(w * sim.mask), lo(sim.bias))
    torch_dx = lo(g) @ lo(ref_double_pruned(w.cpu(), sim.mask.cpu(), 2, 4).cuda())
    torch_dw = (lo(g).reshape(-1, 512).t() @ lo(x).reshape(-1, 256)) * sim.mask
    assert _rel(y, ref_y) <= 2 * _rel(torch_y, ref_y) + 1e-4
    assert _rel(xc.grad, ref_dx) <= 2 * _rel(torch_dx, ref_dx) + 1e-4
    dw = nm_pack.scatter_kept(comp.values.grad.float(), comp.mask_nibbles)
    assert _rel(dw, ref_dw) <= 2 * _rel(torch_dw, ref_dw) + 1e-4
    assert _rel(comp.bias.grad, g.sum((0, 1))) < 1e-2
    assert comp.wt_nibbles.numel() * 4 == 512 * 256 and comp.values.data_ptr() == comp.w_packed.data_ptr()


def test_compressed_simulated_round_trip_preserves_function():
    sim = SLoPeLinear(128, 256).cuda().to(torch.bfloat16)
    sim.add_adapter(8)
    torch.nn.init.normal_(sim.lora_right)
    comp = CompressedSLoPeLinear.from_simulated(sim)
    back = comp.to_simulated()
    x = torch.randn(16, 128, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(back.weight, sim.weight) and torch.equal(back.mask, sim.mask)
    assert _rel(comp(x), sim(x)) < 1e-2
    assert torch.equal(back(x), sim(x))


def test_adamw_sparse_matches_torch_adamw_on_masked_fp32_weights():
    torch.manual_seed(0)
    sim = SLoPeLinear(128, 256).cuda()
    comp = CompressedSLoPeLinear.from_simulated(sim.to(torch.bfloat16))
    sim = sim.float()
    ref_opt = torch.optim.AdamW([sim.weight], lr=1e-3, weight_decay=0.1)
    opt = ADAMWSparse(torch.nn.Sequential(comp), lr=1e-3, weight_decay=0.1)
    for _ in range(5):
        grad_w = torch.randn(256, 128, device="cuda") * sim.mask
        sim.weight.grad = grad_w.clone()
        comp.values.grad = nm_pack.gather_kept(grad_w, comp.mask_nibbles).to(torch.bfloat16)
        ref_opt.step()
        opt.step()
    master = opt.state[comp.values]["master"]
    expected = nm_pack.gather_kept(sim.weight.detach(), comp.mask_nibbles)
    assert _rel(master, expected) < 1e-2
    assert torch.equal(comp.values.detach(), master.to(torch.bfloat16))  # 16-bit values written in place
    # W_RCᵀ was rebuilt from the masters: compare the backward product with the double-pruned reference
    g = torch.randn(32, 256, device="cuda", dtype=torch.bfloat16)
    w_r = nm_pack.scatter_kept(master, comp.mask_nibbles)
    expected_dx = g.float() @ ref_double_pruned(w_r.cpu(), w_r.cpu() != 0, 2, 4).cuda()
    assert _rel(comp.backward_op(comp.wt_packed, g), expected_dx) < 1e-2


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(128, 256), (1280, 5120), (5120, 1280)])
def test_metadata_written_from_nibbles_equals_cusparselt_compress(shape, dtype, layout):
    # the layout is measured, not documented: the library's own compress is the reference, byte for byte
    scores = torch.rand(*shape, device="cuda")
    mask = slope.row_mask(scores, 2, 4)
    packed = torch.ops.slope_cslt.compress(mask.to(dtype), layout)
    want = cusparselt.metadata_view(packed, *shape, dtype)
    assert want.numel() == shape[0] * shape[1] // 8 and packed.numel() == want.numel() + shape[0] * shape[1]
    got = nm_pack.write_metadata(nm_pack.pack_nibbles(mask), torch.empty_like(want))
    assert torch.equal(got, want)
    assert cusparselt.SpMM(*shape, dtype, layout=layout).writes_metadata()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rebuild_transpose_without_compress_equals_compress_path(dtype, monkeypatch):
    torch.manual_seed(0)
    layer = CompressedSLoPeLinear.from_dense(torch.nn.Linear(384, 640, device="cuda"), dtype=dtype)
    master = nm_pack.gather_kept(torch.randn(640, 384, device="cuda"), layer.mask_nibbles)
    monkeypatch.setenv("SLOPE_CSLT_DIRECT_METADATA", "0")
    assert not layer.backward_op.writes_metadata()
    layer.rebuild_transpose(master, recompute_mask=True)
    by_compress, nibbles = layer.wt_packed.clone(), layer.wt_nibbles.clone()
    layer.rebuild_transpose(-master, recompute_mask=False)  # values only: the buffer changes
    assert not torch.equal(layer.wt_packed, by_compress)
    monkeypatch.setenv("SLOPE_CSLT_DIRECT_METADATA", "1")
    assert layer.backward_op.writes_metadata()
    layer.rebuild_transpose(master, recompute_mask=True)
    assert torch.equal(layer.wt_nibbles, nibbles)
    assert torch.equal(layer.wt_packed, by_compress)  # values and metadata, every byte


def test_state_dicts_round_trip_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)).cuda()
    slope.prune_model(model, compress=True, compress_dtype=torch.bfloat16, filter_fn=lambda m, n: True)
    opt = ADAMWSparse(model, lr=1e-3)
    x = torch.randn(32, 128, device="cuda")
    model(x).float().pow(2).mean().backward()
    opt.step()
    model_buf, opt_buf = io.BytesIO(), io.BytesIO()
    torch.save(model.state_dict(), model_buf)
    torch.save(opt.state_dict(), opt_buf)
    fresh = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)).cuda()
    slope.prune_model(fresh, compress=True, compress_dtype=torch.bfloat16, filter_fn=lambda m, n: True)
    fresh_opt = ADAMWSparse(fresh, lr=1e-3)
    model_buf.seek(0), opt_buf.seek(0)
    fresh.load_state_dict(torch.load(model_buf))
    fresh_opt.load_state_dict(torch.load(opt_buf))
    assert torch.equal(fresh(x), model(x))
    for a, b in zip(slope.sparse_layers(model).values(), slope.sparse_layers(fresh).values()):
        assert torch.equal(a.w_packed, b.w_packed) and torch.equal(a.wt_packed, b.wt_packed)
        assert fresh_opt.state[b.values]["master"].dtype == torch.float32
        assert torch.equal(fresh_opt.state[b.values]["master"], opt.state[a.values]["master"])


def test_gpt2_compressed_training_tracks_simulated_for_50_bf16_steps():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=512, n_positions=128,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    losses = {}
    for mode in ("simulated", "compressed"):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).cuda()
        if mode == "simulated":
            slope.prune_model(model)
            optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)]
        else:
            slope.prune_model(model, compress=True, compress_dtype=torch.bfloat16)
            optimizers = [torch.optim.AdamW(dense_parameters(model), lr=1e-3, weight_decay=0.1),
                          ADAMWSparse(model, lr=1e-3, weight_decay=0.1)]
        generator = torch.Generator().manual_seed(1)
        losses[mode] = []
        for _ in range(50):
            ids = torch.randint(0, 512, (8, 128), generator=generator).cuda()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad()
            losses[mode].append(loss.item())
    for step, (a, b) in enumerate(zip(losses["simulated"], losses["compressed"])):
        assert abs(a - b) <= 0.01 * abs(a), f"step {step}: simulated {a:.4f} vs compressed {b:.4f}"


def test_bad_input_on_the_compressed_path_is_named():
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        slope.prune_model(torch.nn.Sequential(torch.nn.Linear(64, 64)).cuda(), compress=True,
                          filter_fn=lambda m, n: True)
    with pytest.raises(ValueError, match="0: d_out = 48 is not a multiple of 32"):
        slope.prune_model(torch.nn.Sequential(torch.nn.Linear(64, 48)).cuda().half(), compress=True,
                          filter_fn=lambda m, n: True)
    with pytest.raises(ValueError, match="compress=True: needs the model on a CUDA GPU"):
        slope.prune_model(torch.nn.Sequential(torch.nn.Linear(64, 64)).half(), compress=True)
    if torch.cuda.get_device_capability()[0] >= 9:
        with pytest.raises(slope.BackendUnavailableError, match="sm_8x"):
            slope.prune_model(torch.nn.Sequential(torch.nn.Linear(64, 64)).cuda().half(), compress=True,
                              backend="cutlass")


def test_spmm_op_replays_in_a_cuda_graph_and_compiles_with_fullgraph():
    op = cusparselt.SpMM(256, 128, torch.float16)
    w = torch.randn(256, 128, device="cuda", dtype=torch.float16)
    w = w * slope.row_mask(w, 2, 4)
    packed = op.compress(w)
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    expected = op(packed, x)  # chooses the algorithm before capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        op(packed, x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = op(packed, x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(captured, op(packed, x))
    compiled = torch.compile(lambda a: torch.ops.slope_cslt.spmm(packed, 256, 128, a, None, 0, op.layout) * 2,
                             fullgraph=True)
    assert torch.equal(compiled(x), torch.ops.slope_cslt.spmm(packed, 256, 128, x, None, 0, op.layout) * 2)
    assert expected.shape == (64, 256)


def test_fp16_overflow_skips_dense_and_sparse_steps_alike():
    from slope.optim import DynamicLossScaler

    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)).cuda().half()
    slope.prune_model(model, compress=True, filter_fn=lambda m, n: n == "0")
    sparse_opt, dense_opt = ADAMWSparse(model, lr=1e-3), torch.optim.AdamW(dense_parameters(model), lr=1e-3)
    scaler = DynamicLossScaler(init_scale=2.0**16)
    packed_before = model[0].w_packed.clone()
    dense_before = model[2].weight.detach().clone()
    scaler.scale(model(torch.randn(32, 128, device="cuda", dtype=torch.half)).float().pow(2).mean()).backward()
    model[2].weight.grad[0, 0] = float("nan")
    assert scaler.step([dense_opt, sparse_opt]) is False
    assert torch.equal(model[0].w_packed, packed_before) and torch.equal(model[2].weight, dense_before)
    for opt in (dense_opt, sparse_opt):
        opt.zero_grad()
    scaler.scale(model(torch.randn(32, 128, device="cuda", dtype=torch.half)).float().pow(2).mean()).backward()
    assert scaler.step([dense_opt, sparse_opt]) is True
    assert not torch.equal(model[0].w_packed, packed_before)


def test_trainer_callback_steps_the_sparse_optimizer_with_the_dense_schedule():
    pytest.importorskip("transformers")
    from slope.hf import SparseOptimizerCallback

    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)).cuda()
    slope.prune_model(model, compress=True, compress_dtype=torch.bfloat16, filter_fn=lambda m, n: n == "0")
    sparse = ADAMWSparse(model, lr=1.0, weight_decay=0.0)
    dense = torch.optim.AdamW(dense_parameters(model), lr=3e-4, weight_decay=0.05)
    callback = SparseOptimizerCallback(sparse)
    callback.on_train_begin(None, None, None, optimizer=dense)
    with pytest.raises(ValueError, match="dense_parameters"):
        callback.on_train_begin(None, None, None, optimizer=torch.optim.AdamW(model.parameters()))
    before = model[0].w_packed.clone()
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the bf16 sparse layer feeds an fp32 dense one
        loss = model(torch.randn(32, 128, device="cuda")).float().pow(2).mean()
    loss.backward()
    callback.on_pre_optimizer_step(None, None, None, optimizer=dense)
    assert sparse.lr == 3e-4 and sparse.weight_decay == 0.05
    assert model[0].values.grad is None and not torch.equal(model[0].w_packed, before)


def test_capped_search_is_cached_as_partial_and_redone_in_full(tmp_path, monkeypatch):
    """SLOPE_CSLT_SEARCH_BUDGET_S stops after the first timed id; a search without it replaces that choice."""
    import json

    monkeypatch.setenv("SLOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cusparselt, "_alg_cache", None)  # read the empty cache of tmp_path, not the session's
    monkeypatch.delenv("SLOPE_CSLT_SEARCH", raising=False)  # a run with searches off (=0) must still search here
    monkeypatch.setenv("SLOPE_CSLT_SEARCH_BUDGET_S", "1e-9")
    capped = cusparselt.best_alg_id(256, 256, 64, torch.bfloat16)
    cache = json.loads((tmp_path / "cusparselt_algs.json").read_text())
    partial = [key for key in cache if key.endswith("|ids_tried")]
    assert len(partial) == 1 and cache[partial[0]] == 1 and capped == cache[partial[0].removesuffix("|ids_tried")]
    assert cusparselt.best_alg_id(256, 256, 64, torch.bfloat16) == capped  # with a budget, the capped one is kept
    monkeypatch.delenv("SLOPE_CSLT_SEARCH_BUDGET_S")
    full = cusparselt.best_alg_id(256, 256, 64, torch.bfloat16)
    cache = json.loads((tmp_path / "cusparselt_algs.json").read_text())
    assert not any(key.endswith("|ids_tried") for key in cache)
    assert 0 <= full < cusparselt.safe_alg_bound(torch.bfloat16, cusparselt.DEFAULT_LAYOUT)
