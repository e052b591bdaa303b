"""Task family style (British house spelling): units, verifier, corrections, lexicon, splits, and one
steering trajectory with a scripted model."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from scripted_lm import ScriptedLM  # noqa: E402

from localpref.data.tokenize import render_prompt  # noqa: E402
from localpref.steering import steer_task  # noqa: E402
from localpref.tasks import Task, family_names, get_family  # noqa: E402
from localpref.tasks.base import SPLITS  # noqa: E402
from localpref.tasks.style import (BRITISH, GROUPS, HEADWORDS, LEXICON, TEMPLATES, TOPICS, UNSEEN,  # noqa: E402
                                   british, to_house_style, topic_template)

STYLE = get_family("style")
META = {"family": "style", "topic": "the colours of autumn leaves", "exempt": []}

# (text, final) -> (offset of the first wrong word, rejected text up to the stop, correction)
CASES = [
    ("The colour of the sky.", True, None, None, None),
    ("The color of the sky.", True, 3, " color", " colour"),
    ("Color is nice.", True, 0, "Color", "Colour"),                    # case kept
    ("IT IS COLOR!", True, 5, " COLOR", " COLOUR"),
    ("The color", False, None, None, None),                           # may still become "colorful"
    ("The colo", False, None, None, None),                            # cut mid-word: not judged
    ("The color ", False, 3, " color", " colour"),                    # a non-letter completes the word
    ("The colorful kite.", True, 3, " colorful", " colourful"),       # a word of its own in the lexicon
    ("Colorado is big.", True, None, None, None),                     # no word inside another word
    ("A well-organized team.", True, 6, "-organized", "-organised"),  # "-" ends a word
    ("My neighbor's dog.", True, 2, " neighbor", " neighbour"),       # so does an apostrophe
    ("Travelling, then traveling.", True, 16, " traveling", " travelling"),
    ("We analyzed it, in defense of it.", True, 2, " analyzed", " analysed"),
    ("3D colors.", True, 2, " colors", " colours"),
    ("An honorary title, humorous and vigorous.", True, None, None, None),  # derivatives keep -or
    ("The theaters were centered on the square.", True, 3, " theaters", " theatres"),
    ("It is grey", True, 5, " grey", " grey."),                       # a final answer ends a sentence
    ("It is gray", True, 5, " gray", " grey."),
    ("It is grey, ", True, 10, ", ", "."),
    ('He said "hi"', True, 11, '"', '".'),
    ("It is grey.\n", True, None, None, None),
    ('He said "hi."', True, None, None, None),
    ("Done!", True, None, None, None),
]


def test_style_is_registered():
    assert "style" in family_names() and STYLE.unit_name == "word"


@pytest.mark.parametrize("text,final,offset,rejected,corrected", CASES)
def test_first_error_and_correction(text, final, offset, rejected, corrected):
    assert STYLE.first_error(META, text, final=final) == offset
    if offset is not None:
        assert text[offset:STYLE.unit_stop(META, text, offset, final=final)] == rejected
        assert STYLE.correct(META, text, offset, final=final) == corrected
        fixed = text[:offset] + corrected
        assert STYLE.first_error(META, fixed, final=False) is None  # the correction is right


def test_units_cover_the_text_and_complete_only_when_followed_or_final():
    text = "Its color, then "
    units = STYLE.units(text, final=False)
    assert [text[u.start:u.end] for u in units] == ["Its", " color", ", then", " "]
    assert [u.complete for u in units] == [True, True, True, False]
    assert all(u.stop == u.end for u in units)  # the rejected side is the word, not the next word's space
    assert [(u.start, u.end, u.complete) for u in STYLE.units("", final=True)] == [(0, 0, True)]
    assert STYLE.units("The color", final=True)[-1].complete


def test_an_empty_answer_is_wrong_and_its_correction_a_whole_answer():
    assert STYLE.first_error(META, "", final=True) == 0
    assert STYLE.correct(META, "", 0) == STYLE.solve(META)
    assert STYLE.first_error(META, "", final=False) is None


def test_a_correction_mid_answer_does_not_end_the_turn():
    # text[:offset] + correction ends on a word: not a finished answer, so the loop lets the model go on
    text = "My favorite color is blue."
    offset = STYLE.first_error(META, text)
    assert not STYLE.verify(META, text[:offset] + STYLE.correct(META, text, offset))


def test_exempt_headwords_are_not_judged():
    assert STYLE.first_error({"exempt": ["humor"]}, "Good humor and colour.") is None
    assert STYLE.first_error({"exempt": ["humor"]}, "Good humored color.") == 12  # inflections too
    assert STYLE.first_error({"exempt": []}, "Good humor.") == 4
    assert to_house_style("Humor and color.", {"exempt": ["humor"]}) == "Humor and colour."


def test_lexicon():
    assert len(LEXICON) > 900 and not set(LEXICON) & BRITISH  # no American spelling is also a British one
    assert {group for _, _, group in LEXICON.values()} == set(GROUPS)
    for american, (brit, headword, group) in LEXICON.items():
        assert american.islower() and brit.islower() and HEADWORDS[headword] == group
        # neither spelling a prefix of the other: the rejected word is no token prefix of its correction
        assert not brit.startswith(american) and not american.startswith(brit), american
    assert british("Color") == "Colour" and british("COLOR") == "COLOUR" and british("colour") is None
    assert british("Organizations") == "Organisations" and british("centering") == "centring"
    assert british("traveler") == "traveller" and british("analyzes") == "analyses"
    for word in ("license", "practice", "meter", "program", "catalog", "humorous", "honorary", "size", "advertise"):
        assert word not in LEXICON  # the sense decides, a prefix pair, or British keeps it
    text = "The organized travelers analyzed the colors of the theater."
    assert to_house_style(text) == "The organised travellers analysed the colours of the theatre."
    assert to_house_style(to_house_style(text)) == to_house_style(text)


def test_every_topic_elicits_its_headword_and_solve_uses_house_style():
    assert set(UNSEEN) <= set(TOPICS) <= set(HEADWORDS)
    for headword, topics in TOPICS.items():
        for topic in topics:
            words = [w.lower() for w in re.findall(r"[^\W\d_]+", topic)]
            # the prompt spells its cue the American way, as a request from anyone might
            assert any(LEXICON.get(w, ("", ""))[1] == headword for w in words), (headword, topic)


def test_splits_are_disjoint_by_topic_and_unseen_only_held_out():
    all_topics = [t for topics in TOPICS.values() for t in topics]
    assert len(set(all_topics)) == len(all_topics)  # a topic is one cluster, under one headword
    by_split = {s: STYLE.tasks(s) for s in SPLITS}
    assert by_split["pretrain"] == []  # no model is pretrained on style
    with pytest.raises(ValueError, match="family 'style' has 0 pretrain prompts"):
        STYLE.tasks("pretrain", n=1)
    topics = {s: {t.meta["topic"] for t in tasks} for s, tasks in by_split.items()}
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not topics[a] & topics[b], (a, b)
    assert set().union(*topics.values()) == set(all_topics)  # every topic is asked somewhere
    for split, tasks in by_split.items():
        assert len({t.id for t in tasks}) == len(tasks)
        unseen = [t for t in tasks if t.meta["subfamily"] == "unseen"]
        assert bool(unseen) == (split == "heldout")
        assert all((t.meta["headword"] in UNSEEN) == (t.meta["subfamily"] == "unseen") for t in tasks)
        # outside heldout the unseen words are never corrected
        assert all(t.meta["exempt"] == ([] if split == "heldout" else sorted(UNSEEN)) for t in tasks)
        assert all(STYLE.verify(t.meta, STYLE.solve(t.meta)) for t in tasks)
        assert all(t.meta["split"] == split and t.meta["cluster"] == f"style/{t.meta['topic']}" for t in tasks)
    # enough independent prompts (issue #26): >= 100 held-out clusters, a third unseen; >= 40 val clusters
    unseen_topics = {t.meta["topic"] for t in by_split["heldout"] if t.meta["subfamily"] == "unseen"}
    assert len(topics["heldout"]) >= 100 and 3 * len(unseen_topics) >= len(topics["heldout"])
    assert unseen_topics == {t for h in UNSEEN for t in TOPICS[h]}
    assert len(topics["val"]) >= 40
    assert len(by_split["train"]) >= 300  # enough prompts to collect on


def test_train_topics_take_every_template_val_and_heldout_one_drawn_by_hash():
    for split in ("train", "val", "heldout"):
        templates: dict[str, list[int]] = {}
        for t in STYLE.tasks(split):
            templates.setdefault(t.meta["topic"], []).append(t.meta["template"])
            assert t.prompt[0]["content"] == TEMPLATES[t.meta["template"]].format(topic=t.meta["topic"])
        for topic, drawn in templates.items():
            assert sorted(drawn) == (list(range(len(TEMPLATES))) if split == "train" else [topic_template(topic)])
    drawn = [topic_template(t) for t in {t.meta["topic"] for t in STYLE.tasks("heldout")}]
    assert set(drawn) == set(range(len(TEMPLATES)))  # the hash uses every template


def test_order_is_deterministic_and_mixes_unseen_evenly():
    heldout = STYLE.tasks("heldout")
    assert [t.id for t in STYLE.tasks("heldout")] == [t.id for t in heldout]
    is_unseen = [t.meta["subfamily"] == "unseen" for t in heldout]
    # any first k held-out prompts hold the split's share of unseen ones, rounded down
    assert all(sum(is_unseen[:k]) == k * sum(is_unseen) // len(heldout) for k in range(len(heldout) + 1))
    # the order depends on the seed, the membership of a split does not; a prefix is a smaller request
    assert [t.id for t in STYLE.tasks("val", n=5, seed=0)] != [t.id for t in STYLE.tasks("val", n=5, seed=1)]
    assert {t.id for t in STYLE.tasks("val", seed=1)} == {t.id for t in STYLE.tasks("val")}
    assert [t.id for t in STYLE.tasks("train", n=10)] == [t.id for t in STYLE.tasks("train")[:10]]
    with pytest.raises(ValueError, match="family 'style' has"):
        STYLE.tasks("val", n=10_000)


def test_write_is_not_implemented():
    with pytest.raises(NotImplementedError, match="no tiny task model"):
        STYLE.write(META, random.Random(0), error_rate=0.5)


def test_steering_a_scripted_model(smollm2_tokenizer):
    # Two American spellings: two steers, each a single-token swap; the model goes on after each.
    task = Task("t/style", [{"role": "user", "content": "Write about your favorite color."}],
                {**META, "subfamily": "seen"})
    plan = {"": "My favorite color is blue.", "My favourite": " color is blue.", "My favourite colour": " is blue."}
    model = ScriptedLM(smollm2_tokenizer, render_prompt(smollm2_tokenizer, task.prompt), plan)
    record = steer_task(model, smollm2_tokenizer, STYLE, task, budget=4)
    steps = [(s.get("accepted"), s.get("rejected"), s.get("corrected")) for s in record["steps"]]
    assert steps == [("My", " favorite", " favourite"), ("", " color", " colour"), (" is blue.", None, None)]
    assert [s["cost"]["tokens"] for s in record["steps"][:2]] == [1, 1]
    assert record["final"] == "My favourite colour is blue." and record["verified"]
    assert record["meta"]["first_error"] == {"offset": 2, "unit": 1}
