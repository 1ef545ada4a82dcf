"""Performance claims of CLAIMS.md on synthetic CSVs: verdict boundaries, spreads, cross-run labels, missing files."""
import csv

import pytest

from experiments import claims, claims_perf as perf, perf_evidence as ev
from experiments.results_io import PROVENANCE_COLUMNS

E2E_COLUMNS = ("experiment", "model", "num_blocks", "full_blocks", "dtype", "precision", "attention", "batch", "seq",
               "tokens", "variant", "adapter_rank", "phase", "metric", "median", "iqr", "min", "max", "unit",
               "repeats", "ratio_vs_dense", "ideal", "ideal_basis", "paper", "status", "mode", "note",
               *PROVENANCE_COLUMNS)
BENCH_COLUMNS = ("benchmark", "shape", "d_in", "d_out", "tokens", "dtype", "variant", "median", "iqr", "min", "max",
                 "unit", "repeats", "speedup_vs_dense", "ideal", "note", *PROVENANCE_COLUMNS)
RUN_A = {"git_sha": "aaaaaaa111", "git_dirty": "False", "config_hash": "cfgA", "command": "speedup.py",
         "device": "GPU-X", "date": "2026-01-01T10:00:00+00:00"}
RUN_B = {"git_sha": "bbbbbbb222", "git_dirty": "False", "config_hash": "cfgB",
         "command": "speedup.py --sections train --variants slope --mask-change-freq 100",
         "device": "GPU-X", "date": "2026-01-02T10:00:00+00:00"}


def _write(path, columns, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**dict.fromkeys(columns, ""), **row} for row in rows)


def _e2e(variant, phase, median, iqr=0.0, run=RUN_A, experiment="train", **extra):
    return {"experiment": experiment, "model": "opt-13b", "num_blocks": 8, "full_blocks": 40, "dtype": "bfloat16",
            "precision": "half", "attention": "sdpa", "batch": 4, "seq": 2048, "variant": variant,
            "adapter_rank": 0, "phase": phase, "metric": "bytes" if experiment == "memory" else "time",
            "median": median, "iqr": iqr, "status": "ok", **run, **extra}


def _measure(*spans):
    return ev.Measure(tuple(ev.Sample(v, lo, hi, (("GPU-X", "abc1234", "2026-01-01"),)) for v, lo, hi in spans))


# ----- the verdict rule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spans, goal, higher, expected", [
    ([(1.35, 1.30, 1.40)], 1.30, True, ev.MET),              # the low end exactly at the goal: met
    ([(1.30, 1.25, 1.35)], 1.30, True, ev.BORDERLINE),       # straddles
    ([(1.25, 1.20, 1.30)], 1.30, True, ev.BORDERLINE),       # the high end touches the goal: not "all below"
    ([(1.25, 1.20, 1.29)], 1.30, True, ev.MISSED),
    ([(0.55, 0.50, 0.62)], 0.62, False, ev.MET),             # lower is better (memory, host µs)
    ([(0.62, 0.60, 0.64)], 0.62, False, ev.BORDERLINE),
    ([(0.70, 0.63, 0.75)], 0.62, False, ev.MISSED),
    ([(1.1, 0, 0), (1.2, 0, 0), (1.4, 0, 0)], 1.15, True, ev.BORDERLINE),  # several runs: min–max of the values
    ([(1.2, 0, 0), (1.3, 0, 0)], 1.15, True, ev.MET),        # runs' own IQRs do not widen a multi-run spread
])
def test_verdict_boundaries(spans, goal, higher, expected):
    assert ev.verdict(_measure(*spans), goal, higher) == expected


def test_missed_says_by_how_much_and_no_measure_is_not_measured():
    line = ev.Line("X", "s", _measure((1.0, 0.9, 1.1)), 1.25, "≥ 1.25")
    assert line.verdict == "missed by 0.25 (20% of the goal)"
    assert ev.Line("X", "s", None, 1.25, "≥ 1.25").verdict == ev.NOT_MEASURED
    note = ev.Line("X", "s", _measure((0.5, 0.4, 0.6)), 1.0, "≥ 1", note=True)
    assert note.verdict == "refuted"


