"""Provenance stamped on result rows."""


def test_provenance_names_the_output_folder_not_a_machine_path(monkeypatch):
    from experiments.provenance import provenance

    monkeypatch.setenv("OUT", "/some/machine/out")
    monkeypatch.setattr("sys.argv", ["ddp_check.py", "--results", "/some/machine/out/ddp.csv"])
    assert provenance()["command"] == "ddp_check.py --results $OUT/ddp.csv"
