"""Every route of the steering page's app, with a tiny random model loaded as any model folder.

Generation is checked against ``TurnWriter`` run directly (the same prompt, settings and seed),
the saved file against ``load_steers`` and ``tokenize_steer``; bad requests must answer 4xx with
a message that says what is wrong.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from page_helpers import LiveServer, SlowScripted, tiny_model_folder  # noqa: E402

from localpref.data.load import load_steers  # noqa: E402
from localpref.data.tokenize import render_prompt, tokenize_steer  # noqa: E402
from localpref.generation import TurnWriter  # noqa: E402
from localpref.page.app import Served, create_app  # noqa: E402
from localpref.page.listen import allowed_hosts  # noqa: E402
from localpref.page.session import Sampling  # noqa: E402
from localpref.steer_cli import load_generation_model  # noqa: E402

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name four fruits."}]
MAX_NEW = 12
HOSTS = allowed_hosts("127.0.0.1")


@pytest.fixture(scope="module")
def served(smollm2_tokenizer, tmp_path_factory) -> Served:
    folder = tiny_model_folder(tmp_path_factory.mktemp("tiny"), smollm2_tokenizer)
    model, tok, model_id = load_generation_model(str(folder), "lists")
    return Served(model, tok, model_id, threading.Lock())


def client_for(served: Served, out: Path, **kw) -> TestClient:
    app = create_app(served, out, defaults=Sampling(max_new_tokens=MAX_NEW), allowed_hosts=HOSTS, **kw)
    return TestClient(app, base_url="http://127.0.0.1:8765")


@pytest.fixture
def client(served, tmp_path) -> TestClient:
    return client_for(served, tmp_path / "steers.jsonl")


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def new_session(client: TestClient, **body) -> dict:
    return ok(client.post("/api/sessions", json={"prompt": PROMPT, **body}))


def generate(client: TestClient, sid: str) -> tuple[str, dict]:
    """(the streamed pieces joined, the final state)."""
    response = client.post(f"/api/sessions/{sid}/generate", json={})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    messages = [json.loads(line) for line in response.text.splitlines()]
    assert all("piece" in m for m in messages[:-1]) and "state" in messages[-1], messages[-1]
    return "".join(m["piece"] for m in messages[:-1]), messages[-1]["state"]


def alone(served: Served, text: str = "", *, prompt=PROMPT, temperature: float = 0.7, top_p: float = 0.95,
          seed: int = 0) -> str:
    """What ``TurnWriter`` writes, run directly: from ``text`` on, one pass of MAX_NEW tokens."""
    writer = TurnWriter(served.model, served.tokenizer, prompt, temperature=temperature, top_p=top_p, seed=seed,
                        max_new_tokens=MAX_NEW)
    writer.set_text(text)
    while not writer.done:
        writer.step()
    return writer.text


def middle_word(state: dict) -> dict:
    words = [t for t in state["live"] if t["text"].strip()]
    return words[len(words) // 2]


def test_the_page_and_its_files(client, tmp_path):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/page.js"></script>' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name in ("page.js", "page.css"):
        assert client.get(f"/static/{name}").status_code == 200
    info = ok(client.get("/api/info"))
    assert info["out"] == str(tmp_path / "steers.jsonl") and info["chat"] and info["compare_model"] is None
    assert info["defaults"]["max_new_tokens"] == MAX_NEW and info["span"] == "hunk"


def test_generate_stop_correct_in_the_middle_resume_accept(client, served, tmp_path):
    state = new_session(client, temperature=0.0, seed=5)
    assert state["status"] == "ready" and state["sampling"]["seed"] == 5
    sid = state["id"]
    text, state = generate(client, sid)
    assert text == alone(served, temperature=0.0) and state["status"] in ("exhausted", "ended")
    state = ok(client.post(f"/api/sessions/{sid}/stop", json={}))  # stopping a finished pass changes nothing
    assert "".join(t["text"] for t in state["live"]) == text
    target = middle_word(state)
    at = target["at"]
    assert 0 < at < len(text)
    state = ok(client.post(f"/api/sessions/{sid}/correct", json={"at": at, "text": "kiwi and"}))
    step = state["steps"][0]
    assert (step["accepted"], step["rejected"], step["corrected"]) == (text[:at], text[at:], "kiwi and")
    assert step["cost"]["chars"] == 8 and state["live"] == []
    more, state = generate(client, sid)  # resume from accepted text + correction
    assert text[:at] + "kiwi and" + more == alone(served, text[:at] + "kiwi and", temperature=0.0)
    saved = ok(client.post(f"/api/sessions/{sid}/accept", json={}))
    assert saved["steers"] == 1 and saved["saved"] == str(tmp_path / "steers.jsonl")

    (record,) = [json.loads(line) for line in (tmp_path / "steers.jsonl").read_text().splitlines()]
    assert record["final"] == text[:at] + "kiwi and" + more
    meta = record["meta"]
    assert meta["model"] == served.model_id and (meta["temperature"], meta["seed"], meta["top_p"]) == (0.0, 5, 0.95)
    assert meta["max_new_tokens"] == MAX_NEW and meta["chars_typed"] == 8 and meta["saved"]
    (steer,) = load_steers(tmp_path / "steers.jsonl")
    assert (steer.prefix, steer.rejected, steer.corrected) == (text[:at], text[at:], "kiwi and")
    chosen, rejected = tokenize_steer(steer, served.tokenizer).span_ids()
    assert chosen and rejected
    assert client.post(f"/api/sessions/{sid}/generate", json={}).status_code == 404  # accepted: gone


def test_stop_mid_stream_keeps_exactly_what_was_written(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    answer = ("Four fruits: apple, pear, plum, fig, and a few more words that take a while to write: cherries, "
              "lemons, limes, melons, oranges, peaches, apricots, bananas, mangoes, dates, figs and grapes.")
    model = SlowScripted(tok, render_prompt(tok, PROMPT), {"": answer}, delay=0.05)
    app = create_app(Served(model, tok, "scripted", threading.Lock()), tmp_path / "s.jsonl",
                     defaults=Sampling(max_new_tokens=64), allowed_hosts=HOSTS)
    messages: list[dict] = []
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as http, \
            httpx.Client(base_url=url, timeout=30) as reader:
        sid = ok(http.post("/api/sessions", json={"prompt": PROMPT}))["id"]

        def read() -> None:
            with reader.stream("POST", f"/api/sessions/{sid}/generate", json={}) as response:
                messages.extend(json.loads(line) for line in response.iter_lines() if line)

        thread = threading.Thread(target=read)
        thread.start()
        deadline = time.monotonic() + 20
        while len(messages) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        state = ok(http.post(f"/api/sessions/{sid}/stop", json={}))
        thread.join(timeout=20)
        assert not thread.is_alive()
    text = "".join(t["text"] for t in state["live"])
    assert state["status"] == "stopped" and answer.startswith(text) and len(text) < len(answer) / 2
    assert "".join(m.get("piece", "") for m in messages) == text and messages[-1]["state"]["status"] == "stopped"


def test_discard_writes_nothing(client, tmp_path):
    sid = new_session(client)["id"]
    generate(client, sid)
    assert ok(client.post(f"/api/sessions/{sid}/discard", json={})) == {"discarded": True}
    assert (tmp_path / "steers.jsonl").read_text() == ""
    assert client.post(f"/api/sessions/{sid}/accept", json={}).status_code == 404


def test_two_tabs_never_mix_their_trajectories(client, served, tmp_path):
    other = [{"role": "user", "content": "Count to five."}]
    a = new_session(client, seed=1)["id"]
    b = ok(client.post("/api/sessions", json={"prompt": other, "seed": 2}))["id"]
    text_a, _ = generate(client, a)
    text_b, state_b = generate(client, b)
    at = middle_word(state_b)["at"]
    ok(client.post(f"/api/sessions/{b}/correct", json={"at": at, "text": "one two"}))
    generate(client, b)
    ok(client.post(f"/api/sessions/{a}/accept", json={}))
    ok(client.post(f"/api/sessions/{b}/accept", json={}))
    ra, rb = [json.loads(line) for line in (tmp_path / "steers.jsonl").read_text().splitlines()]
    assert (ra["prompt"], rb["prompt"]) == (PROMPT, other)
    assert ra["final"] == text_a == alone(served, seed=1) and ra["meta"]["steers"] == 0
    assert text_b == alone(served, prompt=other, seed=2) and rb["steps"][0]["corrected"] == "one two"


def test_bad_requests_get_4xx_with_a_clear_message(client):
    def check(response: httpx.Response, status: int, words: str) -> None:
        assert response.status_code == status, response.text
        assert words in response.json()["detail"], response.json()

    post = client.post
    check(post("/api/sessions", json={"prompt": PROMPT, "temperature": 5}), 422,
          "temperature: Input should be less than or equal to 2")
    check(post("/api/sessions", json={"prompt": PROMPT, "max_new_tokens": 1000}), 422, "at most 12")
    check(post("/api/sessions", json={"prompt": []}), 422, "at least 1 item")
    check(post("/api/sessions", json={"prompt": [{"role": "assistant", "content": "hi"}]}), 422,
          "ends with an assistant message")
    check(post("/api/sessions", json={"prompt": [{"role": "robot", "content": "hi"}]}), 422, "role")
    check(post("/api/sessions", json={"prompt": "x" * 20_001}), 422, "at most 20000 characters")
    check(post("/api/sessions", json={"prompt": PROMPT, "out": "/etc/passwd"}), 422, "out: Extra inputs")
    check(post("/api/sessions", content=b"{not json", headers={"content-type": "application/json"}), 422,
          "request body: invalid JSON at line 1, column 2: Expecting property name")
    check(post("/api/sessions", content=b'{"prompt": "hi",\n "seed": 1,}',
               headers={"content-type": "application/json"}), 422,
          "request body: invalid JSON at line 2, column 12")  # as json.loads counts
    for field, value in (("temperature", b"NaN"), ("top_p", b"NaN")):  # Python's JSON reads NaN; it is no number
        check(post("/api/sessions", content=b'{"prompt": "hi", "%s": %s}' % (field.encode(), value),
                   headers={"content-type": "application/json"}), 422, f"{field}: NaN is not a number")
    check(post("/api/sessions", content=b'{"prompt": "hi", "temperature": Infinity}',
               headers={"content-type": "application/json"}), 422, "temperature: inf is not a finite number")
    check(post("/api/sessions", json={"prompt": [{"role": "system", "content": "Be brief."}]}), 422,
          "prompt: the prompt has no user message")
    check(post("/api/sessions", json={"prompt": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": " "}]}), 422, "no user message")
    check(post("/api/sessions", content=json.dumps({"prompt": PROMPT}), headers={"content-type": "text/plain"}),
          415, "send JSON")
    check(post("/api/sessions/abcdefghijk/generate", json={}), 404, "unknown or expired")
    check(post("/api/sessions/..%2F..%2Fx/stop", json={}), 404, "Not Found")
    check(post("/api/review/delete", json={"line": 1, "digest": "zz"}), 422, "digest")
    check(post("/api/review/delete", json={"line": 1, "digest": "0" * 16}), 409, "the file changed")
    check(post("/api/compare", json={"prompt": PROMPT}), 409, "--compare")

    sid = new_session(client)["id"]
    check(post(f"/api/sessions/{sid}/accept", json={}), 409, "nothing written yet")
    check(post(f"/api/sessions/{sid}/correct", json={"at": 0, "text": "x"}), 422, "the model wrote nothing")
    text, _ = generate(client, sid)
    check(post(f"/api/sessions/{sid}/correct", json={"at": -1, "text": "x"}), 422,
          "at: Input should be greater than or equal to 0")
    check(post(f"/api/sessions/{sid}/correct", json={"at": len(text) + 5, "text": "x"}), 422, "outside the text")
    check(post(f"/api/sessions/{sid}/correct", json={"at": 0, "text": "x" * 4001}), 422, "at most 4000 characters")
    check(post(f"/api/sessions/{sid}/correct", json={"at": 0, "text": ""}), 422, "'corrected' is empty")
    ok(post(f"/api/sessions/{sid}/correct", json={"at": 0, "text": "Done.", "ends_turn": True}))
    check(post(f"/api/sessions/{sid}/generate", json={}), 409, "ended the answer")
    assert client.get("/api/nothing").status_code == 404
    assert client.delete("/api/review").status_code == 405


def test_bodies_are_bounded_and_requests_must_come_from_the_page(client):
    huge = json.dumps({"prompt": "x" * 300_000}).encode()
    response = client.post("/api/sessions", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over 262144 bytes" in response.json()["detail"]
    chunked = client.post("/api/sessions", content=iter([huge[:100_000], huge[100_000:]]),
                          headers={"content-type": "application/json"})  # no Content-Length
    assert chunked.status_code == 413
    evil = client.post("/api/sessions", json={"prompt": PROMPT}, headers={"origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.json()["detail"]
    same = client.post("/api/sessions", json={"prompt": PROMPT}, headers={"origin": "http://127.0.0.1:8765"})
    assert same.status_code == 200
    rebound = client.get("/api/info", headers={"host": "attacker.example"})  # DNS rebinding
    assert rebound.status_code == 400


def test_serving_on_ipv6_loopback_checks_the_host_header(served, tmp_path):
    app = create_app(served, tmp_path / "steers.jsonl", allowed_hosts=allowed_hosts("::1"))
    client = TestClient(app, base_url="http://[::1]:8765")  # the Host header a browser sends for ::1
    assert client.get("/api/info").status_code == 200
    same = client.post("/api/sessions", json={"prompt": PROMPT}, headers={"origin": "http://[::1]:8765"})
    assert same.status_code == 200, same.text
    assert client.get("/api/info", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding


@pytest.mark.parametrize("setting, message", [({"temperature": float("nan")}, "temperature must be a number"),
                                              ({"top_p": float("nan")}, "top_p must be a number")])
def test_server_defaults_that_are_not_numbers_are_refused(served, tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        create_app(served, tmp_path / "steers.jsonl", defaults=Sampling(**setting))


def test_review_lists_what_was_saved_and_deletes_it(client, served):
    sid = new_session(client, seed=3)["id"]
    text, state = generate(client, sid)
    at = middle_word(state)["at"]
    ok(client.post(f"/api/sessions/{sid}/correct", json={"at": at, "text": "<img src=x onerror=alert(1)>"}))
    ok(client.post(f"/api/sessions/{sid}/accept", json={}))
    view = ok(client.get("/api/review"))
    (entry,) = view["entries"]
    assert view["steers"] == 1 and entry["line"] == 1 and entry["prompt"] == PROMPT
    steer = entry["steers"][0]
    assert steer["corrected"] == "<img src=x onerror=alert(1)>"  # sent as data; the page shows it as text
    assert any(kind == "span" for _, kind in steer["chosen_pieces"])
    ok(client.post("/api/review/delete", json={"line": 1, "digest": entry["digest"]}))
    assert ok(client.get("/api/review"))["entries"] == []
    assert client.post("/api/review/delete", json={"line": 1, "digest": entry["digest"]}).status_code == 409


def test_compare_answers_the_same_prompt_with_the_same_seed(served, smollm2_tokenizer, tmp_path):
    folder = tiny_model_folder(tmp_path / "other", smollm2_tokenizer, seed=1)  # different weights
    model, tok, model_id = load_generation_model(str(folder), "lists")
    other = Served(model, tok, model_id, threading.Lock())
    for compare, same in ((Served(served.model, served.tokenizer, "copy", threading.Lock()), True), (other, False)):
        client = client_for(served, tmp_path / "s.jsonl", compare=compare)
        assert ok(client.get("/api/info"))["compare_model"] == compare.model_id
        response = client.post("/api/compare", json={"prompt": PROMPT, "seed": 4, "temperature": 1.0})
        messages = [json.loads(line) for line in response.text.splitlines()]
        done = messages[-1]["done"]
        for side, m in (("a", served), ("b", compare)):
            assert "".join(x["piece"] for x in messages[:-1] if x["side"] == side) == done[side]["text"]
            assert done[side]["text"] == alone(m, seed=4, temperature=1.0)
        assert (done["a"]["text"] == done["b"]["text"]) == same


def test_the_page_script_never_writes_html():
    """The browser test shows payloads stay text; this keeps every other path in page.js honest."""
    from localpref.page.app import STATIC

    script = (STATIC / "page.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"on", ".src =", ".href ="):
        assert sink not in script, sink
    assert "<script" not in (STATIC / "index.html").read_text().replace('<script src="/static/page.js"></script>', "")