def test_a_speedup_above_its_ideal_is_suspect_not_met():
    above = ev.Line("P3", "decode b=8", _measure((1.55, 1.40, 1.70)), 1.0, "≥ 1", ceiling=1.16)
    assert above.verdict.startswith(ev.SUSPECT) and "1.160×" in above.verdict
    near = ev.Line("P3", "decode b=8", _measure((1.15, 1.10, 1.21)), 1.0, "≥ 1", ceiling=1.16)
    assert near.verdict == ev.MET  # within reach of the ideal (and its spread touches it)
    assert ev.Line("P3", "decode", _measure((1.55, 1.40, 1.70)), 1.0, "≥ 1").verdict == ev.MET  # no ideal known


def test_one_run_spread_comes_from_both_sides_iqr():
    dense = {"median": "100", "iqr": "10", **RUN_A, "_i": 0}
    slope = {"median": "80", "iqr": "4", **RUN_A, "_i": 1}
    s = ev.ratio(dense, slope)
    assert s.value == pytest.approx(1.25) and not s.cross_run
    assert (s.lo, s.hi) == (pytest.approx(95 / 82), pytest.approx(105 / 78))
    m = ev.measure([s])
    assert m.spread == (s.lo, s.hi) and m.basis == "IQR of one run's repeats"
    assert ev.ratio(dense, {**slope, "median": "0"}) is None and ev.ratio(slope, {**dense, "median": "0"}) is None


def test_pairing_prefers_the_same_run_and_labels_cross_run():
    dense_a = {"k": "1", **RUN_A, "_i": 0}
    dense_b = {"k": "1", **RUN_B, "_i": 5}
    slope_b = {"k": "1", **RUN_B, "_i": 6}
    slope_c = {"k": "1", **RUN_B, "config_hash": "cfgC", "_i": 9}
    assert ev.pair([dense_a, dense_b], [slope_b], ("k",)) == [(dense_b, slope_b)]
    assert ev.pair([dense_a], [slope_c], ("k",)) == []                      # no cross-run unless asked
    assert ev.pair([dense_a], [slope_c], ("k",), cross_run=True) == [(dense_a, slope_c)]


# ----- end to end on synthetic CSVs -------------------------------------------------------------------------------
def _train_rows():
    return [_e2e("dense", "step", 250, 4), _e2e("dense", "forward+backward", 230, 4),
            _e2e("dense", "optimizer", 20, 0.2),
            _e2e("slope", "step", 200, 2), _e2e("slope", "forward+backward", 180, 2), _e2e("slope", "optimizer", 20),
            # a second run at another commit that measured SLoPe only (mask every 100 steps): its ratio is cross-run
            _e2e("slope (W_RC mask every 100 steps)", "step", 150, 2, run=RUN_B),
            _e2e("slope (W_RC mask every 100 steps)", "forward+backward", 140, 2, run=RUN_B),
            _e2e("dense", "train static: total", 100, experiment="memory"),
            _e2e("slope", "train static: total", 119, experiment="memory", ratio_vs_dense=1.5)]


def test_training_lines_cross_run_label_and_paper_goal(tmp_path):
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, _train_rows())
    (tmp_path / "paper_reference.csv").write_text(
        "table,method,adapter_rank,sparsity_pattern,task,metric,value,source\n"
        "speedup_training,SLoPe,N/A,2:4,opt-13b,training speedup vs dense (x),1.1,test\n")
    text, built = perf.build(tmp_path)
    p1 = {c.key: c for c in built}["P1"].lines
    main, freq100 = p1
    assert main.goal == 1.1                                           # read from paper_reference.csv
    assert main.measure.median == pytest.approx(1.25) and not main.measure.cross_run
    assert main.verdict == ev.MET                                   # low end 248/201 = 1.234 ≥ 1.1
    assert "every 100 steps" in freq100.subject and freq100.measure.cross_run
    assert freq100.measure.median == pytest.approx(250 / 150)
    assert "aaaaaaa" in freq100.measure.cites and "bbbbbbb" in freq100.measure.cites
    assert "**cross-run**" in text and "GPU-X · aaaaaaa · 2026-01-01" in text
    checks = perf.csv_checks(perf.load(tmp_path))
    assert any("stores ratio 1.5" in c and "1.1900" in c for c in checks)    # stored ratio ≠ its rows
    assert any("measured no dense model" in c and "--mask-change-freq 100" in c for c in checks)


