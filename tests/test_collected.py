"""Training sets from collected trajectories at an annotation budget (localpref.data.collected)."""

from __future__ import annotations

import json

import pytest

from localpref.data.collected import load_collected, trajectory_cost
from localpref.tasks import get_family, solve

PROMPT = [{"role": "user", "content": "List 3 prime numbers greater than 40."}]
META = {"family": "lists", "rule": "primes_above", "params": {"x": 40}, "n_items": 3, "subfamily": "seen"}


def record(rid: str, original: str, steps: list[dict], final: str, verified: bool) -> dict:
    first = get_family("lists").first_error(META, original)
    return {"id": rid, "prompt": PROMPT, "steps": steps, "final": final, "verified": verified,
            "meta": {"task": META, "original": original, "original_ended": True,
                     "first_error": None if first is None else {"offset": first, "unit": 0}, "steers": len(steps)}}


@pytest.fixture
def collection(tmp_path):
    rows = [
        record("a", "41, 49, 47", [{"accepted": "41,", "rejected": " 49,", "corrected": " 43,", "cost": {"chars": 4}},
                                   {"accepted": " 47"}], "41, 43, 47", True),
        record("b", "41, 43, 47", [{"accepted": "41, 43, 47"}], "41, 43, 47", True),  # right: costs nothing
        record("c", "40, 43, 47", [{"accepted": "", "rejected": "40,", "corrected": "41,", "cost": {"chars": 3}},
                                   {"accepted": " 43,", "rejected": " 45", "corrected": " 47", "cost": {"chars": 3},
                                    "corrected_ends_turn": True}], "41, 43, 47", True),
        record("d", "9, 9", [{"accepted": "", "rejected": "9,", "corrected": "41,", "cost": {"chars": 3}},
                             {"accepted": " 9"}], "41, 9", False),  # budget of steers spent, not verified
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_costs_by_hand(collection):
    _, rows = collection
    assert [trajectory_cost(r, "steers") for r in rows] == [4, 0, 6, 3]
    # a rewrite costs the whole corrected answer; the right answer costs nothing
    right = len("41, 43, 47")
    assert [trajectory_cost(r, "rewrites", solve) for r in rows] == [right, 0, right, right]


def test_steers_within_budget_keep_the_files_order(collection):
    path, _ = collection
    steers, taken = load_collected(path, form="steers", cost_budget=9)
    assert [s.id for s in steers] == ["a/step0"]  # "c" (6 characters) would overrun 4 + 6 > 9: the selection ends
    assert taken == {"trajectories_taken": 2, "trajectories_used": 1, "chars": 4}
    steers, taken = load_collected(path, form="steers", cost_budget=10)
    assert [s.id for s in steers] == ["a/step0", "c/step0", "c/step1"] and taken["chars"] == 10
    assert steers[1].prefix == "" and steers[2].prefix == "41, 43," and steers[2].corrected_ends_turn
    everything, taken = load_collected(path, form="steers")
    assert len(everything) == 4 and taken["chars"] == 13


def test_rewrites_pair_the_models_answer_with_a_whole_right_one(collection):
    path, _ = collection
    rewrites, taken = load_collected(path, form="rewrites", cost_budget=25, solve=solve)
    assert [s.id for s in rewrites] == ["a/rewrite", "c/rewrite"] and taken["chars"] == 20
    a = rewrites[0]
    assert (a.prefix, a.rejected, a.corrected) == ("", "41, 49, 47", "41, 43, 47")
    assert a.corrected_ends_turn and a.rejected_ends_turn
    # unverified: the rewrite is the family's own solution, not the (wrong) final text
    (d,) = [s for s in load_collected(path, form="rewrites", solve=solve)[0] if s.id == "d/rewrite"]
    assert d.corrected == get_family("lists").solve(META) == "41, 43, 47" and d.rejected == "9, 9"


def test_rewrites_need_the_task_solver_from_the_caller(collection):
    # the data layer imports no task family: whoever asks for rewrites passes localpref.tasks.solve
    path, rows = collection
    with pytest.raises(ValueError, match="needs solve="):
        load_collected(path, form="rewrites")
    with pytest.raises(ValueError, match="needs solve="):
        trajectory_cost(rows[0], "rewrites")
    assert trajectory_cost(rows[0], "steers") == 4  # steers need no solver


def test_trees_lay_out_each_collected_trajectory_in_one_row(collection, smollm2_tokenizer):
    # data=collected defaults to data.layout=trees: the steps of one trajectory share a row (their
    # ids "c/step0", "c/step1" name one source record); a rewrite is a group of its own, i.e. pairs.
    from localpref.data.tokenize import tokenize_steers
    from localpref.packing import collate_packed, groups

    path, _ = collection
    steers, _ = load_collected(path, form="steers")
    examples, _ = tokenize_steers(steers, smollm2_tokenizer, max_length=256)
    assert [[steers[examples[i].source_index].id for i in g] for g in groups(examples, "trees")] == \
        [["a/step0"], ["c/step0", "c/step1"], ["d/step0"]]
    idx = list(range(len(examples)))
    trees, pairs = (collate_packed(examples, idx, 0, layout=layout) for layout in ("trees", "pairs"))
    assert trees.input_ids.shape[0] == 3 and pairs.input_ids.shape[0] == 4
    assert trees.num_tokens < pairs.num_tokens  # c's prompt and first step once, not twice
    rewrites, _ = load_collected(path, form="rewrites", solve=solve)
    examples, _ = tokenize_steers(rewrites, smollm2_tokenizer, span="completion", max_length=256)
    assert groups(examples, "trees") == [[i] for i in range(len(rewrites))]


def test_a_cost_share_is_that_share_of_the_files_steer_cost(collection):
    from localpref.data.collected import steer_cost

    path, rows = collection
    assert steer_cost(path) == 4 + 0 + 6 + 3  # the whole file as steers
    # data.cost_share=0.7 -> int(0.7 * 13) = 9 characters, for steers and rewrites alike
    from localpref.config import DataConfig
    from localpref.train import load_data

    cfg = DataConfig(source="collected", path=str(path), eval_path=str(path), cost_share=0.7)
    _, _, counts = load_data(cfg)
    assert counts["collected/budget"] == 9 and counts["collected/chars"] == 4 + 0  # "c" (6) would overrun
    cfg.form = "rewrites"
    _, _, counts = load_data(cfg)
    assert counts["collected/budget"] == 9 and counts["collected/chars"] == 0  # one rewrite costs 10
