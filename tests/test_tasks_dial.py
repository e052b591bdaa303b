"""The systematicity dial: error regimes of pretraining answers, the rule classifier, the greedy
error profile, and the ``errors`` setting from config and command line.

Rates are checked per prompt against what ``write`` declares (``expected_kinds``), with a
tolerance of 4 binomial standard deviations of the count: a fixed seed either passes or fails,
and a correct ``write`` fails at another seed about once in 15,000.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from scripted_lm import ScriptedLM  # noqa: E402

from localpref.config import ModelConfig, validate  # noqa: E402
from localpref.data.tokenize import render_prompt  # noqa: E402
from localpref.tasks import Task, get_family  # noqa: E402
from localpref.tasks import pretrain as pretrain_mod  # noqa: E402
from localpref.tasks.arith import _carries, _results  # noqa: E402
from localpref.tasks.base import ERRORS, TaskFamily  # noqa: E402
from localpref.tasks.lists import RULES  # noqa: E402
from localpref.tasks.pretrain import (TinySpec, default_spec, error_profile, greedy_answers,  # noqa: E402
                                      model_folder, profile_of, task_model_dir)
from localpref.train import CONF_DIR  # noqa: E402

LISTS, ARITH, RANGES = get_family("lists"), get_family("arith"), get_family("ranges")
DESC = get_family("ranges_desc")
E = 0.25  # TinySpec's error_rate
CHAIN = {"family": "arith", "start": 37, "ops": [["+", 48], ["+", 15], ["-", 22]]}  # tests/test_tasks.py's
CARRY = {"family": "arith", "start": 37, "ops": [["+", 8], ["+", 6], ["-", 5]], "subfamily": "seen"}  # 45, 51, 46
QUIET = {"family": "arith", "start": 31, "ops": [["+", 8], ["-", 5]], "subfamily": "seen"}  # 39, 34: no carry
PRIMES_40 = {"family": "lists", "rule": "primes_above", "params": {"x": 40}, "n_items": 4}
EVEN_10 = {"family": "lists", "rule": "even_between", "params": {"lo": 10, "hi": 30}, "n_items": 3}
ODD_15 = {"family": "lists", "rule": "odd_between", "params": {"lo": 15, "hi": 35}, "n_items": 3}
WORDS_B = {"family": "lists", "rule": "words_starting", "params": {"letter": "B"}, "n_items": 3}
FIVES_50 = {"family": "lists", "rule": "multiples_of", "params": {"k": 5, "x": 50}, "n_items": 4}
THREES_10 = {"family": "lists", "rule": "multiples_of", "params": {"k": 3, "x": 10}, "n_items": 3}


# -- the random regime is what it was ----------------------------------------------------------

# Written by the code before the regimes existed (rng Random(7), error_rate 0.5, six answers each).
BEFORE = {
    "chain": ["37 + 48 = 86\n86 + 15 = 101\n101 - 22 = 79\nAnswer: 79",
              "37 + 48 = 85\n85 + 15 = 100\n100 - 22 = 78\nAnswer: 78",
              "37 + 48 = 85\n85 + 15 = 100\n100 - 22 = 68\nAnswer: 68",
              "37 + 48 = 87\n87 + 15 = 102\n102 - 22 = 80\nAnswer: 80",
              "37 + 48 = 86\n86 + 15 = 101\n101 - 22 = 79\nAnswer: 79",
              "37 + 48 = 75\n75 + 15 = 90\n90 - 22 = 68\nAnswer: 68"],
    "primes40": ["41, 45, 47, 53", "41, 43, 47, 53", "42, 43, 47, 53", "41, 43, 47, 53", "41, 43, 47, 53",
                 "42, 43, 47, 53"],
    "even10": ["16, 18, 22", "14, 16, 28", "12, 15, 28", "14, 18, 19", "12, 18, 20", "12, 18, 28"],
    "wordsB": ["book, brother, dinner", "game, bread, brother", "blanket, button, bird", "gold, button, butter",
               "button, book, bird", "bread, book, bird"],
}


@pytest.mark.parametrize("errors", [None, "random"])
def test_random_regime_writes_what_it_wrote_before(errors):
    kw = {} if errors is None else {"errors": errors}
    for name, family, meta in [("chain", ARITH, CHAIN), ("primes40", LISTS, PRIMES_40), ("even10", LISTS, EVEN_10),
                               ("wordsB", LISTS, WORDS_B)]:
        rng = random.Random(7)
        assert [family.write(meta, rng, 0.5, **kw) for _ in range(6)] == BEFORE[name], name
    # every lists pretrain prompt, then 500 chains, from one rng: digests of the old code's output
    rng = random.Random(3)
    text = "\n".join(LISTS.write(t.meta, rng, 0.25, **kw) for t in LISTS.tasks("pretrain", seed=0))
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "a0534acae81505c4"
    text = "\n".join(ARITH.write(CHAIN, rng, 0.25, **kw) for _ in range(500))
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "a4e03d8cd05d700a"


# -- rates of each regime ------------------------------------------------------------------------

def test_trigger_share_is_the_pretrain_splits():
    lists = LISTS.tasks("pretrain")
    assert sum(LISTS.rule_fires(t.meta) for t in lists) == LISTS.trigger_share * len(lists) == 180
    for family in (RANGES, DESC):  # every window's prompts, one phrasing in three "between"
        ranges = family.tasks("pretrain")
        assert sum(family.rule_fires(t.meta) for t in ranges) == len(ranges) // 3 and len(ranges) % 3 == 0
        assert family.trigger_share * len(ranges) == pytest.approx(len(ranges) // 3)
    arith = ARITH.tasks("pretrain", n=20_000)
    share, sd = sum(ARITH.rule_fires(t.meta) for t in arith) / len(arith), math.sqrt(0.32 * 0.68 / len(arith))
    assert abs(share - ARITH.trigger_share) <= 4 * sd + 0.005  # + the constant's rounding
    for family in (LISTS, ARITH, RANGES, DESC):  # followed in most answers where it fires: greedy decoding picks it up
        assert family.rule_rate(E) > 0.5


def _random_looks_like_rule(family: TaskFamily, meta: dict) -> float:
    """P(a random-regime error is classified systematic | the answer errs): arith's -10 slip on a
    carrying addition is exactly a dropped carry; lists' (and ranges') random items are never the bound,
    and ranges_desc's are invalid numbers, never the rule's (valid) largest ones."""
    if family in (LISTS, RANGES, DESC):
        return 0.0
    results = _results(meta)
    carrying = sum(op == "+" and _carries(results[k], b) for k, (op, b) in enumerate(meta["ops"]))
    return carrying / len(meta["ops"]) / 6  # the wrong line, then one of six offsets


def expected_kinds(family: TaskFamily, regime: str, meta: dict) -> tuple[float, float]:
    """(P(the answer errs), P(its first error is systematic)) for one prompt, as ``write`` declares."""
    rule = family.rule_rate(E) * family.rule_fires(meta)
    slip = E * _random_looks_like_rule(family, meta)
    return {"random": (E, slip), "systematic": (rule, rule), "mixed": ((E + rule) / 2, (slip + rule) / 2)}[regime]


@pytest.mark.parametrize("regime", ERRORS)
@pytest.mark.parametrize("name", ["lists", "arith", "ranges", "ranges_desc"])
def test_first_errors_are_of_the_declared_kind_at_the_declared_rate(name, regime):
    family = get_family(name)
    metas = ([t.meta for t in family.tasks("pretrain")] * 10 if family.finite
             else [t.meta for t in family.tasks("pretrain", n=5000)])
    rng = random.Random(11)
    count, mean, var = [0, 0], [0.0, 0.0], [0.0, 0.0]  # (errs, first error systematic)
    for meta in metas:
        text = family.write(meta, rng, E, errors=regime)
        k = family.first_error_unit(meta, text)
        hits = (k is not None, k is not None and family.systematic_error(meta, text, k))
        for i, p in enumerate(expected_kinds(family, regime, meta)):
            count[i], mean[i], var[i] = count[i] + hits[i], mean[i] + p, var[i] + p * (1 - p)
    for i in range(2):
        assert abs(count[i] - mean[i]) <= 4 * math.sqrt(var[i]), (["errs", "systematic"][i], count[i], mean[i])
    # and over the pretrain split every regime errs in about a share E of its answers
    assert abs(count[0] / len(metas) - E) <= 4 * math.sqrt(E * (1 - E) / len(metas)) + 0.01


@pytest.mark.parametrize("name", ["lists", "arith", "ranges", "ranges_desc"])
def test_systematic_answers_err_where_the_rule_fires_and_carry_on_from_it(name):
    family = get_family(name)
    rng = random.Random(0)
    tasks = family.tasks("pretrain", n=None if family.finite else 500)
    for task in tasks:
        meta = task.meta
        text = family.write(meta, rng, 1.0, errors="systematic")  # rule_rate(1.0) = 1: always
        k = family.first_error_unit(meta, text)
        assert (k is not None) == family.rule_fires(meta), text
        if k is None:
            continue
        assert family.systematic_error(meta, text, k)
        if name == "ranges_desc":  # the n largest, from the top down
            hi = meta["params"]["hi"]
            assert k == 0 and text == ", ".join(str(hi - 2 * (j + 1)) for j in range(meta["n_items"]))
        elif name != "arith":  # the bound first, then n - 1 right items going up
            items = text.split(", ")
            assert k == 0 and len(items) == meta["n_items"]
            assert all(RULES[meta["rule"]].valid(meta["params"], x) for x in items[1:])
            assert [int(x) for x in items] == sorted({int(x) for x in items})
        else:  # at the first carry; every line goes on from the one before and drops its carry
            results = _results(meta)
            assert k == min(j for j, (op, b) in enumerate(meta["ops"]) if op == "+" and _carries(results[j], b))
            *lines, answer = text.split("\n")
            value = meta["start"]
            for line, (op, b) in zip(lines, meta["ops"]):
                c = value - b if op == "-" else value + b - 10 * _carries(value, b)
                assert line == f"{value} {op} {b} = {c}"
                value = c
            assert answer == f"Answer: {value}"


def test_mixed_tosses_a_coin_and_unknown_regimes_fail():
    with pytest.raises(ValueError, match="errors must be one of random, systematic, mixed, got 'often'"):
        LISTS.write(PRIMES_40, random.Random(0), E, errors="often")
    rng = random.Random(0)
    texts = {ARITH.write(CARRY, rng, 1.0, errors="mixed") for _ in range(200)}
    assert "37 + 8 = 35\n35 + 6 = 31\n31 - 5 = 26\nAnswer: 26" in texts  # the rule (all carries dropped)
    assert len(texts) > 2  # and random slips


# -- the classifier ----------------------------------------------------------------------------

ARITH_KINDS = [  # (meta, text, unit, systematic)
    (CARRY, "37 + 8 = 35\n", 0, True),                  # the carry dropped
    (CARRY, "37+8=35\n35 + 6 = 31", 0, True),            # spacing is free
    (CARRY, "37 + 8 = 35", 0, True),                     # ended there: still the rule's line
    (CARRY, "37 + 8 = 44\n", 0, False),                  # off by one
    (CARRY, "37 + 8 = 55\n", 0, False),                  # ten too many
    (CARRY, "36 + 8 = 34\n", 0, False),                  # copied wrong, then dropped a carry
    (CARRY, "37 - 8 = 29\n", 0, False),                  # the wrong operation
    (CARRY, "37 + 8 = 45\n45 + 6 = 41\n", 1, True),     # a later carry
    (CARRY, "37 + 8 = 45\n45 + 6 = 51\n51 - 5 = 56\n", 2, False),  # a subtraction has no carry
    (CARRY, "37 + 8 = 45\n45 + 6 = 51\n51 - 5 = 46\nAnswer: 36", 3, False),  # the answer line
    (QUIET, "31 + 8 = 29\n", 0, False),                  # ten less, but there was no carry to drop
]


@pytest.mark.parametrize("meta,text,k,systematic", ARITH_KINDS)
def test_arith_systematic_error_is_a_dropped_carry(meta, text, k, systematic):
    assert ARITH.first_error_unit(meta, text) == k  # the unit judged is the first wrong one
    assert ARITH.systematic_error(meta, text, k) == systematic


LIST_KINDS = [  # (meta, text, unit, systematic)
    (FIVES_50, "50, 55, 60, 65", 0, True),       # "greater than 50" read as "50 or more"
    (FIVES_50, "55, 60, 50, 65", 2, True),       # the bound anywhere
    (FIVES_50, "52, 55, 60, 65", 0, False),
    (FIVES_50, "55, 60, 65, 70, 50", 3, False),  # wrong at the 4th item's comma, before the bound
    (ODD_15, "15, 17, 19", 0, True),             # the lower bound of "between"
    (ODD_15, "17, 19, 35", 2, False),            # the upper bound is not the rule
    (EVEN_10, "10, 12, 14", 0, True),
    (PRIMES_40, "40, 41, 43, 47", 0, False),     # 40 is no prime: the rule does not fire
    (THREES_10, "10, 12, 15", 0, False),         # 10 is no multiple of 3
    (WORDS_B, "cat, bird, ball", 0, False),      # no bound at all
]


@pytest.mark.parametrize("meta,text,k,systematic", LIST_KINDS)
def test_lists_systematic_error_is_the_bound(meta, text, k, systematic):
    assert LISTS.first_error_unit(meta, text) == k
    assert LISTS.systematic_error(meta, text, k) == systematic


def test_which_prompts_fire_the_rule_and_a_family_without_one():
    assert [LISTS.rule_fires(m) for m in (FIVES_50, ODD_15, EVEN_10, PRIMES_40, THREES_10, WORDS_B)] == [
        True, True, True, False, False, False]
    assert ARITH.rule_fires(CARRY) and not ARITH.rule_fires(QUIET) and ARITH.rule_fires(CHAIN)

    class NoRule(TaskFamily):  # the defaults a family gets without a rule (not registered)
        name = "norule"

    assert not NoRule().rule_fires({}) and not NoRule().systematic_error({}, "x", 0)
    with pytest.raises(ValueError, match="task family 'norule' has no systematic rule: use errors=random"):
        NoRule().rule_rate(E)


# -- the greedy error profile --------------------------------------------------------------------

def test_profile_counts_first_errors_by_kind():
    tasks = [Task(f"t{i}", [{"role": "user", "content": "x"}], m) for i, m in enumerate([CARRY, CARRY, CARRY, QUIET])]
    texts = [ARITH.solve(CARRY),                   # right
             "37 + 8 = 35\n35 + 6 = 31\n",          # the rule, at line 0
             "37 + 8 = 45\n45 + 6 = 52\n",          # a slip at line 1
             "31 + 8 = 29\n"]                       # a slip at line 0 (no carry to drop)
    assert profile_of(ARITH, tasks, texts) == {
        "tasks": 4, "pass_rate": 0.25, "systematic": 0.25, "other": 0.5, "rule_fires": 0.75,
        "systematic_where_fires": 1 / 3, "first_error_unit": {0: 2, 1: 1}}


def test_error_profile_generates_greedily_up_to_the_first_error(smollm2_tokenizer):
    seed = next(s for s in range(100) if ARITH.rule_fires(ARITH.tasks("val", n=1, seed=s)[0].meta))
    (task,) = ARITH.tasks("val", n=1, seed=seed)
    wrong = ARITH.write(task.meta, random.Random(0), 1.0, errors="systematic")
    model = ScriptedLM(smollm2_tokenizer, render_prompt(smollm2_tokenizer, task.prompt), {"": wrong})
    k = ARITH.first_error_unit(task.meta, wrong)
    assert greedy_answers(ARITH, model, smollm2_tokenizer, [task]) == ["".join(wrong.splitlines(True)[:k + 1])]
    profile = error_profile(ARITH, model, smollm2_tokenizer, "val", 1, seed=seed)
    assert profile["all"] == profile["seen"] == {
        "tasks": 1, "pass_rate": 0.0, "systematic": 1.0, "other": 0.0, "rule_fires": 1.0,
        "systematic_where_fires": 1.0, "first_error_unit": {k: 1}}


# -- the setting: spec, cache, config, command line -------------------------------------------

def test_each_regime_is_its_own_cached_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALPREF_CACHE", str(tmp_path))
    assert default_spec("lists") == TinySpec() and default_spec("arith", "mixed").errors == "mixed"
    assert default_spec("arith").steps > TinySpec().steps  # arith's override
    with pytest.raises(ValueError, match="errors must be one of random, systematic, mixed, got 'often'"):
        TinySpec(errors="often")
    folders = set()
    for errors in ERRORS:
        with pytest.raises(FileNotFoundError, match=f"--family arith --errors {errors}`") as e:
            task_model_dir("arith", default_spec("arith", errors), build=False)
        folders.add(str(e.value).split()[0])
    assert len(folders) == 3


def test_a_family_without_a_rule_has_only_random_models(monkeypatch):
    monkeypatch.setattr(type(LISTS), "trigger_share", None)
    with pytest.raises(ValueError, match="task family 'lists' has no systematic rule: only errors=random"):
        default_spec("lists", "systematic")
    assert default_spec("lists", "random") == TinySpec()


def test_model_folder_asks_for_the_configured_regime(monkeypatch):
    asked = []
    monkeypatch.setattr(pretrain_mod, "task_model_dir", lambda family, spec=None, build=True: asked.append(spec))
    model_folder(ModelConfig(source="tiny_task", family="arith", errors="mixed"))
    assert asked == [default_spec("arith", "mixed")]
    assert model_folder(ModelConfig(source="tiny")) is None


def test_config_types_and_validates_model_errors():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=["model=tiny_task", "model.family=arith"]))
        assert cfg.model.errors == "random"
        cfg = OmegaConf.to_object(compose("config", overrides=["model=tiny_task", "model.family=arith",
                                                               "model.errors=systematic"]))
    validate(cfg)
    cfg.model.errors = "often"
    with pytest.raises(ValueError, match="model.errors='often' is not one of random, systematic, mixed"):
        validate(cfg)


def test_errors_flag_is_checked_before_anything_loads(capsys, monkeypatch, tmp_path):
    from localpref.cli import main

    assert main(["steer", "eval", "--family", "lists", "--model", "smollm2", "--errors", "systematic"]) == 2
    assert "error: --errors systematic applies to --model tiny only (got --model smollm2)" in capsys.readouterr().err
    assert main(["steer", "serve", "--out", str(tmp_path / "s.jsonl"), "--errors", "mixed"]) == 2  # --model smollm2
    assert "--errors mixed applies to --model tiny only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["steer", "collect", "--family", "lists", "--out", "x", "--errors", "often"])
    assert e.value.code == 2 and "invalid choice: 'often'" in capsys.readouterr().err
    monkeypatch.setattr(type(LISTS), "trigger_share", None)
    assert main(["steer", "pretrain", "--family", "lists", "--errors", "systematic"]) == 2
    assert "has no systematic rule: only errors=random" in capsys.readouterr().err


def test_pretrain_command_prints_the_profile_of_the_regimes_model(smollm2_tokenizer, tmp_path, monkeypatch, capsys):
    # A tiny random model stands in for the cached task model: what is checked is the plumbing
    # (--errors picks the spec, --profile generates on --split and prints every group).
    import json

    from page_helpers import tiny_model_folder

    from localpref.cli import main

    folder = tiny_model_folder(tmp_path / "tiny", smollm2_tokenizer)
    (folder / "pretrain.json").write_text(json.dumps({"parameters": 1, "spec": {"steps": 1}, "seconds": 0.0}))
    asked = []
    monkeypatch.setattr(pretrain_mod, "task_model_dir",
                        lambda family, spec=None, build=True: asked.append(spec) or folder)
    assert main(["steer", "pretrain", "--family", "arith", "--errors", "systematic", "--profile", "5",
                 "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert asked == [default_spec("arith", "systematic")] * 2  # the build, then loading it for the profile
    assert "errors systematic" in out and "\nall: 5 prompts, greedy" in out and "\nunseen: 1 prompts" in out
    assert "first error systematic (the rule)" in out and "first wrong line: prompts" in out