def test_each_configuration_gets_its_own_phase_table_and_dense_column(tmp_path):
    run_c = dict(RUN_A, git_sha="ccccccc333", config_hash="cfgC")
    fp16 = [_e2e(v, phase, ms, run=run_c, dtype="float16") for v, phase, ms in (
        ("dense", "step", 400), ("dense", "forward", 111), ("slope", "step", 500), ("slope", "forward", 99))]
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, _train_rows() + fp16)
    text, built = perf.build(tmp_path)
    tables = [line for line in text.splitlines() if line.startswith("Per phase")]
    assert len(tables) == 2 and "bfloat16" in tables[0] and "float16, " in tables[1]
    assert "ccccccc" in tables[1] and "ccccccc" not in tables[0]
    fp16_table = text.split(tables[1], 1)[1]
    assert "| step | 400.00 |" in fp16_table and "| forward | 111.00 |" in fp16_table  # its own dense, not bf16's
    assert "250.00" not in fp16_table.split("\n\n", 2)[1]


def test_a_ratio_against_a_dense_step_on_nan_weights_says_it_is_understated(tmp_path):
    run_c = dict(RUN_A, git_sha="ccccccc333", config_hash="cfgC")
    fp16 = [_e2e("dense", "step", 220, run=run_c, dtype="float16", note="loss not finite (timing only)"),
            _e2e("slope", "step", 210, run=run_c, dtype="float16")]
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, _train_rows() + fp16)
    p1 = {c.key: c for c in perf.build(tmp_path)[1]}["P1"].lines
    flagged = [line for line in p1 if "NaN weights" in line.subject]
    assert len(flagged) == 1 and "float16" in flagged[0].subject  # the bf16 run's dense was finite


def test_a_dense_baseline_that_moved_between_runs_is_flagged(tmp_path):
    run_c = dict(RUN_A, git_sha="ccccccc333", config_hash="cfgC", date="2026-01-03T10:00:00+00:00")
    rows = _train_rows() + [_e2e("dense", "step", 400, run=run_c), _e2e("dense", "optimizer", 21, run=run_c)]
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, rows)
    checks = perf.csv_checks(perf.load(tmp_path))
    moved = [c for c in checks if "in different runs" in c]
    assert len(moved) == 1 and "250 ms" in moved[0] and "400 ms" in moved[0] and "1.60×" in moved[0]  # 21 vs 20: ok


def test_present_csv_without_the_rows_is_not_measured(tmp_path):
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, _train_rows())
    built = {c.key: c for c in perf.build(tmp_path)[1]}
    assert built["P2"].lines[0].verdict == ev.NOT_MEASURED          # no prefill rows
    amp = [line for line in built["P4"].lines if "amp" in line.subject]
    assert amp and amp[0].verdict == ev.NOT_MEASURED                  # no --precision amp rows
    half = [line for line in built["P4"].lines if "half" in line.subject][0]
    assert half.verdict.startswith(ev.MISSED) and half.measure.basis == "one measurement"


def test_missing_files_make_claims_not_run_not_errors(tmp_path):
    text, built = perf.build(tmp_path)
    lines = [line for c in built for line in c.lines]
    assert "## Performance claims" in text
    assert all(line.measure is None for line in lines)
    assert {c.key: c for c in built}["P1"].lines[0].verdict == "not run (no `speedup_h100.csv`)"
    p7 = {c.key: c for c in built}["P7"].lines
    assert len(p7) > 3 and all(line.verdict == "not run (no `bench_linear_h100.csv`)" for line in p7)
    assert {c.key: c for c in built}["P5"].lines[0].verdict == "not run (no `bench_inference_h100.csv`)"
    claims.main(["--results", str(tmp_path)])                         # the accuracy part runs beside it
    assert "not run (no `speedup_h100.csv`)" in (tmp_path / "CLAIMS.md").read_text()


