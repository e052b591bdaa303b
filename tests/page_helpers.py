"""Helpers for the steering page's tests: models to serve, and a real server on a free port.

``tiny_model_folder`` saves a tiny random Llama with the SmolLM2 tokenizer (nothing pretrained),
so the page loads it through ``load_generation_model`` like any model folder.
``SlowScripted`` is ``ScriptedLM`` taking ``delay`` seconds per forward, so that a person (or a
test) can stop it mid-answer. ``LiveServer`` runs uvicorn in a thread on a port the OS picked,
waits until it accepts connections, and always shuts it down.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scripted_lm import ScriptedLM  # noqa: E402


def tiny_model_folder(folder: Path, tokenizer, seed: int = 0) -> Path:
    """A tiny random Llama + ``tokenizer`` saved with save_pretrained (a model folder)."""
    from transformers import AutoModelForCausalLM

    from localpref.models import tiny_llama_config

    if not (folder / "config.json").exists():
        config = tiny_llama_config(vocab_size=len(tokenizer), hidden_size=32, num_heads=2, intermediate_size=64)
        config.eos_token_id = tokenizer.eos_token_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


class SlowScripted(ScriptedLM):
    """A ``ScriptedLM`` that takes ``delay`` seconds per forward (one token per forward)."""

    def __init__(self, tokenizer, prompt_text: str, plan: dict[str, str], delay: float):
        super().__init__(tokenizer, prompt_text, plan)
        self.delay = delay

    def forward(self, input_ids, past_key_values=None, use_cache=True, **kw):
        time.sleep(self.delay)
        return super().forward(input_ids, past_key_values=past_key_values, use_cache=use_cache, **kw)


class LiveServer:
    """``with LiveServer(app) as url:`` serves ``app`` at ``url`` (http://127.0.0.1:PORT)."""

    def __init__(self, app, start_timeout: float = 30.0):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # the OS picks a free port; no race with other tests
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.start_timeout = start_timeout

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        if self.thread.is_alive():  # a stream that never ends: make uvicorn drop it
            self.server.force_exit = True
            self.thread.join(timeout=5)
        self.sock.close()
