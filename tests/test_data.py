"""The offline corpus pipeline on small local trees in the packages' own formats (no download in tests)."""
import gzip
import json

import pytest

from experiments.data import build, sources
from experiments.data.sources import SOURCES

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
    out = ""
    while True:
        out = B64[n % 64] + out
        n //= 64
        if not n:
            return out


def _fake_dictd(root, stem, entries):
    folder = root / "usr/share/dictd"
    folder.mkdir(parents=True)
    body, index, offsets = b"", [], {}
    for word, text in entries:
        if text not in offsets:
            offsets[text] = (len(body), len(text.encode()))
            body += text.encode()
        start, length = offsets[text]
        index.append(f"{word}\t{_b64(start)}\t{_b64(length)}")
    (folder / f"{stem}.dict.dz").write_bytes(gzip.compress(body))
    (folder / f"{stem}.index").write_text("00-database-short\tA\tB\n" + "\n".join(index) + "\n")


def _fake_wordnet(root):
    folder = root / "usr/share/wordnet"
    folder.mkdir(parents=True)
    header = "  1 This software and database is being provided to you\n"
    (folder / "data.noun").write_text(
        header + "00005930 03 n 02 dwarf 0 midget 0 001 @ 00004475 n 0000 | a plant or animal that is small  \n")
    for pos in ("verb", "adj", "adv"):
        (folder / f"data.{pos}").write_text(header + f"0000001{len(pos)} 00 v 01 run_away 0 000 | to leave quickly\n")


@pytest.fixture
def work(tmp_path):
    """A work folder as `fetch_package` leaves it, with small trees for three sources."""
    work = tmp_path / "work"
    gcide = work / "dict-gcide"
    _fake_dictd(gcide, "gcide", [("Apple", "Apple \\Ap\"ple\\, n. The fleshy pome of a tree of the genus Pyrus.\n"),
                                 ("Apples", "Apple \\Ap\"ple\\, n. The fleshy pome of a tree of the genus Pyrus.\n"),
                                 ("Cynic", "Cynic, n. A blackguard whose faulty vision sees things as they are.")])
    (gcide / ".slope-version").write_text("0.48.5+test\n")
    wordnet = work / "wordnet-base"
    _fake_wordnet(wordnet)
    (wordnet / ".slope-version").write_text("1:3.0-test\n")
    docs = work / "python3.11-doc" / "usr/share/doc/python3.11/html/_sources/library"
    docs.mkdir(parents=True)
    (docs / "os.rst.txt").write_text(":mod:`os` --- Miscellaneous\n===========\n\n.. module:: os\n\n"
                                     "Use :func:`os.path.join <os.path.join>` to join paths. " * 40)
    (work / "python3.11-doc" / ".slope-version").write_text("3.11.2-test\n")
    return work


def test_extractors_parse_the_package_formats(work):
    gcide = list(SOURCES["gcide"].extract(work / "dict-gcide"))
    assert [d.title for d in gcide] == ["Apple", "Cynic"]  # a second headword of the same entry is not repeated
    wordnet = list(SOURCES["wordnet"].extract(work / "wordnet-base"))
    assert wordnet[0].text == "dwarf, midget: a plant or animal that is small" and len(wordnet) == 4
    python = list(SOURCES["python-docs"].extract(work / "python3.11-doc"))
    text = sources.clean_text(python[0].text)
    assert "os.path.join to join paths" in text and ":func:" not in text and ".. module" not in text


def test_build_is_deterministic_disjoint_and_has_a_manifest(work, tmp_path):
    args = ["--sources", "gcide,wordnet,python-docs", "--work", str(work), "--seed", "3"]
    first = build.main(args + ["--out", str(tmp_path / "a")])
    second = build.main(args + ["--out", str(tmp_path / "b")])
    assert first["sha256"] == second["sha256"]
    for name in first["sha256"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    ids = {}
    for split in build.SPLITS:
        records = [json.loads(line) for line in (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines()]
        lines = (tmp_path / "a" / f"{split}.txt").read_text().splitlines()
        assert [r["text"] for r in records] == lines and all("\n" not in line for line in lines)
        ids[split] = {(r["source"], r["id"]) for r in records}
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
    entry = {e["name"]: e for e in first["sources"]}
    assert entry["gcide"]["version"] == "0.48.5+test" and entry["gcide"]["package"] == "dict-gcide"
    assert sum(s["documents"] for s in entry["wordnet"]["splits"].values()) == 4
    assert "GPL" in entry["gcide"]["license"]


def test_a_folder_of_text_files_is_a_source(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "one.txt").write_text("First paragraph of a plain text file, long enough to keep.\n\nSecond one.")
    manifest = build.main(["--folder", str(folder), "--out", str(tmp_path / "out")])
    assert manifest["sources"][0]["name"] == "folder:texts"
    assert sum(s["documents"] for s in manifest["sources"][0]["splits"].values()) == 1


def test_unknown_source_and_empty_request_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        build.main(["--sources", "wikipedia", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        build.main(["--out", str(tmp_path)])


def test_tokenizers_train_and_load_with_special_tokens(tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from experiments.data.tokenizer import load_tokenizer, train_bert_wordpiece, train_gpt2_bpe
    from experiments.provenance import REPO_ROOT

    files = [str(REPO_ROOT / "tests/data/devils_dictionary.txt")]
    gpt2 = load_tokenizer(train_gpt2_bpe(files, tmp_path / "bpe", 600), "gpt2", 256)
    text = "Cynic, n. A blackguard whose faulty vision sees things as they are."
    assert gpt2.decode(gpt2(text)["input_ids"]) == text  # byte-level: lossless
    assert gpt2.eos_token_id == gpt2.pad_token_id == gpt2.convert_tokens_to_ids("<|endoftext|>")
    bert = load_tokenizer(train_bert_wordpiece(files, tmp_path / "wp", 600), "bert", 128)
    ids = bert("A cynic.", "Second.")["input_ids"]
    assert ids[0] == bert.cls_token_id and ids.count(bert.sep_token_id) == 2 and bert.model_max_length == 128
