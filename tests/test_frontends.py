"""Front-end importers (``data from-tool``) end to end on hand-written save files.

The fixtures under ``tests/fixtures/frontends/`` were written by hand to each tool's format as
read from its source (commits in each importer's docstring); none comes from a real user's log.
Every test goes file -> steer JSONL -> ``load_steers`` -> ``tokenize_steer`` (SmolLM2), and
checks the exact trained-on span, the counts, and where bad input is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localpref.cli import main
from localpref.data.errors import SteerError
from localpref.data.frontends import import_tool
from localpref.data.frontends.common import Candidate, FileContext, Point, ToolResult, edit_base
from localpref.data.load import load_steers
from localpref.data.tokenize import tokenize_steer

FIXTURES = Path(__file__).parent / "fixtures" / "frontends"
TGWUI = FIXTURES / "tgwui"
ST_CHAT = FIXTURES / "sillytavern" / "chats" / "Seraphina" / "Seraphina - 2025-03-01@10h00m00s.jsonl"
LOOM = FIXTURES / "loom" / "keeper.json"
MIKUPAD = FIXTURES / "mikupad" / "Harbour at night.json"
SYSTEM = "You are a helpful assistant."


def _import(tool, inputs, tmp_path, **kwargs):
    out = tmp_path / f"{tool}.jsonl"
    res = import_tool(tool, inputs, out, **kwargs)
    return res, load_steers(out)


def _spans(steer, tokenizer):
    chosen, rejected = tokenize_steer(steer, tokenizer).span_ids()
    return tokenizer.decode(chosen), tokenizer.decode(rejected)


def _by_id(steers):
    return {s.id: s for s in steers}


# ---------------------------------------------------------------------------------------------
# text-generation-webui


def test_tgwui_edited_versions_become_steers(tmp_path, smollm2_tokenizer):
    res, steers = _import("tgwui", [TGWUI / "logs"], tmp_path, system=SYSTEM)
    assert dict(res.counts) == {"files": 2, "messages": 6, "edits": 4, "regenerated": 1, "unchanged": 0,
                                "no_versions": 1, "greeting": 1}
    assert dict(res.skipped) == {} and len(steers) == len(res.records) == 4
    s = _by_id(steers)
    rivers = s["tgwui/20250301-10-15-00/assistant_0/v0-v1/hunk0"]  # an edit in the middle of a reply
    assert (rivers.prefix, rivers.rejected, rivers.corrected) == (
        "The Danube flows through ten countries. The Seine runs through Paris. The",
        " Thames is the longest river in Europe.", " Volga is the longest river in Europe.")
    assert rivers.corrected_ends_turn and rivers.rejected_ends_turn  # a saved reply is a whole answer
    assert _spans(rivers, smollm2_tokenizer) == (" Volga", " Thames")
    haiku = s["tgwui/20250301-10-15-00/assistant_2/v0-v1/hunk0"]  # an edit at the very start
    assert haiku.prefix == "" and haiku.corrected.startswith("Soft rain")
    assert _spans(haiku, smollm2_tokenizer) == ("Soft", "Sure! Here is a haiku:\n")
    # The chat prompt: the system message, then every earlier turn at its current version.
    assert [m["role"] for m in haiku.prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert haiku.prompt[4]["content"] == "Good morning in Japanese is おはようございます (ohayō gozaimasu)."
    # The unicode edit pairs v2 with v0 (v1 is a regeneration, counted above).
    japanese = s["tgwui/20250301-10-15-00/assistant_1/v0-v2/hunk0"]
    assert (japanese.rejected, japanese.corrected) == (" おやすみなさい (", " おはようございます (")
    # prefix + corrected is always the start of the person's version.
    data = json.loads((TGWUI / "logs/instruct/20250301-10-15-00.json").read_text())
    for steer in (rivers, haiku, japanese):
        message = data["metadata"][f"assistant_{steer.meta['message']}"]
        assert message["versions"][message["current_version_index"]]["content"].startswith(
            steer.prefix + steer.corrected)


def test_tgwui_greeting_chat_and_continue_after_edit(tmp_path, smollm2_tokenizer):
    """The chat log: its greeting starts the prompt; Continue after the edit appended model text."""
    chat = TGWUI / "logs/chat/Aria/20250302-09-00-00.json"
    res, [steer] = _import("tgwui", [chat], tmp_path)
    assert res.counts["greeting"] == 1 and steer.prompt == [
        {"role": "assistant", "content": "Hello, I'm Aria. What shall we cook today?"},
        {"role": "user", "content": "Something with lentils, please."}]
    assert (steer.rejected, steer.corrected, steer.corrected_ends_turn) == (" 2 litres of", " 1 litre of", False)
    assert _spans(steer, smollm2_tokenizer) == ("1 litre", "2 litres")
    # Every hunk: the text Continue appended reads as an insertion at the end; --partial refuses it.
    res = import_tool("tgwui", [chat], None, hunks="all", partial=True, on_error="skip")
    assert len(res.steers) == 1 and dict(res.skipped) == {"empty_continuation": 1}
    with pytest.raises(SteerError, match=r"20250302-09-00-00\.json field 'rejected': assistant_1/v0-v1/hunk1: "
                                         r"'rejected' is empty"):
        import_tool("tgwui", [chat], None, hunks="all", partial=True)


def test_tgwui_torn_file_and_bad_field_are_named(tmp_path):
    torn = TGWUI / "torn/20250303-08-00-00.json"
    with pytest.raises(SteerError) as info:
        import_tool("tgwui", [torn], tmp_path / "out.jsonl")
    assert (info.value.reason, info.value.file, info.value.line) == ("invalid_json", str(torn), 40)
    res = import_tool("tgwui", [TGWUI], tmp_path / "out.jsonl", on_error="skip")  # the folder, torn file too
    assert res.counts["files"] == 3 and dict(res.skipped) == {"invalid_json": 1} and len(res.steers) == 4

    data = json.loads((TGWUI / "logs/instruct/20250301-10-15-00.json").read_text())
    data["metadata"]["assistant_0"]["versions"][1] = "The Volga"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data, ensure_ascii=False))
    with pytest.raises(SteerError, match=r"bad\.json field 'metadata\.assistant_0\.versions\[1\]': expected dict"):
        import_tool("tgwui", [bad], None)
    res = import_tool("tgwui", [bad], None, on_error="skip")  # the other messages still count
    assert dict(res.skipped) == {"wrong_type": 1} and len(res.steers) == 2


# ---------------------------------------------------------------------------------------------
# SillyTavern


def test_sillytavern_continue_history_edits_become_a_trajectory(tmp_path, smollm2_tokenizer):
    res, steers = _import("sillytavern", [FIXTURES / "sillytavern" / "chats"], tmp_path, system=SYSTEM)
    assert dict(res.counts) == {"files": 1, "messages": 4, "no_continue_history": 1, "not_generated": 1,
                                "edits": 3, "regenerated": 2, "unchanged": 0}
    assert res.summary()["trajectories"] == 1 and len(res.records) == 2 and len(steers) == 3
    first, second, start = steers
    # Along one path of continues: the person fixed one segment, continued, then fixed the next.
    assert first.id.endswith("/step0") and second.id.endswith("/step1")
    assert (first.rejected, first.corrected) == (" salt mines, where you can rest.",
                                                 " copper mines, where you can rest.")
    assert second.prefix == first.prefix + first.corrected  # the first correction is in the prefix
    assert not first.corrected_ends_turn and second.corrected_ends_turn  # only the leaf ends the turn
    assert _spans(first, smollm2_tokenizer) == (" copper", " salt")
    assert _spans(second, smollm2_tokenizer) == (" After dark", " At night")
    assert _spans(start, smollm2_tokenizer) == ("Indeed", "Yes")  # an edited first segment
    lines = [json.loads(line) for line in ST_CHAT.read_text(encoding="utf-8").splitlines()]
    for steer, line in ((first, 4), (second, 4), (start, 6)):
        assert lines[line - 1]["mes"].startswith(steer.prefix + steer.corrected)
        assert steer.prompt[0] == {"role": "system", "content": SYSTEM}
        assert steer.prompt[-1] == {"role": "user", "content": lines[line - 2]["mes"]}
    assert "Kérvan" in steers[0].prompt[-1]["content"]


def test_sillytavern_fork_shape_of_an_edited_first_segment(tmp_path, smollm2_tokenizer):
    """kawaii-wolf's fork wraps the old and the edited first segment under an empty top entry."""
    lines = ST_CHAT.read_text(encoding="utf-8").splitlines()
    message = json.loads(lines[5])
    old, regenerated, edited = message["continueHistory"]
    message["continueHistory"] = [{"mes": "", "parent": [], "active": [0, 1], "swipes": [
        {**old, "parent": [0]}, {**edited, "parent": [0]}]}, regenerated]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(lines[:5] + [json.dumps(message, ensure_ascii=False)]), encoding="utf-8")
    res = import_tool("sillytavern", [chat], None)
    [steer] = [s for s in res.steers if "line6" in s.id]
    assert (steer.prefix, _spans(steer, smollm2_tokenizer)) == ("", ("Indeed", "Yes"))
    assert (res.counts["edits"], res.counts["regenerated"]) == (3, 2)


