"""metrics.jsonl loading, per-stage summaries and the plot command."""
import json
import subprocess
import sys

import pytest

from evaluation.plot import (MetricsFileError, load_metrics, main, moving_average, plot_metrics, plottable_keys,
                             summarize_metrics)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROWS = [
    {"step": 1, "stage": "understand", "role": "discriminator", "discriminator/reward_mean": 0.2,
     "discriminator/valid_test_rate": 0.5, "ppo/kl_ref": 0.01},
    {"step": 2, "stage": "understand", "role": "generator", "generator/reward_mean": 0.4,
     "generator/pass_rate": 0.25, "ppo/kl_ref": 0.03, "ppo/skipped": True},
    {"step": 3, "stage": "edge_cases", "role": "discriminator", "discriminator/reward_mean": 0.6,
     "discriminator/valid_test_rate": 1.0, "ppo/kl_ref": float("nan")},
    {"step": 4, "stage": "edge_cases", "role": "generator", "generator/reward_mean": 0.8,
     "generator/pass_rate": 0.75, "ppo/kl_ref": 0.05, "note": "text"},
]


@pytest.fixture
def run_dir(tmp_path):
    lines = [json.dumps(r) for r in ROWS]
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    return tmp_path


def test_load_metrics_from_a_folder_or_a_file(run_dir):
    rows = load_metrics(run_dir)
    assert len(rows) == 4 and rows[1]["generator/reward_mean"] == 0.4  # the blank line is skipped
    assert load_metrics(run_dir / "metrics.jsonl") == rows


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such metrics file"), ("", "holds no rows"), ("\n  \n", "holds no rows"),
     ('{"step": 1}\n{"step": 2,\n', "line 2 is not valid JSON"), ("[1, 2]\n", "line 1 is not a JSON object")],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "metrics.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MetricsFileError, match=message) as info:
        load_metrics(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_summarize_metrics_per_stage_and_whole_run():
    summary = summarize_metrics(ROWS)
    run, stages = summary["run"], summary["stages"]
    assert list(stages) == ["understand", "edge_cases"]
    assert run["generator/reward_mean"] == pytest.approx((0.4 + 0.8) / 2)
    assert run["discriminator/valid_test_rate"] == pytest.approx(0.75)
    assert run["ppo/kl_ref"] == pytest.approx((0.01 + 0.03 + 0.05) / 3)  # NaN skipped
    assert stages["understand"]["ppo/kl_ref"] == pytest.approx(0.02)
    assert stages["edge_cases"]["ppo/kl_ref"] == pytest.approx(0.05)
    assert stages["edge_cases"]["generator/pass_rate"] == 0.75
    # bookkeeping fields, bools and strings are not metrics
    assert not {"step", "stage", "role", "ppo/skipped", "note"} & set(run)
    assert summarize_metrics([{"step": 1, "x/y": 2}]) == {"run": {"x/y": 2.0}, "stages": {}}


def test_a_stage_run_again_is_summarized_apart():
    rows = [{"step": 0, "position": 0, "stage": "understand", "x": 1.0},
            {"step": 1, "position": 1, "stage": "understand", "x": 3.0},
            {"step": 2, "position": 2, "stage": "edge_cases", "x": 5.0},
            {"step": 3, "position": 0, "stage": "understand", "x": 7.0},  # --resume --start-stage understand
            {"step": 4, "position": 1, "stage": "understand", "x": 9.0},
            {"step": 5, "position": 0, "stage": "understand", "x": 11.0}]  # the same stage again: position back
    stages = summarize_metrics(rows)["stages"]
    assert list(stages) == ["understand", "edge_cases", "understand (run 2)", "understand (run 3)"]
    assert stages["understand"]["x"] == 2.0 and stages["understand (run 2)"]["x"] == 8.0
    assert "position" not in stages["understand"]  # bookkeeping, not a metric


def test_plottable_keys_skip_missing_ones():
    assert plottable_keys(ROWS) == ["generator/reward_mean", "discriminator/reward_mean",
                                    "discriminator/valid_test_rate", "generator/pass_rate", "ppo/kl_ref"]
    assert plottable_keys(ROWS, ["ppo/kl_ref", "ppo/absent"]) == ["ppo/kl_ref"]
    # none of the standard curves: fall back to whatever numeric metrics there are
    assert plottable_keys([{"step": 1, "ppo/entropy": 2.0, "flag": True}]) == ["ppo/entropy"]


def test_plot_writes_a_png(run_dir):
    pytest.importorskip("matplotlib")
    out = plot_metrics(load_metrics(run_dir), run_dir / "figs" / "curves.png", title="tiny")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    # rows with only some keys, no step, no stage, no role
    sparse = plot_metrics([{"generator/reward_mean": 0.1}, {"ppo/kl_ref": 0.2}, {}], run_dir / "sparse.png")
    assert sparse.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(MetricsFileError, match="no numeric metrics to plot"):
        plot_metrics(ROWS, run_dir / "none.png", keys=["absent/key"])


def test_moving_average_is_trailing():
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert moving_average([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 1.5, 2.0, 3.0]
    assert moving_average([1.0, 3.0], 0) == [1.0, 3.0]


def test_smoothed_plot_draws_both(run_dir):
    pytest.importorskip("matplotlib")
    assert main([str(run_dir), "--smooth", "3", "--out", str(run_dir / "smooth.png")]) == 0
    assert (run_dir / "smooth.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_writes_png_and_summary(run_dir, capsys):
    pytest.importorskip("matplotlib")
    assert main([str(run_dir), "--summary"]) == 0
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    printed = capsys.readouterr().out
    summary, wrote = printed[:printed.rindex("}") + 1], printed[printed.rindex("}") + 1:]
    assert json.loads(summary)["stages"]["understand"]["ppo/kl_ref"] == pytest.approx(0.02)
    assert wrote.strip() == f"wrote {run_dir / 'curves.png'} (4 rows)"


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text("not json\n")
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 1 is not valid JSON" in err and err.count("\n") == 1
    assert not (tmp_path / "curves.png").exists()
    # without matplotlib: one line that says how to get it
    (tmp_path / "metrics.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and err.count("\n") == 1
    # --summary draws nothing it needs matplotlib for: the summary, and a note that no PNG was written
    assert main([str(tmp_path), "--summary"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["run"] and captured.err.startswith("note: no PNG written")


def test_cli_help_documents_each_option():
    result = subprocess.run([sys.executable, "-m", "evaluation.plot", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for option in ("path", "--out", "--keys", "--title", "--summary"):
        assert option in result.stdout
    missing = subprocess.run([sys.executable, "-m", "evaluation.plot", "/nonexistent/run"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.strip() == "error: /nonexistent/run: no such metrics file"


def test_curves_split_update_metrics_by_role_only():
    from evaluation.plot import curves

    # generator/... is measured at every step: one curve over the rows that have it
    assert curves(ROWS, "generator/reward_mean") == {"generator/reward_mean": [(2.0, 0.4), (4.0, 0.8)]}
    # ppo/... belongs to the update of the row's role: one curve per role, the NaN point dropped
    assert curves(ROWS, "ppo/kl_ref") == {"discriminator": [(1.0, 0.01)], "generator": [(2.0, 0.03), (4.0, 0.05)]}
    # validation/... is both models on a fixed slice, logged on whichever role's row: one curve
    rows = [dict(ROWS[0], **{"validation/score": 0.5}), dict(ROWS[1], **{"validation/score": 0.7})]
    assert curves(rows, "validation/score") == {"validation/score": [(1.0, 0.5), (2.0, 0.7)]}
    # steps that go back (or are missing) fall back to the row number
    assert curves([{"step": 5, "a/b": 1}, {"step": 2, "a/b": 2}], "a/b") == {"a/b": [(0.0, 1.0), (1.0, 2.0)]}