def _optim(sha, date, dense_ms, sparse_ms):
    run = {**RUN_A, "git_sha": sha, "date": date, "command": "bench_linear.py --preset optim"}
    return [{"benchmark": "optim", "shape": "fc1", "dtype": "float32", "variant": "torch fused AdamW (dense fp32)",
             "median": dense_ms, "iqr": 0.01, **run},
            {"benchmark": "optim", "shape": "fc1", "dtype": "bfloat16", "variant": "ADAMWSparse (mask every step)",
             "median": sparse_ms, "iqr": 0.01, **run}]


def test_optimizer_takes_the_newest_run_and_host_time_is_lower_is_better(tmp_path):
    host = [{"benchmark": "host", "shape": "1024x1024", "tokens": 16, "dtype": "float16", "variant": "spmm extension",
             "median": us, "iqr": 0.2, **RUN_A, "git_sha": sha} for us, sha in ((25.0, "c1"), (28.0, "c2"))]
    _write(tmp_path / "bench_linear_h100.csv", BENCH_COLUMNS,
           _optim("old0000", "2026-01-01T00:00:00+00:00", 1.0, 5.0)
           + _optim("new0000", "2026-01-03T00:00:00+00:00", 1.0, 0.8) + host)
    p7 = {c.key: c for c in perf.build(tmp_path)[1]}["P7"]
    every_step = [line for line in p7.lines if "mask every step" in line.subject][0]
    assert every_step.measure.median == pytest.approx(1.25) and every_step.verdict == ev.MET
    assert "new0000" in every_step.measure.cites and "old0000" not in every_step.measure.cites
    assert any("old0000" in d and "new0000" in d for d in p7.details)  # the older run stays as history
    host_line = [line for line in p7.lines if "host time" in line.subject][0]
    assert host_line.verdict == ev.MET and host_line.measure.spread == (25.0, 28.0)  # ≤ 30 µs


def test_tiling_gain_pools_shapes_and_runs_of_the_inference_bench(tmp_path):
    rows = []
    for sha, tiled in (("r1", 0.9), ("r2", 1.1)):
        run = {**RUN_A, "git_sha": sha}
        rows += [{"benchmark": "infer_layer", "shape": "fc1", "tokens": 8192, "dtype": "bfloat16",
                  "variant": "slope r0 untiled", "median": 1.0, "iqr": 0.0, **run},
                 {"benchmark": "infer_layer", "shape": "fc1", "tokens": 8192, "dtype": "bfloat16",
                  "variant": "slope r0 tiled", "median": tiled, "iqr": 0.0, **run}]
    _write(tmp_path / "bench_inference_h100.csv", BENCH_COLUMNS, rows)
    line = {c.key: c for c in perf.build(tmp_path)[1]}["P5"].lines[0]
    assert line.measure.spread == (pytest.approx(1 / 1.1), pytest.approx(1 / 0.9))
    assert line.verdict == ev.BORDERLINE and line.measure.basis == "min–max of 2 shapes × runs"