def test_sillytavern_hidden_messages_stay_out_of_the_prompt(tmp_path):
    lines = ST_CHAT.read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])  # generated after a hidden (is_system) note; give it an edit
    last["continueHistory"] = [{"mes": last["mes"], "parent": [], "swipes": [], "active": [1]},
                               {"mes": last["mes"].replace("two bowls", "two bowls and bread"), "parent": [],
                                "swipes": []}]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(lines[:-1] + [json.dumps(last, ensure_ascii=False)]), encoding="utf-8")
    steers = import_tool("sillytavern", [chat], None).steers
    assert steers[-1].corrected == " and bread." and steers[-1].rejected == "."
    assert all("hidden" not in m["content"] for m in steers[-1].prompt)
    assert steers[-1].prompt[-1]["content"] == "I'll take the stew. *pays the innkeeper*"


def test_sillytavern_torn_line_and_bad_node_are_named(tmp_path):
    torn = next((FIXTURES / "sillytavern" / "torn").iterdir())
    with pytest.raises(SteerError) as info:
        import_tool("sillytavern", [torn], None)
    assert (info.value.reason, info.value.line) == ("invalid_json", 4)
    res = import_tool("sillytavern", [torn], None, on_error="skip")
    assert dict(res.skipped) == {"invalid_json": 1} and res.counts["not_generated"] == 1

    lines = ST_CHAT.read_text(encoding="utf-8").splitlines()
    message = json.loads(lines[3])
    del message["continueHistory"][0]["swipes"][0]["mes"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:3] + [json.dumps(message)] + lines[4:]), encoding="utf-8")
    with pytest.raises(SteerError, match=r"bad\.jsonl:4 field 'continueHistory\[0\]\.swipes\[0\]\.mes'"):
        import_tool("sillytavern", [bad], None)


