"""The model workflow as a user runs it, on generated data with the ``tiny`` preset:
train -> registry (list, promote) -> backtest --strategy ensemble -> evaluate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from tests.conftest import fetch
from tests.helpers import write_series


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("mdata")
    return [write_series(d, "AAA/USDT", 2900, seed=31), write_series(d, "BBB/USDT", 2900, seed=32)]


def test_train_registry_backtest_evaluate(files: list[Path], fresh_db: str,
                                          tmp_path: Path) -> None:
    runner = CliRunner()
    data_args = [a for f in files for a in ("--data", str(f))]
    common = ["--db", fresh_db, "--data-dir", str(tmp_path)]
    # no active ensemble yet: the ensemble strategy says what to do
    r0 = runner.invoke(app, ["backtest", *data_args, "--timeframe", "1h", "--strategy",
                             "ensemble", *common])
    assert r0.exit_code == 2 and "stackbot train" in r0.output
    r1 = runner.invoke(app, ["train", *data_args, "--timeframe", "1h", "--preset", "tiny",
                             *common])
    assert r1.exit_code == 0, r1.output
    assert "promoted to active" in r1.output and "checkpoints:" in r1.output
    ckpts = list((tmp_path / "models").glob("ens-*/*.pt"))
    assert len(ckpts) == 12
    rows = asyncio.run(fetch(fresh_db, "SELECT id, architecture, status, checkpoint_sha256, "
                             "feature_spec_hash FROM model_versions"))
    assert len(rows) == 13 and {r["status"] for r in rows} == {"active"}
    ens_id = next(r["id"] for r in rows if r["architecture"] == "ensemble")
    # a second training run is a candidate until promoted
    r2 = runner.invoke(app, ["train", *data_args, "--timeframe", "1h", "--preset", "tiny",
                             "--models", "lstm,gru", "--seed", "3", *common])
    assert r2.exit_code == 0 and "registered as candidate" in r2.output
    listed = runner.invoke(app, ["models", "list", "--json", *common])
    versions = json.loads(listed.stdout[listed.stdout.index("["):])
    new_id = next(
        v["id"] for v in versions if v["architecture"] == "ensemble" and v["id"] != ens_id
    )
    # at 80 columns the table still shows every id whole: `models promote` takes them
    from bot.cli_common import out

    width, out.width = out.width, 80
    try:
        shown = runner.invoke(app, ["models", "list", *common]).stdout
    finally:
        out.width = width
    assert all(v["id"] in shown for v in versions), shown
    assert runner.invoke(app, ["models", "promote", new_id, *common]).exit_code == 0
    st = {
        r["id"]: r["status"]
        for r in asyncio.run(
            fetch(fresh_db, "SELECT id, status FROM model_versions WHERE architecture='ensemble'")
        )
    }
    assert st == {ens_id: "retired", new_id: "active"}
    bad = runner.invoke(app, ["models", "promote", "ens-nope", *common])
    assert bad.exit_code == 2 and "no ensemble" in bad.output
    assert runner.invoke(app, ["models", "promote", ens_id, *common]).exit_code == 0
    # trade with the active models: every signal and order names that ensemble
    r3 = runner.invoke(
        app,
        [
            "backtest",
            *data_args,
            "--timeframe",
            "1h",
            "--strategy",
            "ensemble",
            "--start",
            str(1_600_000_000_000 + 2600 * 3_600_000),
            "--json",
            *common,
        ],
    )
    assert r3.exit_code == 0, r3.output
    summary = json.loads(r3.stdout[r3.stdout.index("{") :])
    assert summary["signals"] > 0
    versions_used = asyncio.run(
        fetch(
            fresh_db,
            "SELECT DISTINCT model_version FROM signals WHERE account=$1",
            summary["account"],
        )
    )
    assert [v["model_version"] for v in versions_used] == [ens_id]
    orders = asyncio.run(
        fetch(
            fresh_db,
            "SELECT DISTINCT model_version FROM orders WHERE account=$1",
            summary["account"],
        )
    )
    assert all(o["model_version"] == ens_id for o in orders)
    # risk settings for another bet than the one the models were trained for: refused at load,
    # before a single candle is traded
    other = tmp_path / "other-barriers.toml"
    other.write_text("[risk]\nk_stop = 1.5\n")
    r5 = runner.invoke(
        app,
        [
            "backtest",
            *data_args,
            "--timeframe",
            "1h",
            "--strategy",
            "ensemble",
            "--config",
            str(other),
            *common,
        ],
    )
    assert r5.exit_code == 2, r5.output
    assert "trained for target 3 ATR / stop 2 ATR within 24 candles" in r5.output
    assert "stop 1.5 ATR" in r5.output
    # the evaluation report
    r4 = runner.invoke(
        app,
        [
            "evaluate",
            *data_args,
            "--timeframe",
            "1h",
            "--preset",
            "tiny",
            "--folds",
            "1",
            "--out",
            str(tmp_path / "report"),
            *common,
        ],
    )
    assert r4.exit_code == 0, r4.output
    report = (tmp_path / "report" / "report.md").read_text()
    for name in (
        "ensemble",
        "lstm",
        "tft",
        "ppo",
        "base_rate",
        "momentum_sign",
        "logistic_regression",
        "kelly_0.25",
        "kelly_0.5",
        "fixed_1pct_risk",
        "kelly_0.25_uncalibrated_p",
        "buy_and_hold",
        "always_flat",
    ):
        assert f"| {name} |" in report or f"| **{name}** |" in report
    assert "ECE of the final p on the test windows: **0." in report
    # issue 11: out-of-fold and test side by side for every member, combiner candidate and
    # baseline; the deployed combiner is no worse than the best member out of fold
    oof = report[report.index("## Out of fold and test"):report.index("## Sizing")]
    for name in ("lstm", "gnn", "ppo", "ensemble (deployed combiner)", "combiner_average",
                 "combiner_stacking", "combiner_best_member", "climatology (base rate)",
                 "logistic_regression", "lightgbm"):
        row = next(line for line in oof.splitlines() if line.startswith(f"| {name} |"))
        assert row.count("|") == 10 and "n/a" not in row, row
    assert "): no worse." in oof
    assert report.splitlines()[2].startswith("**Verdict.** ")  # at the top, one sentence
    assert "DM p vs base rate" in report and "Sharpe [95 % CI] p" in report
    assert "after Holm's correction over all of them" in report
    assert "expanding (each trains on all history before its validation part)" in report
    said = " ".join(r4.output.split())  # the console wraps at 80 columns
    assert "elapsed: features and labels " in said and "; total " in said
    assert "Elapsed (up to the report): " in report
    assert "- coverage: the test windows cover " in report
    assert "| fold | test from | test to | n | ensemble log-loss |" in report
    assert "\n| 1 | " in report
    assert "target 3 ATR / stop 2 ATR within 24 candles" in report
    assert "## What the TFT looks at" in report and "![TFT importance]" in report
    for png in ("equity.png", "calibration.png", "reliability.png", "accuracy_over_time.png",
                "tft_importance.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000


def test_promote_if_better_compares_on_the_same_window(
    files: list[Path], fresh_db: str, tmp_path: Path
) -> None:
    """A retrain promotes only when its out-of-sample log-loss beats the active version on
    the new test window; both verdicts are explained, and the registry follows them."""
    runner = CliRunner()
    data_args = [a for f in files for a in ("--data", str(f))]
    common = ["--db", fresh_db, "--data-dir", str(tmp_path)]
    first = runner.invoke(
        app,
        [
            "train",
            *data_args,
            "--preset",
            "tiny",
            "--models",
            "lstm",
            "--promote",
            "if-better",
            *common,
        ],
    )
    assert first.exit_code == 0 and "no active ensemble" in first.output
    second = runner.invoke(
        app,
        [
            "train",
            *data_args,
            "--preset",
            "tiny",
            "--models",
            "gru",
            "--seed",
            "5",
            "--promote",
            "if-better",
            *common,
        ],
    )
    assert second.exit_code == 0, second.output
    assert "test log-loss" in second.output
    promoted = "promoted to active" in second.output
    active = asyncio.run(
        fetch(
            fresh_db,
            "SELECT hyperparameters FROM model_versions WHERE "
            "architecture='ensemble' AND status='active'",
        )
    )
    members = (
        json.loads(active[0]["hyperparameters"])["members"]
        if isinstance(active[0]["hyperparameters"], str)
        else active[0]["hyperparameters"]["members"]
    )
    assert members[0].startswith("gru" if promoted else "lstm")
