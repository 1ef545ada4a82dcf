"""`make data`: fetch the Debian packages, extract and clean documents, split by document, write a manifest.

    python -m experiments.data.build --sources all --out data/corpus --work data/work [--max-docs 2000]
    python -m experiments.data.build --folder my_texts/ --out data/mine          # any folder of .txt files
    python -m experiments.data.build --hf-dataset openwebtext --out data/owt     # where the hub is reachable
    python -m experiments.data.build --hf-dataset wikipedia --out data/wiki      # (see experiments.data.hub)

Outputs in ``--out``: ``{train,validation,test}.jsonl`` (source, id, title, text — what the generated
evaluation tasks need) and ``.txt`` (one cleaned document per line, for tokenizers and language modelling), and
``manifest.json``: per source the package, its version, licence, documents and bytes per split, plus the sha256
of every output file. The split of a document depends only on (seed, source, document id), so the same package
versions give the same bytes on every run, whatever else is added. Files are written atomically.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_open
from . import hub
from .sources import SOURCES, Doc, Source, clean_text, folder_source

SPLITS = ("train", "validation", "test")


def fetch_package(package: str, work: Path) -> tuple[Path, str]:
    """Unpack ``package`` under ``work/package`` (``apt-get download`` + ``dpkg-deb -x``); reuse a finished one."""
    root, done = work / package, work / package / ".slope-version"
    if done.exists():
        return root, done.read_text().strip()
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(2):
            result = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            if result.returncode == 0:
                break
            if attempt == 0:  # stale package lists are the usual cause
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        else:
            raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}. The corpus needs "
                               "Debian's package registry; or build from a folder of .txt files with --folder")
        deb = next(Path(tmp).glob("*.deb"))
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    done.write_text(version + "\n")
    return root, version


def hf_docs(spec: str) -> Iterator[Doc]:
    """Documents of a Hugging Face dataset "name[:config]" (train split, "text" column), streamed."""
    return hub.pretraining_docs(spec)


def split_of(seed: int, doc: Doc, fractions: tuple[float, float]) -> str:
    digest = hashlib.sha256(f"{seed}\0{doc.source}\0{doc.doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if u < fractions[0] else "validation" if u < fractions[0] + fractions[1] else "test"


class _AtomicWriters:
    """One temporary file per output, renamed into place only when everything was written."""

    def __init__(self, out: Path, names: Iterable[str]):
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.files = out, {}
        for name in names:
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            self.files[name] = (os.fdopen(fd, "w", encoding="utf-8", newline="\n"), Path(tmp))

    def write(self, name: str, text: str) -> None:
        self.files[name][0].write(text)

    def commit(self) -> dict[str, str]:
        hashes = {}
        for name, (handle, tmp) in self.files.items():
            handle.close()
            hashes[name] = hashlib.sha256(tmp.read_bytes()).hexdigest()
            tmp.chmod(0o644)  # mkstemp creates 0600
            os.replace(tmp, self.out / name)
        return hashes

    def abort(self) -> None:
        for handle, tmp in self.files.values():
            handle.close()
            tmp.unlink(missing_ok=True)


def build_corpus(sources: list[tuple[Source | str, Path | None, str]], out: Path, *, seed: int = 0,
                 fractions: tuple[float, float] = (0.93, 0.01), max_docs: int | None = None,
                 min_chars: int = 20) -> dict:
    """Write the splits for ``sources`` = [(Source or "hf:<spec>", unpacked root, version)]; return the manifest."""
    names = [f"{split}.{ext}" for split in SPLITS for ext in ("jsonl", "txt")]
    writers = _AtomicWriters(out, names)
    manifest = {"seed": seed, "fractions": {"train": fractions[0], "validation": fractions[1],
                                            "test": round(1 - sum(fractions), 6)},
                "max_docs_per_source": max_docs, "sources": []}
    try:
        for source, root, version in sources:
            docs = hf_docs(source[3:]) if isinstance(source, str) else source.extract(root)
            name = source if isinstance(source, str) else source.name
            stats = {split: {"documents": 0, "bytes": 0} for split in SPLITS}
            kept = 0
            for doc in tqdm(docs, desc=f"{name:>18}", unit=" docs", file=sys.stderr, leave=False, disable=None):
                text = clean_text(doc.text)
                if len(text) < min_chars:
                    continue
                split = split_of(seed, doc, fractions)
                record = {"source": doc.source, "id": doc.doc_id, "title": clean_text(doc.title), "text": text}
                writers.write(f"{split}.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
                writers.write(f"{split}.txt", text + "\n")
                stats[split]["documents"] += 1
                stats[split]["bytes"] += len(text.encode()) + 1
                kept += 1
                if max_docs and kept >= max_docs:
                    break
            manifest["sources"].append({
                "name": name, "package": "" if isinstance(source, str) else source.package, "version": version,
                "license": "see the dataset card" if isinstance(source, str) else source.license, "splits": stats})
        manifest["sha256"] = writers.commit()
    except BaseException:
        writers.abort()
        raise
    with atomic_open(out / "manifest.json") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="", help=f"comma-separated names or 'all': {', '.join(SOURCES)}")
    parser.add_argument("--folder", action="append", default=[], help="a folder of .txt files (repeatable)")
    parser.add_argument("--hf", "--hf-dataset", dest="hf", action="append", default=[],
                        help="a Hugging Face dataset: openwebtext, wikipedia, owner/name[:config], or a local "
                             "format (json, parquet) with --hf-data-files; streamed (repeatable)")
    parser.add_argument("--hf-data-files", action="append", default=None,
                        help="local files for a --hf-dataset format such as parquet or json (repeatable)")
    parser.add_argument("--hf-field", default="text", help="the text column of --hf-dataset")
    parser.add_argument("--out", default="data/corpus")
    parser.add_argument("--work", default="data/work", help="where packages are downloaded and unpacked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-docs", type=int, default=None, help="per source (tiny builds)")
    # 6% test: the generated evaluation sets need >= 1,000 items each from held-out documents alone
    parser.add_argument("--fractions", default="0.93,0.01", help="train,validation fractions; test is the rest")
    args = parser.parse_args(argv)
    names = list(SOURCES) if args.sources == "all" else [n for n in args.sources.split(",") if n]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        parser.error(f"unknown sources {unknown}; choose from {list(SOURCES)} or 'all'")
    if not (names or args.folder or args.hf):
        parser.error("nothing to build: give --sources, --folder or --hf")
    plan = []
    for name in names:
        root, version = fetch_package(SOURCES[name].package, Path(args.work))
        plan.append((SOURCES[name], root, version))
    plan += [(folder_source(Path(f), f"folder:{Path(f).name}"), Path(f), "") for f in args.folder]
    plan += [(hub.pretraining_source(spec, data_files=args.hf_data_files, field=args.hf_field), None, "")
             for spec in args.hf]
    train, validation = (float(x) for x in args.fractions.split(","))
    if not (0 < train < 1 and 0 <= validation < 1 - train):
        parser.error(f"--fractions {args.fractions}: need 0 < train < 1 and 0 <= validation < 1 - train")
    manifest = build_corpus(plan, Path(args.out), seed=args.seed, max_docs=args.max_docs,
                            fractions=(train, validation))
    for entry in manifest["sources"]:
        counts = ", ".join(f"{s} {entry['splits'][s]['documents']}" for s in SPLITS)
        print(f"{entry['name']:>20} {entry['version']:>22}  {counts}")
    return manifest


if __name__ == "__main__":
    main()