# ---------------------------------------------------------------------------------------------
# Loom


def test_loom_tree_gives_sibling_and_edit_steers_along_a_path(tmp_path, smollm2_tokenizer):
    res, steers = _import("loom", [LOOM], tmp_path)
    assert dict(res.counts) == {"files": 1, "nodes": 10, "human_beside_model": 2, "edited": 3,
                                "edited_original_lost": 1, "unchanged": 0}
    assert res.summary()["trajectories"] == 1 and len(res.records) == 3 and len(steers) == 5
    path = [s for s in steers if "/step" in s.id]
    assert [s.id.rsplit("/", 1)[1] for s in path] == ["step0", "step1", "step2"]
    # A raw-text tool: the prompt is the text before the first correction; nothing ends a turn.
    assert all(s.prompt == "The keeper's log, 3 March.\n\n" and not s.corrected_ends_turn for s in path)
    # 1: a typed node beside the model's sibling; 2: a model node changed in place (its
    # original from model_responses); 3: a typed node beside the model's sibling.
    assert [_spans(s, smollm2_tokenizer) for s in path] == [
        (" held all night", " failed twice"), (" Île-Molène", " Brest"),
        (" woke the relief keeper", " went back to sleep")]
    person = ("The storm came in at dusk and the lamp held all night. At dawn the radio picked up a trawler "
              "calling for Île-Molène. I logged it and woke the relief keeper.")
    assert all(person.startswith(s.prefix + s.corrected) for s in path)
    assert path[1].prefix == path[0].corrected + " At dawn the radio picked up a trawler calling for"
    # The changed node with revision history only: an edit at the very start of the node.
    [fog] = [s for s in steers if s.rejected == " Fog rolled in before noon."]
    assert fog.prompt.endswith("late again.") and _spans(fog, smollm2_tokenizer) == (" Rain", " Fog")


