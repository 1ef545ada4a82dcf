"""Where the corpus text comes from, and how each source's files become documents.

Each `Source` names a Debian package (fetched with ``apt-get download`` + ``dpkg-deb -x`` into a work folder:
never ``apt-get install``, which would upgrade system packages), its licence, and an extractor that walks the
unpacked tree and yields `Doc` records. Extractors only parse; cleaning happens once, in `clean_text`.
A folder of ``.txt`` files is a source too (`folder_source`), one document per file.
"""
from __future__ import annotations

import gzip
import html
import html.parser
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Doc:
    source: str
    doc_id: str   # stable within the source (file path, headword + index, synset offset)
    title: str    # headword, file stem or section title: what the generated evaluation tasks key on
    text: str


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    license: str
    extract: Callable[[Path], Iterator[Doc]]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """NFC, no control characters, all whitespace (newlines included) collapsed: one document = one line."""
    text = unicodedata.normalize("NFC", text)
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def _read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


# ----- dictd dictionaries (GCIDE, the Devil's Dictionary) -----------------------------------------------------
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def dictd_entries(index: Path, data: Path, source: str) -> Iterator[Doc]:
    """Entries of a dictd database: the .index gives headword, offset and length in the (gzip) .dict.dz."""
    body = gzip.decompress(data.read_bytes())
    seen: dict[str, int] = {}
    spans: set[tuple[int, int]] = set()  # several headwords can index one entry: keep it once
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        word, start, length = parts[0], _b64_number(parts[1]), _b64_number(parts[2])
        if (start, length) in spans:
            continue
        spans.add((start, length))
        seen[word] = seen.get(word, 0) + 1
        text = body[start:start + length].decode("utf-8", errors="replace")
        yield Doc(source, f"{word}#{seen[word]}", word, text)


def _dictd(name: str, stem: str) -> Callable[[Path], Iterator[Doc]]:
    def extract(root: Path) -> Iterator[Doc]:
        folder = root / "usr/share/dictd"
        yield from dictd_entries(folder / f"{stem}.index", folder / f"{stem}.dict.dz", name)
    return extract


# ----- WordNet glosses ----------------------------------------------------------------------------------------
def wordnet_glosses(root: Path) -> Iterator[Doc]:
    """One document per synset: "word, word: gloss" from data.{noun,verb,adj,adv} (licence header skipped)."""
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / "usr/share/wordnet" / f"data.{pos}"
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            fields, gloss = line.split("|", 1)
            parts = fields.split()
            count = int(parts[3], 16)
            words = [parts[4 + 2 * i].replace("_", " ") for i in range(count)]
            yield Doc("wordnet", f"{pos}:{parts[0]}", words[0], f"{', '.join(words)}: {gloss.strip()}")


# ----- plain and marked-up documents --------------------------------------------------------------------------
def paragraphs_as_docs(text: str, source: str, stem: str, min_chars: int = 200) -> Iterator[Doc]:
    """Split a long text file at blank lines, merging paragraphs until ``min_chars``: section-sized documents."""
    buffer: list[str] = []
    index = 0
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            buffer.append(para)
        if sum(map(len, buffer)) >= min_chars:
            yield Doc(source, f"{stem}:{index}", stem, "\n".join(buffer))
            buffer, index = [], index + 1
    if buffer:
        yield Doc(source, f"{stem}:{index}", stem, "\n".join(buffer))


def _text_files(name: str, pattern: str, folder: str, min_chars: int = 1500) -> Callable[[Path], Iterator[Doc]]:
    def extract(root: Path) -> Iterator[Doc]:
        for path in sorted((root / folder).glob(pattern)):
            yield from paragraphs_as_docs(_read_text(path), name, path.name.split(".")[0], min_chars)
    return extract


_RST_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_DIRECTIVE = re.compile(r"^\s*\.\. .*$", re.MULTILINE)


def rst_to_text(text: str) -> str:
    """Enough reST stripping for language modelling: roles -> their text, directives and markup lines dropped."""
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_DIRECTIVE.sub("", text)
    text = re.sub(r"^[=\-~^\"'`#*+]{3,}\s*$", "", text, flags=re.MULTILINE)  # section underlines
    return text.replace("``", "").replace("**", "")


def python_docs(root: Path) -> Iterator[Doc]:
    base = root / "usr/share/doc/python3.11/html/_sources"
    for path in sorted(base.rglob("*.rst.txt")):
        stem = str(path.relative_to(base)).removesuffix(".rst.txt")
        yield from paragraphs_as_docs(rst_to_text(path.read_text(encoding="utf-8", errors="replace")),
                                      "python-docs", stem, min_chars=1500)


class _HTMLText(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "pre", "tr", "table"):
            self.parts.append("\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "pre", "table") else "\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    return html.unescape("".join(parser.parts))


def debian_reference(root: Path) -> Iterator[Doc]:
    for path in sorted((root / "usr/share/debian-reference").glob("*.en.html")):
        yield from paragraphs_as_docs(html_to_text(path.read_text(encoding="utf-8", errors="replace")),
                                      "debian-reference", path.name.split(".")[0], min_chars=1500)


def folder_source(folder: Path, name: str = "folder") -> Source:
    """Every ``*.txt`` under ``folder`` (sorted), split into section-sized documents."""
    return Source(name, "", "as given by the user", _text_files(name, "**/*.txt", str(folder.resolve()), 1500))


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("gcide", "dict-gcide", "GPL-2+ (GCIDE, from Webster 1913)", _dictd("gcide", "gcide")),
    Source("devils-dictionary", "dict-devil", "public domain (Bierce, 1911)", _dictd("devils-dictionary", "devil")),
    Source("wordnet", "wordnet-base", "WordNet 3.0 licence (Princeton, permissive)", wordnet_glosses),
    Source("jargon", "jargon-text", "public domain (The Jargon File 4.4.7)",
           _text_files("jargon", "jargon.txt.gz", "usr/share/doc/jargon-text", 600)),
    Source("python-docs", "python3.11-doc", "PSF-2.0 / Zero-Clause BSD (Python documentation)", python_docs),
    Source("debian-reference", "debian-reference-en", "GPL-2+ (Debian Reference)", debian_reference),
    Source("gnu-standards", "gnu-standards", "GFDL-1.3+ (GNU Coding Standards)",
           _text_files("gnu-standards", "*.text.gz", "usr/share/doc/gnu-standards")),
    Source("doc-debian", "doc-debian", "various free licences (Debian project documents)",
           _text_files("doc-debian", "*.txt*", "usr/share/doc/debian")),
]}
