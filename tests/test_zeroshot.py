"""lm-eval runs the generated tasks offline on an in-memory model (a tiny random GPT-2: scores near chance)."""
import os

import pytest

from experiments import evalsets
from tests.test_evalsets import _corpus

pytest.importorskip("lm_eval")


def test_lm_eval_scores_every_generated_task_offline(tmp_path, monkeypatch):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from experiments.data.tokenizer import load_tokenizer, train_gpt2_bpe
    from experiments.provenance import REPO_ROOT
    from experiments.zeroshot import OFFLINE, TASKS, evaluate

    for key in OFFLINE:
        monkeypatch.delenv(key, raising=False)
    corpus, _ = _corpus(tmp_path)
    evalsets.build_evalsets(corpus, tmp_path / "evalsets")
    files = [str(REPO_ROOT / "tests/data/devils_dictionary.txt")]
    tok = load_tokenizer(train_gpt2_bpe(files, tmp_path / "bpe", 400), "gpt2", 128)
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    scores = evaluate(GPT2LMHeadModel(config).eval(), tok, evalsets=str(tmp_path / "evalsets"), limit=5,
                      batch_size=4, device="cpu")
    assert set(scores) == set(TASKS)
    assert all(os.environ[key] == "1" for key in OFFLINE)  # the hub was off before lm-eval was imported
    for task in ("slope_continuation", "slope_definitions", "slope_lastword"):
        assert 0.0 <= scores[task]["acc,none"] <= 1.0
    assert scores["slope_perplexity"]["bits_per_byte,none"] > 0


def test_a_continuation_longer_than_the_context_is_a_clear_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from experiments.data.tokenizer import load_tokenizer, train_gpt2_bpe
    from experiments.provenance import REPO_ROOT
    from experiments.zeroshot import evaluate

    corpus, _ = _corpus(tmp_path)
    evalsets.build_evalsets(corpus, tmp_path / "evalsets")
    tok = load_tokenizer(train_gpt2_bpe([str(REPO_ROOT / "tests/data/devils_dictionary.txt")], tmp_path / "bpe", 400),
                         "gpt2", 8)
    config = GPT2Config(vocab_size=len(tok), n_positions=8, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="longer than the model's context of 8 tokens"):
        evaluate(GPT2LMHeadModel(config).eval(), tok, tasks=["slope_continuation"],
                 evalsets=str(tmp_path / "evalsets"), limit=5, batch_size=4, device="cpu")