def test_loom_unedited_duplicate_is_counted_not_an_error(tmp_path):
    data = json.loads(LOOM.read_text(encoding="utf-8"))
    radio = data["root"]["children"][2]["children"][1]
    duplicate = {**radio["children"][0], "id": "dup", "meta": {"source": "prompt", "modified": True}}
    radio["children"].append(duplicate)  # controller.duplicate: a typed sibling with the same text
    (tmp_path / "dup.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    res = import_tool("loom", [tmp_path / "dup.json"], None)
    assert (res.counts["unchanged"], res.counts["human_beside_model"], len(res.steers)) == (1, 3, 5)


def test_loom_bad_response_index_and_torn_file(tmp_path):
    data = json.loads(LOOM.read_text(encoding="utf-8"))
    data["root"]["children"][2]["children"][1]["generation"]["index"] = 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SteerError, match=r"field 'root\.children\[2\]\.children\[1\]\.generation\.index'.*"
                                         r"out of range"):
        import_tool("loom", [bad], None)
    res = import_tool("loom", [bad], None, on_error="skip")
    assert dict(res.skipped) == {"wrong_type": 1} and len(res.steers) == 4  # the rest of the tree stands
    with pytest.raises(SteerError) as info:
        import_tool("loom", [FIXTURES / "loom" / "keeper-torn.json"], None)
    assert (info.value.reason, info.value.line) == ("invalid_json", 62)
    # A bare root node (load_tree_data accepts one) has no model_responses: the node changed in
    # place loses its original too, and the rest stands.
    (tmp_path / "bare.json").write_text(json.dumps(data["root"]), encoding="utf-8")
    res = import_tool("loom", [tmp_path / "bare.json"], None)
    assert res.counts["edited_original_lost"] == 2 and len(res.steers) == 4


# ---------------------------------------------------------------------------------------------
# mikupad


def test_mikupad_swapped_tokens_are_steers_typed_text_is_refused(tmp_path, smollm2_tokenizer):
    res, steers = _import("mikupad", [MIKUPAD], tmp_path)
    assert dict(res.counts) == {"files": 1, "sessions": 1, "chunks": 21, "generated_chunks": 19,
                                "swapped_tokens": 2, "typed_after_generation": 1}
    assert "does not keep the text a typed chunk replaced" in res.notes[0]
    start, middle = steers  # swapped at the very start, and in the middle: one trajectory
    assert start.prompt == middle.prompt == "[INST] Write two sentences about a harbour at night. [/INST] "
    assert (start.prefix, start.rejected, start.corrected) == ("", "The", "At")
    assert (middle.prefix, middle.rejected, middle.corrected) == ("At night, the harbour is", " loud", " silent")
    assert _spans(start, smollm2_tokenizer) == (" At", " The")  # the prompt's last space joins the token
    assert _spans(middle, smollm2_tokenizer) == (" silent", " loud")


