"""Scores on hand-made probabilities: top-k, expected calibration error, the section implied by
chapter probabilities, the abstain curve; and the evaluation's splits and short inputs."""

from __future__ import annotations

import numpy as np
import pytest

from embark.heads.dataset import Example
from embark.heads.evaluate import make_splits, word_sample
from embark.heads.forms import title_forms
from embark.heads.scoring import (
    abstain_curve,
    expected_calibration_error,
    score,
    section_top1,
    topk_hits,
)

CLASSES = ["01", "02", "84", "85"]
P = np.array(
    [
        [0.7, 0.2, 0.05, 0.05],  # right (01)
        [0.1, 0.6, 0.2, 0.1],  # wrong (true 84), 84 second
        [0.05, 0.05, 0.5, 0.4],  # wrong (true 85), same section XVI
        [0.25, 0.25, 0.25, 0.25],  # wrong (true 02): tie, the first label wins
    ],
    dtype=np.float32,
)
TRUTH = ["01", "84", "85", "02"]


def test_topk_and_sections() -> None:
    assert topk_hits(P, CLASSES, TRUTH, 1) == 0.25
    assert topk_hits(P, CLASSES, TRUTH, 2) == 1.0  # row 4: ties keep the label order
    # sections: 01, 02 -> I; 84, 85 -> XVI. Rows 1, 3 right; row 2 wrong; row 4 tie -> I right.
    assert section_top1(P, CLASSES, TRUTH) == 0.75
    assert np.isnan(section_top1(P, ["a", "b", "c", "d"], ["a"] * 4))


def test_expected_calibration_error() -> None:
    # confidences .7 (right), .6 (wrong), .5 (wrong), .25 (wrong), one per bin of 15:
    expected = (0.3 + 0.6 + 0.5 + 0.25) / 4
    assert expected_calibration_error(P, CLASSES, TRUTH) == pytest.approx(expected)
    sure = np.eye(4, dtype=np.float32)
    assert expected_calibration_error(sure, CLASSES, CLASSES) == 0.0
    assert score(P, CLASSES, TRUTH).rows == 4


def test_abstain_curve() -> None:
    curve = {c["min_probability"]: c for c in abstain_curve(P, CLASSES, TRUTH, (0.0, 0.65))}
    assert curve[0.0]["coverage"] == 1.0
    assert curve[0.0]["top1_answered"] == 0.25
    assert curve[0.65]["coverage"] == 0.25
    assert curve[0.65]["top1_answered"] == 1.0


def test_splits_are_disjoint_and_hold_out_whole_groups() -> None:
    examples = [Example(f"t{i}", "abcd"[i % 4], f"g{i // 4}") for i in range(200)]
    for seed in (0, 1):
        splits = make_splits(examples, seed=seed)
        for split in splits.values():
            parts = [set(split.train), set(split.val), set(split.test)]
            assert sum(map(len, parts)) == 200
            assert not (parts[0] & parts[1])
            assert not (parts[0] & parts[2])
            assert not (parts[1] & parts[2])
        held = splits["heldout-group"]
        groups = [{examples[i].group for i in part} for part in (held.train, held.val, held.test)]
        assert not (groups[0] & groups[1])
        assert not (groups[0] & groups[2])
        assert not (groups[1] & groups[2])
        assert len(splits["random"].test) == 40
        assert len(splits["random"].val) == 20
    assert make_splits(examples, seed=0)["random"].test.tolist() != (
        make_splits(examples, seed=1)["random"].test.tolist()
    )


def test_short_inputs_are_not_training_forms() -> None:
    text = "Live cattle of a weight <= 80 kg (excl. pure-bred for breeding), for slaughter"
    short = word_sample(text)
    assert len(short.split()) == 3
    assert short == word_sample(text)
    assert short not in title_forms(text)
    assert all(w in text for w in short.split())
    assert word_sample("Live asses") == "Live asses"
