"""BERT's masked-language-model data: the corpus as one token stream, windows, and 15% (80/10/10) masking.

* `load_bert_tokens`: every document of a split (one per line), WordPiece-encoded and joined by [SEP], cached
  next to the corpus as int32 (``{split}.{tokenizer dir}.tokens.pt``).
* `sample_windows`: ``batch`` random windows of ``seq_len - 2`` tokens, each wrapped as [CLS] … [SEP]. Windows
  cross document boundaries (the [SEP] between documents marks them), as RoBERTa's FULL-SENTENCES inputs do;
  there is no next-sentence prediction (the paper's BERT runs, like NVIDIA's recipe, are judged on MLM loss).
* `mask_tokens`: each non-special position is chosen with probability ``p`` (15%); a chosen token becomes
  [MASK] 80% of the time, a uniformly random token 10%, and stays itself 10%; labels are -100 elsewhere.

Every draw comes from an explicit CPU ``torch.Generator``, so a checkpoint that stores the generator's state
resumes onto exactly the batches and masks the uninterrupted run would have seen.
"""
from __future__ import annotations

from pathlib import Path

import torch

from experiments.data.tokenizer import corpus_token_ids

IGNORE_INDEX = -100  # what torch's cross_entropy and transformers skip


def load_bert_tokens(corpus: str | Path, split: str, tokenizer, tokenizer_name: str) -> torch.Tensor:
    """The split's token ids (documents joined by [SEP]), cached as int32 beside the corpus."""
    return corpus_token_ids(corpus, split, tokenizer, tokenizer_name, tokenizer.sep_token_id)


def sample_windows(tokens: torch.Tensor, seq_len: int, batch: int, generator: torch.Generator, *, cls_id: int,
                   sep_id: int) -> torch.Tensor:
    """(batch, seq_len) int64: [CLS] + a random window of seq_len - 2 tokens + [SEP]."""
    body = seq_len - 2
    if len(tokens) <= body:
        raise ValueError(f"the token stream has {len(tokens)} tokens, fewer than a window of {body}: use a larger "
                         "corpus or a smaller seq_len")
    starts = torch.randint(0, len(tokens) - body, (batch,), generator=generator)
    windows = torch.stack([tokens[s:s + body] for s in starts.tolist()]).long()
    cls = torch.full((batch, 1), cls_id, dtype=torch.long)
    sep = torch.full((batch, 1), sep_id, dtype=torch.long)
    return torch.cat([cls, windows, sep], dim=1)


def mask_tokens(ids: torch.Tensor, generator: torch.Generator, *, mask_id: int, vocab_size: int,
                special_ids: list[int] | tuple[int, ...],
                probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs, labels); labels hold the original id at chosen positions, -100 elsewhere."""
    if not 0 < probability < 1:
        raise ValueError(f"mask probability must be in (0, 1), got {probability}")
    special = torch.isin(ids, torch.tensor(list(special_ids), dtype=ids.dtype))
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    # one uniform draw decides the fate of every chosen token: [0, .8) mask, [.8, .9) random, [.9, 1) keep
    fate = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    inputs = torch.where(chosen & (fate < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(chosen & (fate >= 0.8) & (fate < 0.9), random_ids, inputs)
    return inputs, labels
