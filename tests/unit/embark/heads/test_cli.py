"""`embark heads ...`, `categorize`, `backfill` and `export`: argument errors exit 2 with a
message, before any server is contacted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from embark.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["heads", "train", "--data", "cn2023", "--model", "minilm-l6"],  # no --name
        ["heads", "train", "--data", "cn2023", "--name", "h"],  # no --model
        ["heads", "eval", "--model", "m", "--data", "x", "--limit", "0"],
        ["heads", "eval", "--model", "m", "--data", "x", "--augment-weight", "2"],
        ["heads", "eval", "--model", "m", "--data", "x", "--prototype-weight", "-1"],
        ["heads", "eval", "--model", "m", "--data", "x", "--prototypes", "centroid"],
        ["categorize", "--text", "red shoes"],  # no --head
        ["categorize", "--head", "h"],  # no input
        ["categorize", "--head", "h", "--text", "t", "--image-url", "http://x/y.jpg"],
        ["categorize", "--head", "h", "--text", "t", "--top-k", "-1"],
        ["backfill", "--model", "m"],  # no file
        ["export", "--model", "m", "in.txt"],  # no --out
    ],
)
def test_argument_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_domain_errors_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "o.npz")
    assert main(["export", "--model", "m", "--out", out]) == 2
    assert "give FILE" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["backfill", str(empty), "--model", "m"]) == 2
    assert "no inputs" in capsys.readouterr().err
    data = tmp_path / "one.tsv"
    data.write_text("a\tred shoes\n")
    assert main(["heads", "train", "--data", str(data), "--model", "m", "--name", "h"]) == 2
    assert "fewer than two labels" in capsys.readouterr().err
    assert main(["heads", "list", "--heads-dir", str(tmp_path / "none")]) == 0


def test_training_flags_make_the_config() -> None:
    from embark.cli import _parser
    from embark.heads.cli import _config
    from embark.heads.train import TrainConfig

    base = ["heads", "eval", "--model", "m", "--data", "x"]
    # The training titles carry HS labels: a file of the user's own labels never gets them.
    assert _config(_parser().parse_args(base)) == replace(TrainConfig(), titles_weight=0.0)
    config = _config(_parser().parse_args([*base, "--augment-weight", "0.5", "--no-balance"]))
    assert (config.augment_weight, config.balanced, config.augment) == (0.5, False, True)
    config = _config(_parser().parse_args([*base, "--prototypes", "none"]))
    assert (config.prototypes, config.prototype_weight) == ("none", TrainConfig().prototype_weight)
    config = _config(
        _parser().parse_args([*base, "--prototypes", "heading", "--prototype-weight", "7.5"])
    )
    assert (config.prototypes, config.prototype_weight) == ("heading", 7.5)


def test_training_titles_join_cn2023_only_at_their_weight_and_labels() -> None:
    from embark.cli import _parser
    from embark.heads.cli import _titles

    cn = ["heads", "train", "--model", "m", "--name", "h", "--data", "cn2023"]
    titles = _titles(_parser().parse_args([*cn, "--titles-weight", "2", "--labels", "09,85"]))
    assert titles
    assert {e.label for e in titles} == {"09", "85"}
    assert {e.weight for e in titles} == {2.0}
    sections = _titles(_parser().parse_args([*cn, "--titles-weight", "1", "--label", "section"]))
    assert "XVI" in {e.label for e in sections}
    assert _titles(_parser().parse_args([*cn, "--titles-weight", "0"])) == []
    own = ["heads", "train", "--model", "m", "--name", "h", "--data", "mine.tsv"]
    assert _titles(_parser().parse_args([*own, "--titles-weight", "2"])) == []