def test_ablation_lines_pair_each_setting_with_its_baseline_in_the_same_run(tmp_path):
    from experiments.claims_perf_ablations import claim_ablations
    from experiments.claims_perf_inputs import load

    columns = ["ablation", "model", "num_blocks", "dtype", "experiment", "batch", "tokens", "variant", "setting",
               "baseline_setting", "median", "iqr", "status", "note", "git_sha", "git_dirty", "config_hash", "command",
               "device", "date"]
    run = {"model": "opt-13b", "num_blocks": "2", "dtype": "bfloat16", "git_sha": "a" * 40, "git_dirty": "False",
           "config_hash": "h", "command": "ablations.py", "device": "GPU", "date": "2026-11-23", "iqr": "0",
           "note": "", "status": "ok"}
    rows = [dict(run, ablation="cuda_graph", experiment="decode", batch=str(b), tokens=str(b), variant="slope",
                 setting=setting, baseline_setting="eager", median=str(ms))
            for b, eager, graph in ((1, 3.0, 1.0), (8, 3.0, 1.5)) for setting, ms in (("eager", eager), ("graph", graph))]
    rows.append(dict(run, ablation="cuda_graph", experiment="train", batch="", tokens="8192", variant="slope",
                     setting="eager", baseline_setting="eager", median="80"))
    rows.append(dict(run, ablation="cuda_graph", experiment="train", batch="", tokens="8192", variant="slope",
                     setting="graph", baseline_setting="eager", median="100"))
    rows.append(dict(run, ablation="cutlass", experiment="", batch="", tokens="", variant="slope", setting="cutlass",
                     baseline_setting="", median="", status="unsupported",
                     note="BackendUnavailableError: not on sm_90; use backend='cusparselt'"))
    with (tmp_path / "ablations_h100.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    claim = claim_ablations(load(tmp_path))
    decode, train, cutlass = claim.lines
    assert decode.measure.median == pytest.approx(2.5) and decode.measure.spread == (2.0, 3.0)  # eager / graph
    assert decode.verdict == "confirmed" and train.verdict == "refuted"  # helps decode, slows training: two lines
    assert cutlass.verdict == "unsupported (BackendUnavailableError: not on sm_90)"
    assert any("b=1 3.000×; b=8 2.000×" in d for d in claim.details)
    assert claim_ablations(load(tmp_path / "none")).lines[0].verdict.startswith("not run")


def test_summary_shows_each_configuration_once_at_its_newest_run(tmp_path):
    run_c = dict(RUN_A, git_sha="ccccccc333", config_hash="cfgC", date="2026-01-03T10:00:00+00:00")
    newer = [_e2e("dense", "step", 250, 4, run=run_c, note="loss not finite (timing only)"),
             _e2e("slope", "step", 125, 2, run=run_c)]
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, _train_rows() + newer)
    text, built = perf.build(tmp_path)
    p1 = {c.key: c for c in built}["P1"].lines
    every = [line for line in p1 if line.group.endswith("every step (the paper's)")]
    assert len(every) == 2 and "NaN weights" in every[1].subject  # two runs, subjects differ by the caveat only
    current = perf.current(p1)
    assert len(current) == 2                                        # every step; every 100 steps
    latest, earlier = current[0]
    assert latest is every[1] and earlier == [every[0]]             # the newest run decides, the older is listed
    summary = text.split("### Summary", 1)[1].split("### P1.", 1)[0]
    rows = [r for r in summary.splitlines() if r.startswith("| P1 |")]
    assert len(rows) == 2 and "| 2.000× (" in rows[0] and "| 1: 1.250–1.250 |" in rows[0]
    details = text.split("### P1.", 1)[1]
    assert details.count("every step (the paper's)") >= 2           # the history stays below the summary


def _note(benchmark, variant, median, tokens=256, dtype="bfloat16", shape="s", **extra):
    return {"benchmark": benchmark, "shape": shape, "tokens": tokens, "dtype": dtype, "variant": variant,
            "median": median, "iqr": 0, "unit": "ms", **RUN_A, "device": "GPU-Y", **extra}


def test_seed_notes_lines_read_the_notes_and_ddp_csvs_of_any_gpu(tmp_path):
    notes = [_note("out_probe", "torch.mm(W_sparse, Xᵀ, out=)", 0.0, note="0% of out holds the product"),
             _note("out_write", "tiled, assigned (reference code)", 1.3),
             _note("out_write", "tiled, in place (spmm_out)", 1.0),
             _note("tile_streams", "tiled, in place (spmm_out)", 1.0),
             _note("tile_streams", "tiled, one stream per tile", 1.25),             # streams slower: no speedup
             _note("tile_streams", "tiled, one stream (graph replay)", 1.0),
             _note("tile_streams", "tiled, one stream per tile (graph replay)", 0.5),  # streams 2x faster
             _note("hf_fp16", "transformers.Trainer(fp16=True), fp16 weights", 0.0, note="raised ValueError"),
             _note("hf_fp16", "slope.optim.DynamicLossScaler, fp16 weights", 3.0, note="3 of 3 steps")]
    _write(tmp_path / "seed_notes_gpuy.csv", BENCH_COLUMNS, notes)
    ddp = [_e2e(v, "step (2 GPUs, DDP)", ms, experiment="train-ddp", note=note, device="GPU-Y") for v, ms, note in (
        ("dense", 350, ""), ("slope", 300, "kernels: extension"))]
    _write(tmp_path / "speedup_ddp_gpuy.csv", E2E_COLUMNS, ddp)
    lines = {c.key: c for c in perf.build(tmp_path)[1]}["P8"].lines
    p8 = {line.subject.split('"')[1]: line for line in lines}
    assert p8["matmul with out= does not write the output"].verdict == "confirmed"
    assert p8["... fixing it would help slightly"].measure.median == pytest.approx(1.3)
    streams = [line for line in lines if "streams" in line.subject]
    assert [s.verdict for s in streams] == ["confirmed", "refuted"]  # eager: no speedup; graph: 2x
    hf = p8["HF Trainer cannot train fully in FP16"]
    assert hf.verdict == "confirmed" and "3 of 3 steps" in hf.why
    distributed = p8["cuSPARSELt fails in distributed settings"]
    assert distributed.verdict == "refuted" and distributed.measure.median == pytest.approx(350 / 300)
    assert "GPU-Y" in distributed.measure.cites


