"""``localpref steer serve`` as a user runs it: a real process, killed the hard way.

A server killed with SIGKILL loses at most the trajectory in progress: what was accepted is in
the file, whole, and loads. Serving beyond this machine warns (``::1`` is this machine); a port
in use fails at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from page_helpers import tiny_model_folder  # noqa: E402

from localpref.data.load import load_steers  # noqa: E402

PROMPT = [{"role": "user", "content": "Name four fruits."}]


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "localpref.cli", "steer", "serve", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_a_killed_server_loses_only_the_trajectory_in_progress(smollm2_tokenizer, tmp_path):
    folder = tiny_model_folder(tmp_path / "tiny", smollm2_tokenizer)
    out = tmp_path / "steers.jsonl"
    proc = subprocess.Popen(serve_command("--model", str(folder), "--out", str(out), "--port", "0",
                                          "--max-new-tokens", "8"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:  # the server's output, without ever blocking the test on a pipe
        for line in proc.stdout:
            lines.append(line)
            if "steering page: http://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(timeout=120), "".join(lines)
        url = re.search(r"http://127\.0\.0\.1:\d+", "".join(lines)).group()
        with httpx.Client(base_url=url, timeout=30) as http:
            assert "localpref steer" in http.get("/").text
            first = http.post("/api/sessions", json={"prompt": PROMPT}).json()["id"]
            http.post(f"/api/sessions/{first}/generate", json={})
            assert http.post(f"/api/sessions/{first}/accept", json={}).status_code == 200
            second = http.post("/api/sessions", json={"prompt": PROMPT, "seed": 1}).json()["id"]
            http.post(f"/api/sessions/{second}/generate", json={})  # in progress, never accepted
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    data = out.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1  # one whole line: the accepted trajectory
    loaded = load_steers(out)
    assert len(loaded) == 0 and loaded.accepted == 1 and not loaded.skipped  # no corrections were made
    assert json.loads(data)["meta"]["seed"] == 0


def test_a_port_in_use_fails_fast(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(serve_command("--model", "nowhere", "--out", str(tmp_path / "s.jsonl"),
                                            "--port", str(port)),
                              capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr  # before any model is loaded ("nowhere")


def test_serving_beyond_this_machine_warns_with_the_port_it_got_and_ipv6_loopback_does_not(tmp_path):
    done = subprocess.run(serve_command("--model", "nowhere", "--out", str(tmp_path / "s.jsonl"),
                                        "--host", "0.0.0.0", "--port", "0"),
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode != 0  # no model called "nowhere"
    port = re.search(r"warning: serving on 0\.0\.0\.0, not only this machine: anyone who can reach port (\d+)",
                     done.stderr).group(1)
    assert port != "0"
    done = subprocess.run(serve_command("--model", "nowhere", "--out", str(tmp_path / "s.jsonl"),
                                        "--host", "::1", "--port", "0"),
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode != 0 and "warning" not in done.stderr and "cannot listen" not in done.stderr


def test_an_output_that_is_not_a_steer_file_is_refused_before_loading(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    done = subprocess.run(serve_command("--model", "nowhere", "--out", str(out), "--port", "0"),
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 2 and "exists and is not a steer JSONL file" in done.stderr
    assert out.read_text() == "my notes\n"
