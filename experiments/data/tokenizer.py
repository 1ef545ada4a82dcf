"""Train the suite's tokenizers on the corpus with Hugging Face `tokenizers`, and load them for transformers.

* GPT-2 style: byte-level BPE (no unknown tokens), special ``<|endoftext|>`` used as bos/eos/pad.
* BERT style: lower-cased WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK].

    python -m experiments.data.tokenizer --corpus data/corpus --vocab-size 16384
"""
from __future__ import annotations

import argparse
from pathlib import Path

GPT2_SPECIAL = "<|endoftext|>"
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--vocab-size", type=int, default=16384)
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    files = [str(corpus / "train.txt")]
    if not Path(files[0]).exists():
        parser.error(f"{files[0]} not found: build the corpus first (make data)")
    print("gpt2 byte-level BPE ->", train_gpt2_bpe(files, corpus / "tokenizers" / "gpt2-bpe", args.vocab_size))
    print("bert WordPiece      ->", train_bert_wordpiece(files, corpus / "tokenizers" / "bert-wordpiece", args.vocab_size))


if __name__ == "__main__":
    main()