def test_seed_notes_without_their_csvs_are_not_run(tmp_path):
    lines = {c.key: c for c in perf.build(tmp_path)[1]}["P8"].lines
    assert any(line.verdict == "not run (no `seed_notes_*.csv`)" for line in lines)
    assert any(line.verdict == "not run (no `speedup_ddp_*.csv`)" for line in lines)


def test_other_gpus_rows_get_their_own_claim_and_never_replace_the_h100_runs(tmp_path):
    h200 = dict(RUN_A, git_sha="ddddddd444", config_hash="cfgD", device="GPU-Y", date="2026-02-01T10:00:00+00:00")
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, _train_rows())
    _write(tmp_path / "speedup_h200.csv", E2E_COLUMNS, [
        _e2e("dense", "step", 240, 2, run=h200), _e2e("slope", "step", 120, 2, run=h200),
        _e2e("dense", "inference static, sparse-able linears", 1000, run=h200, experiment="memory"),
        _e2e("slope", "inference static, sparse-able linears", 563, run=h200, experiment="memory")])
    _write(tmp_path / "speedup_ddp_h200.csv", E2E_COLUMNS, [])  # data-parallel runs are P8's, not P11's
    text, built = perf.build(tmp_path)
    by_key = {c.key: c for c in built}
    assert all("GPU-Y" not in line.measure.cites for line in by_key["P1"].lines if line.measure)
    p11 = by_key["P11"].lines
    assert {line.subject.split(":")[0] for line in p11} == {"H200"}
    step = next(line for line in p11 if "train step" in line.subject)
    assert step.measure.median == pytest.approx(2.0) and "GPU-Y · ddddddd" in step.measure.cites
    linears = next(line for line in p11 if "sparse-able linears only" in line.subject)
    assert linears.measure.median == pytest.approx(0.563) and linears.verdict == ev.MET  # ≤ 0.58
    assert "### P11." in text and "| P11 | H200: " in text


def test_without_another_gpus_csv_p11_is_not_run(tmp_path):
    _write(tmp_path / "speedup_h100.csv", E2E_COLUMNS, _train_rows())
    p11 = {c.key: c for c in perf.build(tmp_path)[1]}["P11"].lines
    assert len(p11) == 1 and p11[0].verdict.startswith("not run")


def test_runs_of_the_two_mask_storages_are_separate_configurations():
    from experiments.claims_perf_e2e import mask_placement
    from performance_experiments.e2e import masks_note

    note = "inference layers: SLoPeInferenceLinear{}; few-token kernel at <= [0] tokens"  # as speedup writes it
    assert mask_placement({"note": note.format(masks_note([True] * 45))}) == ", masks in cuSPARSELt's metadata"
    assert mask_placement({"note": note.format(masks_note([False] * 45))}) == ", mask copies"
    assert mask_placement({"note": note.format(masks_note([True] * 3 + [False] * 42))}) == \
        ", masks in cuSPARSELt's metadata in 3 of 45 layers"
    assert mask_placement({"note": "kernels: extension"}) == mask_placement({}) == ""  # runs before the note
