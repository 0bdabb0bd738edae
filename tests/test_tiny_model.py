"""The shipped ``tiny`` model: size, and held-out greedy accuracy through the real eval CLI."""

import json

from reasonlab.cli.main import main
from reasonlab.policies.tiny import ASSET_DIR


def test_shipped_checkpoint_is_small():
    size = sum(f.stat().st_size for f in ASSET_DIR.rglob("*") if f.is_file())
    assert 0 < size <= 10 * 1024 * 1024


def test_eval_cli_on_tiny_lands_in_its_accuracy_band(tmp_path):
    out = tmp_path / "tiny"
    assert main(["eval", "--model", "tiny", "--task", "arith", "--limit", "200", "--max-new-tokens", "64",
                 "--batch-size", "100", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    card = json.loads((ASSET_DIR / "reasonlab_card.json").read_text())
    # The band the model was selected for leaves room for search and RL to show gains.
    assert 0.3 <= summary["accuracy"] <= 0.8
    assert summary["n_examples"] == 200 and summary["status_counts"].get("error", 0) == 0
    # Greedy decoding is deterministic: the first 200 of the card's 500 held-out problems agree with it
    # to within sampling error of a subset.
    assert abs(summary["accuracy"] - card["heldout_greedy_accuracy"]) < 0.1
