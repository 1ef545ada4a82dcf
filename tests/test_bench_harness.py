"""The timing harness's CUDA-graph capture (`experiments.bench.capture_graph`), used by every graph benchmark."""
import pytest
import torch

from experiments.bench import capture_graph


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_capture_graph_warms_up_then_each_replay_rewrites_the_captured_output():
    x = torch.zeros(4, device="cuda")
    calls = []

    def fn():
        calls.append(torch.cuda.is_current_stream_capturing())
        return x * 2 + 1

    graph, out = capture_graph(fn, warmup=3)
    assert calls == [False, False, False, True]  # three warm-ups outside the capture, then the capture
    x.fill_(5)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.full((4,), 11.0, device="cuda"))