def test_mikupad_database_form_and_torn_values(tmp_path):
    exported = json.loads(MIKUPAD.read_text(encoding="utf-8"))
    stored = {key: json.loads(value) for key, value in exported.items()}  # as createSessionFromObject keeps it
    (tmp_path / "stored.json").write_text(json.dumps(stored), encoding="utf-8")
    assert len(import_tool("mikupad", [tmp_path / "stored.json"], None).steers) == 2
    typed_only = {**stored, "prompt": [c for c in stored["prompt"] if "completion_probabilities" not in c
                                       or c["content"] == c["completion_probabilities"][0]["content"]]}
    (tmp_path / "typed.json").write_text(json.dumps(typed_only), encoding="utf-8")
    res = import_tool("mikupad", [tmp_path / "typed.json"], None)
    assert res.steers == [] and res.counts["typed_after_generation"] == 1 and res.notes
    exported["prompt"] = exported["prompt"][:200]
    (tmp_path / "torn.json").write_text(json.dumps(exported), encoding="utf-8")
    with pytest.raises(SteerError, match=r"torn\.json field 'prompt': the exported value is not JSON"):
        import_tool("mikupad", [tmp_path / "torn.json"], None)
    with pytest.raises(SteerError) as info:
        import_tool("mikupad", [FIXTURES / "mikupad"], None)  # the folder holds a torn export too
    assert info.value.reason == "invalid_json" and info.value.file.endswith("(torn).json")


# ---------------------------------------------------------------------------------------------
# The command and the shared pieces


@pytest.mark.parametrize("tool, source, records, steers", [
    ("tgwui", TGWUI / "logs", 4, 4), ("sillytavern", ST_CHAT, 2, 3), ("loom", LOOM, 3, 5), ("mikupad", MIKUPAD, 1, 2)])
def test_from_tool_command(tool, source, records, steers, tmp_path, capsys):
    out = tmp_path / "steers.jsonl"
    assert main(["data", "from-tool", tool, str(source), str(out)]) == 0
    assert f"wrote {records} records ({steers} steers) to {out}" in capsys.readouterr().out
    assert len(load_steers(out)) == steers


