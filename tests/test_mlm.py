"""BERT masking: 15% of the non-special tokens, 80/10/10, reproducible from the generator, windows well formed."""
import torch

from experiments.mlm import IGNORE_INDEX, mask_tokens, sample_windows

SPECIAL = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK, VOCAB = 4, 1000


def _ids(n=400, length=256):
    ids = torch.randint(5, VOCAB, (n, length), generator=torch.Generator().manual_seed(7))
    ids[:, 0], ids[:, -1], ids[:, length // 2] = 2, 3, 3  # [CLS] … [SEP] with a document boundary inside
    return ids


def test_masking_rates_and_labels():
    ids = _ids()
    inputs, labels = mask_tokens(ids, torch.Generator().manual_seed(0), mask_id=MASK, vocab_size=VOCAB,
                                 special_ids=SPECIAL)
    chosen = labels != IGNORE_INDEX
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert not (chosen & special).any() and torch.equal(inputs[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # only chosen positions change
    n = chosen.sum().item()
    assert abs(n / (~special).sum().item() - 0.15) < 0.005  # ~100k candidates: 15% within 0.5 points
    masked = (inputs[chosen] == MASK).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()  # "keep" 10% (+ random draws of the same id)
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01
    assert abs(1 - masked - kept - 0.1) < 0.01  # random replacement 10%


def test_masking_and_windows_are_determined_by_the_generator():
    ids = _ids(8, 64)
    a = mask_tokens(ids, torch.Generator().manual_seed(3), mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)
    b = mask_tokens(ids, torch.Generator().manual_seed(3), mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)
    c = mask_tokens(ids, torch.Generator().manual_seed(4), mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    stream = torch.arange(5, 500, dtype=torch.int32)
    generator = torch.Generator().manual_seed(0)
    windows = sample_windows(stream, 16, 4, generator, cls_id=2, sep_id=3)
    assert windows.shape == (4, 16) and (windows[:, 0] == 2).all() and (windows[:, -1] == 3).all()
    assert ((windows[:, 2:-1] - windows[:, 1:-2]) == 1).all()  # contiguous slices of the stream
    assert torch.equal(windows, sample_windows(stream, 16, 4, torch.Generator().manual_seed(0), cls_id=2, sep_id=3))
