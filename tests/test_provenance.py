"""Provenance stamped on result rows."""


def test_provenance_names_the_output_folder_not_a_machine_path(monkeypatch):
    from experiments.provenance import provenance

    monkeypatch.setenv("OUT", "/some/machine/out")
    monkeypatch.setattr("sys.argv", ["ddp_check.py", "--results", "/some/machine/out/ddp.csv"])
    assert provenance()["command"] == "ddp_check.py --results $OUT/ddp.csv"


def test_a_table_cites_every_commit_and_machine_of_its_rows():
    from experiments.results_io import provenance_summary

    rows = [{"device": "GPU-X", "git_sha": "aaaaaaa111", "git_dirty": "False", "date": "2026-11-22T10:00:00+00:00"},
            {"device": "cpu", "git_sha": "bbbbbbb222", "git_dirty": "True", "date": "2026-11-23T10:00:00+00:00"},
            {"device": "GPU-X", "git_sha": "aaaaaaa111", "git_dirty": "False", "date": "2026-11-22T11:00:00+00:00"}]
    assert provenance_summary(rows) == ("device GPU-X, cpu, commit aaaaaaa, bbbbbbb (dirty), "
                                        "2026-11-22 – 2026-11-23")
