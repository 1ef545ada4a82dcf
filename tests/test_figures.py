"""`make figures` on the committed CSVs, on synthetic end-to-end rows, and on an empty results folder."""
import csv
import shutil
from pathlib import Path

from performance_experiments import figures

ROOT = Path(__file__).resolve().parents[1]


def test_renders_from_the_committed_csvs(tmp_path):
    written = {p.stem for p in figures.render_all(ROOT / "results", tmp_path)}
    # kernel figures from bench_linear_h100.csv; paper-only end-to-end figures until a GPU speedup CSV exists
    assert {"linear_inference", "linear_training", "training_speedup", "inference_speedup", "memory",
            "ablations", "ddp_losses", "seed_notes"} <= written
    assert all((tmp_path / f"{name}.png").stat().st_size > 10_000 for name in written)


def test_renders_end_to_end_rows_and_skips_missing_data(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    assert figures.render_all(results, tmp_path / "none") == []  # nothing there: nothing drawn, no error
    shutil.copy(ROOT / "results" / "paper_reference.csv", results)
    rows = []
    for variant, ratio in (("dense", 1.0), ("slope", 1.2)):
        for experiment, phase, batch in (("train", "step", "4"), ("prefill", "forward (last-position logits)", "8"),
                                         ("decode", "one token with KV cache", "1"),
                                         ("decode", "one token with KV cache", "32"),
                                         ("memory", "train static: total", "4"),
                                         ("train", "linear FWD (in situ)", "4"), ("train", "optimizer", "4")):
            rows.append({"experiment": experiment, "model": "opt-13b", "dtype": "bfloat16", "variant": variant,
                         "adapter_rank": "0", "phase": phase, "batch": batch, "median": "10.0",
                         "ratio_vs_dense": str(ratio), "status": "ok", "mode": "gpu", "date": "2026-11-23"})
    rows.append(dict(rows[-1], mode="cpu-toy (simulated)", model="opt-2.7b"))  # toy rows never enter the figures
    with open(results / "speedup_h100.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert all(r["model"] == "opt-13b" for r in figures.load_speedup(results))
    written = {p.stem for p in figures.render_all(results, tmp_path / "figs")}
    assert {"training_speedup", "inference_speedup", "decode_speedup", "memory", "train_breakdown"} <= written


def test_decode_figure_draws_the_graph_replayed_step_solid_and_eager_dashed():
    rows = [{"experiment": "decode", "model": "opt-13b", "dtype": "bfloat16", "precision": "half", "variant": "slope",
             "adapter_rank": "0", "phase": phase, "batch": batch, "ratio_vs_dense": ratio, "date": "2026-11-24"}
            for phase, ratios in (("one token with KV cache", ("0.4", "0.9")),
                                  ("one token with KV cache: CUDA graph", ("1.25", "1.02")),
                                  ("one token with KV cache: GPU busy time", ("1.2", "1.0")))  # not drawn
            for batch, ratio in zip(("1", "32"), ratios)]
    ax = figures.fig_decode_speedup(rows).axes[0]
    drawn = {line.get_label(): (line.get_linestyle(), list(line.get_ydata())) for line in ax.get_lines()
             if line.get_label().startswith("bfloat16")}
    assert drawn == {"bfloat16 slope r=0, CUDA graph": ("-", [1.25, 1.02]),
                     "bfloat16 slope r=0, eager": ("--", [0.4, 0.9])}


def test_pretraining_curves_take_the_largest_scale_and_band_the_seeds(tmp_path):
    from accuracy_experiments.curves import fig_pretraining_curves, load_curves

    assert fig_pretraining_curves(tmp_path) is None  # no curves: no figure, no error
    for scale, seeds in (("tiny", (0,)), ("small", (0, 1))):
        folder = tmp_path / "gpt2_losses" / scale
        folder.mkdir(parents=True)
        for seed in seeds:
            (folder / f"slope-r0.5%_seed{seed}.csv").write_text(
                "step,train_loss,val_loss,lr\n1,5.0,,0.1\n2,4.0,3.5,0.1\n4,3.0," + f"{3.0 + seed}" + ",0.1\n")
    curves = load_curves(tmp_path / "gpt2_losses" / "small")
    assert curves == {"slope-r0.5%": {2: [3.5, 3.5], 4: [3.0, 4.0]}}  # steps without a validation loss skipped
    fig = fig_pretraining_curves(tmp_path)
    (ax,) = fig.axes
    assert "small scale" in ax.get_title() and ax.get_legend().get_texts()[0].get_text() == "slope-r0.5% (2 seeds)"
    assert list(ax.lines[0].get_ydata()) == [3.5, 3.5]


def test_ablation_bars_are_the_settings_against_their_baseline():
    rows = [{"ablation": "cuda_graph", "model": "opt-13b", "num_blocks": "2", "dtype": "bfloat16", "device": "GPU",
             "experiment": "decode (no cache)", "variant": "slope", "batch": "", "tokens": "8", "setting": setting,
             "baseline_setting": "eager", "ratio_vs_baseline": ratio, "status": "ok", "date": "2026-11-23"}
            for setting, ratio in (("eager", "1.0"), ("graph", "3.2"))]
    rows.append(dict(rows[0], ablation="cutlass", setting="cutlass", baseline_setting="", ratio_vs_baseline="",
                     status="unsupported"))
    (ax,) = figures.fig_ablations(rows).axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cuda_graph: graph vs eager (slope), decode (no cache) b=8"]
    assert [bar.get_width() for bar in ax.patches] == [3.2]  # the baseline itself and the refused switch: no bar
    assert figures.fig_ablations([]) is None


def test_seed_notes_lines_take_the_newest_run_of_each_point(tmp_path):
    from performance_experiments.figure_seed_notes import fig_seed_notes

    base = {"benchmark": "tile_streams", "variant": "tiled, one stream per tile", "shape": "s", "dtype": "bfloat16"}
    rows = [dict(base, tokens="256", speedup_vs_dense="0.5"), dict(base, tokens="256", speedup_vs_dense="0.7"),
            dict(base, tokens="8192", speedup_vs_dense="1.0"), dict(base, benchmark="out_probe", speedup_vs_dense="")]
    fig = fig_seed_notes(rows)
    (line,) = fig.axes[1].get_lines()[:1]
    assert list(line.get_xdata()) == [256, 8192] and list(line.get_ydata()) == [0.7, 1.0]
    assert fig_seed_notes([dict(base, benchmark="out_probe", speedup_vs_dense="")]) is None


def test_end_to_end_figures_keep_to_the_gpu_with_the_most_rows(tmp_path):
    from performance_experiments import figures

    def write(name, device, count):
        with (tmp_path / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["mode", "status", "device", "model"])
            writer.writeheader()
            writer.writerows({"mode": "gpu", "status": "ok", "device": device, "model": str(i)} for i in range(count))

    write("speedup_h100.csv", "GPU-A", 3)
    write("speedup_h200.csv", "GPU-B", 2)  # a newer run on another GPU must not replace the H100's bars
    assert {r["device"] for r in figures.load_speedup(tmp_path)} == {"GPU-A"}
