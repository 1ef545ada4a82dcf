"""Train the suite's tokenizers on the corpus with Hugging Face `tokenizers`, and load them for transformers.

* GPT-2 style: byte-level BPE (no unknown tokens), special ``<|endoftext|>`` used as bos/eos/pad.
* BERT style: lower-cased WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK].
* Training happens once: `main` keeps a tokenizer that exists (``--retrain`` replaces it). The byte-level BPE
  trainer is deterministic, the WordPiece one is not (two trainings on the same text gave different vocabularies:
  `tokenizers` numbers the ``##`` continuation characters in hash order), so retraining would silently change
  what a BERT checkpoint's ids mean; token caches record the tokenizer they were made with (`corpus_token_ids`).
* ``gpt2-bpe-4k``: the GPT-2 style with a 4,096-token vocabulary for the ``tiny`` GPT-2 preset — on 2 CPU cores
  the 16k output layer is most of a tiny model's step time (0.41 s vs 0.16 s per step at 8 x 128 tokens).

    python -m experiments.data.tokenizer --corpus data/corpus --vocab-size 16384
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

GPT2_SPECIAL = "<|endoftext|>"
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_GPT2_VOCAB = 4096


def train_gpt2_bpe(files: list[str], out: Path, vocab_size: int = 16384) -> Path:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train(files, vocab_size=vocab_size, min_frequency=2, special_tokens=[GPT2_SPECIAL], show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    return out


def train_bert_wordpiece(files: list[str], out: Path, vocab_size: int = 16384) -> Path:
    from tokenizers import BertWordPieceTokenizer

    from tokenizers.processors import BertProcessing

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train(files, vocab_size=vocab_size, min_frequency=2, special_tokens=BERT_SPECIAL, show_progress=False)
    # [CLS] a [SEP] (b [SEP]) around every encoding, as BERT's pretraining and fine-tuning inputs expect
    tokenizer.post_processor = BertProcessing(("[SEP]", tokenizer.token_to_id("[SEP]")),
                                              ("[CLS]", tokenizer.token_to_id("[CLS]")))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    return out


def load_tokenizer(path: str | Path, kind: str, model_max_length: int):
    """A transformers fast tokenizer with the special tokens set (GPT2Config/BertConfig need their ids)."""
    from transformers import PreTrainedTokenizerFast

    file = str(Path(path) / "tokenizer.json")
    if kind == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_file=file, bos_token=GPT2_SPECIAL, eos_token=GPT2_SPECIAL,
                                       pad_token=GPT2_SPECIAL, unk_token=GPT2_SPECIAL, model_max_length=model_max_length)
    if kind == "bert":
        return PreTrainedTokenizerFast(tokenizer_file=file, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length)
    raise ValueError(f"kind={kind!r}: use 'gpt2' or 'bert'")


def corpus_token_ids(corpus: str | Path, split: str, tokenizer, cache_name: str, separator: int,
                     chunk: int = 2048):
    """A split's documents (one per line of ``<split>.txt``) encoded and joined by ``separator``, as int32.

    Cached as ``<corpus>/<split>.<cache_name>.tokens.pt`` (written atomically). Encoded in batches by the
    `tokenizers` backend (several times faster than one call per line on 2 cores; the same ids).
    """
    import torch

    from experiments.atomic import atomic_open

    corpus = Path(corpus)
    cache = corpus / f"{split}.{cache_name}.tokens.pt"
    source = corpus / f"{split}.txt"
    # what the ids depend on; a cache made otherwise is rebuilt (one without this record, e.g. unpacked from
    # `experiments.data.token_pack`, is trusted as is)
    made_with = {"tokenizer_sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
                 "separator": separator}
    record = cache.with_name(cache.name + ".json")
    if cache.exists() and (not record.exists() or json.loads(record.read_text()) == made_with):
        return torch.load(cache)
    if not source.exists():
        raise FileNotFoundError(f"{source} not found: build the corpus with `make data` or pass --corpus DIR "
                                "(a folder with train.txt and validation.txt, one document per line)")
    lines = source.read_text(encoding="utf-8").splitlines()
    backend = tokenizer.backend_tokenizer  # the `tokenizers` object: batched, and no max-length warnings
    backend.no_truncation()  # whole documents (a transformers call may have left truncation set)
    backend.no_padding()
    ids: list[int] = []
    for start in range(0, len(lines), chunk):
        for encoding in backend.encode_batch(lines[start:start + chunk], add_special_tokens=False):
            ids += encoding.ids + [separator]
    tokens = torch.tensor(ids, dtype=torch.int32)
    with atomic_open(cache, "wb") as f:
        torch.save(tokens, f)
    with atomic_open(record) as f:
        json.dump(made_with, f)
    return tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--vocab-size", type=int, default=16384)
    parser.add_argument("--retrain", action="store_true", help="replace tokenizers that exist (see the docstring)")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    files = [str(corpus / "train.txt")]
    if not Path(files[0]).exists():
        parser.error(f"{files[0]} not found: build the corpus first (make data)")
    wanted = [("gpt2 byte-level BPE", train_gpt2_bpe, "gpt2-bpe", args.vocab_size),
              ("gpt2 BPE, 4k (tiny)", train_gpt2_bpe, "gpt2-bpe-4k", TINY_GPT2_VOCAB),
              ("bert WordPiece", train_bert_wordpiece, "bert-wordpiece", args.vocab_size)]
    for label, train, name, vocab in wanted:
        out = corpus / "tokenizers" / name
        if (out / "tokenizer.json").exists() and not args.retrain:
            print(f"{label:<20} -> {out} (kept)")
        else:
            print(f"{label:<20} -> {train(files, out, vocab)}")


if __name__ == "__main__":
    main()
