"""Pack a corpus' token caches small enough to travel to another machine (uint16 + xz), and unpack them there.

`experiments.pretrain.load_tokens` caches each split as an int32 tensor (~60 MB for the train split); as uint16
(every vocabulary here is < 65,536) compressed with xz it is a fraction of that, so it fits the few tens of MB a
lent GPU machine takes along. Unpacking writes the same cache files, so the runners there skip tokenization.

    python -m experiments.data.token_pack pack   --corpus data/corpus --tokenizer gpt2-bpe --out .gpudata
    python -m experiments.data.token_pack unpack --corpus data/corpus --packed .gpudata
"""
from __future__ import annotations

import argparse
import lzma
import shutil
from pathlib import Path

import numpy as np
import torch

from experiments.atomic import atomic_open


def pack(corpus: Path, tokenizer: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cache in sorted(corpus.glob(f"*.{tokenizer}.tokens.pt")):
        tokens = torch.load(cache)
        if int(tokens.max()) >= 1 << 16:
            raise ValueError(f"{cache}: token id {int(tokens.max())} does not fit uint16")
        target = out / (cache.name + ".u16.xz")
        with atomic_open(target, "wb") as f:
            f.write(lzma.compress(tokens.numpy().astype(np.uint16).tobytes(), preset=6))
        written.append(target)
    tokenizer_dir = corpus / "tokenizers" / tokenizer
    if tokenizer_dir.exists():
        shutil.copytree(tokenizer_dir, out / "tokenizers" / tokenizer, dirs_exist_ok=True)
    return written


def unpack(packed: Path, corpus: Path) -> list[Path]:
    corpus.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(packed.glob("*.tokens.pt.u16.xz")):
        tokens = np.frombuffer(lzma.decompress(source.read_bytes()), dtype=np.uint16).astype(np.int32)
        target = corpus / source.name.removesuffix(".u16.xz")
        with atomic_open(target, "wb") as f:
            torch.save(torch.from_numpy(tokens), f)
        written.append(target)
    if (packed / "tokenizers").exists():
        shutil.copytree(packed / "tokenizers", corpus / "tokenizers", dirs_exist_ok=True)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--tokenizer", default="gpt2-bpe")
    parser.add_argument("--out", default=".gpudata")
    parser.add_argument("--packed", default=".gpudata")
    args = parser.parse_args(argv)
    paths = pack(Path(args.corpus), args.tokenizer, Path(args.out)) if args.action == "pack" else \
        unpack(Path(args.packed), Path(args.corpus))
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