def test_from_tool_command_refuses_to_overwrite_a_save_file(tmp_path, capsys):
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(ST_CHAT.read_bytes())
    assert main(["data", "from-tool", "sillytavern", str(ST_CHAT), str(chat)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and chat.read_bytes() == ST_CHAT.read_bytes()
    assert main(["data", "from-tool", "loom", str(tmp_path / "missing.json"), str(tmp_path / "o.jsonl")]) == 2


PAGE_RECORD = {"prompt": [{"role": "user", "content": "Name four fruits."}],
               "steps": [{"accepted": "Apple, ", "rejected": "pear", "corrected": "kiwi"}, {"accepted": "."}]}


def test_from_tool_replaces_a_steer_file_only_with_force(tmp_path, capsys):
    out = tmp_path / "steers.jsonl"  # three trajectories from the steering page
    out.write_text("".join(json.dumps({**PAGE_RECORD, "id": f"page-{k}"}) + "\n" for k in range(3)))
    before = out.read_bytes()
    assert main(["data", "from-tool", "loom", str(LOOM), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds 3 record(s); refusing to replace it" in err and "--force" in err
    assert out.read_bytes() == before
    assert main(["data", "from-tool", "loom", str(LOOM), str(out), "--force"]) == 0
    assert len(load_steers(out)) == 5 and not list(tmp_path.glob(".*.tmp"))  # replaced, no temporary left
    empty = tmp_path / "empty.jsonl"
    empty.touch()  # nothing to lose
    assert main(["data", "from-tool", "loom", str(LOOM), str(empty)]) == 0


def test_from_tool_never_writes_over_a_save_file_even_with_force(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"  # `from-tool mikupad *.json`: the output forgotten
    a.write_bytes(MIKUPAD.read_bytes())
    b.write_bytes(MIKUPAD.read_bytes())  # one JSON line with a "prompt" key, yet no steer
    for force in ([], ["--force"]):
        assert main(["data", "from-tool", "mikupad", str(a), str(b), *force]) == 2
        assert "is not a steer JSONL file; refusing to overwrite it" in capsys.readouterr().err
        assert b.read_bytes() == MIKUPAD.read_bytes()
    chats = tmp_path / "chats"  # the output inside a folder being read, with the tool's extension
    chats.mkdir()
    (chats / "chat.jsonl").write_bytes(ST_CHAT.read_bytes())
    steers = chats / "steers.jsonl"
    steers.write_text(json.dumps({**PAGE_RECORD, "id": "page-0"}) + "\n")
    before = steers.read_bytes()
    assert main(["data", "from-tool", "sillytavern", str(chats), str(steers), "--force"]) == 2
    assert "is one of the files being read; refusing to write over it" in capsys.readouterr().err
    assert steers.read_bytes() == before


def test_from_tool_says_when_no_save_file_was_found(tmp_path, capsys):
    folder = tmp_path / "logs"
    (folder / "backups").mkdir(parents=True)
    (folder / "notes.txt").write_text("no session here\n")
    (folder / "backups" / "old.json").write_bytes(MIKUPAD.read_bytes())  # backups are skipped
    out = tmp_path / "steers.jsonl"
    assert main(["data", "from-tool", "mikupad", str(folder), str(out)]) == 2
    assert f"error: no mikupad save files (*.json) in {folder}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("other", [LOOM, next(TGWUI.rglob("*.json"))])
def test_mikupad_names_another_tools_file(other):
    with pytest.raises(SteerError, match=rf"{other.name} field 'prompt': missing required field 'prompt' "
                                         rf"\(not a session exported from mikupad\?\)"):
        import_tool("mikupad", [other], None)
    res = import_tool("mikupad", [other], None, on_error="skip")
    assert res.records == [] and dict(res.skipped) == {"missing_field": 1}


def test_edit_base_tells_edits_from_regenerations():
    model = "The road passes the old salt mines, where you can rest."
    assert edit_base([model], "The road passes the old copper mines, where you can rest.") == 0
    assert edit_base([model], "Beware the wolves near Kérvan, they hunt in packs.") is None
    assert edit_base(["Beware the wolves.", model], model.replace("salt", "tin")) == 1


def test_points_chain_only_down_one_path():
    """A point extends a chain only below its last point and when its prefix holds the chain's text."""
    ctx = FileContext(file="f", result=ToolResult(), on_error="raise", hunks="first", partial=False)
    prompt = [{"role": "user", "content": "q"}]
    ctx.add(prompt, [Point((0,), [Candidate("A", " b", " c", label="p0")]),
                     Point((1,), [Candidate("A", " b", " d", label="p1")]),  # a sibling branch: its own record
                     Point((0, 0), [Candidate("A c", " e", " f", label="p2")]),  # below p0: extends its chain
                     Point((0, 0, 1), [Candidate("A X", " g", " h", label="p3")])],  # prefix lost the fix: alone
            id="t", meta={})
    records = ctx.result.records
    assert [r["meta"]["at"] for r in records] == [["p0", "p2"], "p1", "p3"]
    assert records[0]["steps"] == [{"accepted": "A", "rejected": " b", "corrected": " c"},
                                   {"accepted": "", "rejected": " e", "corrected": " f"}]
