"""One trajectory a person steers on the page: generate, stop, correct at a chosen point, resume.

``PageSession`` wraps a ``TurnWriter`` (the same engine as ``localpref steer collect``) and keeps
the steps of the trajectory form (``localpref.data.load``) as the person makes them:

* the writer's text is ``said + live``: ``said`` is fixed by earlier steps (accepted text and
  corrections), ``live`` is what the model wrote since;
* a correction at character ``at`` of the text (``len(said) <= at <= len(text)``) makes one step:
  ``accepted = text[len(said):at]``, ``rejected = text[at:]`` (what the model wrote from the
  correction point to where it stopped; it ends the turn if the model ended it),
  ``corrected`` = what was typed, ``cost`` = characters and tokens typed. The step is checked
  as the trainer will read it (``validate_steer`` + ``tokenize_steer`` with the page's span
  mode) before it is taken, so a correction that could not train (the same as the model's
  words, or one that only deletes them) is refused with the reason;
* then generation resumes from ``said + accepted + corrected`` (``TurnWriter.set_text``), unless
  the correction ends the answer (``ends_turn``): then only accept or discard are left;
* ``record()`` is the trajectory to append: ``prompt``, ``steps``, ``final``, ``meta`` (model,
  sampling settings, seed, times, typed characters).

Nothing here knows about HTTP; ``localpref.page.app`` serves it. Errors a person can cause raise
``PageError`` with an HTTP-like status and a message meant for them.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from localpref.data.errors import SteerError
from localpref.data.load import steers_from_record, validate_steer
from localpref.data.schema import Steer
from localpref.data.tokenize import tokenize_steer
from localpref.generation import TurnWriter
from localpref.steering import make_step

MAX_STEPS = 64  # corrections in one trajectory
MAX_PASSES_TOKENS = 16  # Continue (without a correction) is refused past this many times max_new_tokens
_WORD = re.compile(r"\S+\s*|\s+")  # a click target: a word and the whitespace after it


class PageError(Exception):
    """A request the session cannot honour; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Sampling:
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.95
    seed: int = 0
    max_new_tokens: int = 256  # per generation pass (Generate, Continue or Resume)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def word_segments(text: str, start: int) -> list[dict[str, Any]]:
    """``text[start:]`` cut into click targets ``{"at", "text"}`` (``at``: offset in ``text``).

    Offsets are Python characters (code points); the page sends them back as they are, so no
    offset arithmetic happens in JavaScript (whose strings count UTF-16 units).
    """
    return [{"at": m.start(), "text": m.group()} for m in _WORD.finditer(text, start)]


class PageSession:
    """One trajectory in one browser tab (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, prompt: str | list[dict[str, str]], sampling: Sampling, *,
                 model_id: str, model_lock: threading.Lock, span: str = "hunk"):
        self.id = secrets.token_urlsafe(16)
        self.tok, self.prompt, self.sampling, self.model_id, self.span = tokenizer, prompt, sampling, model_id, span
        self.model_lock = model_lock  # shared by every session on this model: one forward at a time
        try:
            self.writer = TurnWriter(model, tokenizer, prompt, temperature=sampling.temperature,
                                     top_p=sampling.top_p, seed=sampling.seed,
                                     max_new_tokens=sampling.max_new_tokens)
        except ValueError as e:  # e.g. a chat prompt for a tokenizer without a chat template
            raise PageError(422, str(e)) from None
        self.steps: list[dict[str, Any]] = []
        self.said = ""  # assistant text fixed by the steps so far (accepted text and corrections)
        self.closed_text: str | None = None  # the final text once a correction ended the answer
        self.lock = threading.Lock()  # one operation on the writer at a time
        self.stop_requested = threading.Event()
        self.generating = False
        self.started = time.time()
        self.started_iso = now_iso()
        # Not the session id: that one is the tab's key to this trajectory and stays private.
        self.record_id = f"page-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(self.started))}-{secrets.token_hex(3)}"

    # -- generation ---------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self.closed_text if self.closed_text is not None else self.writer.text

    def begin_pass(self) -> None:
        """Start a generation pass (Generate, Continue, or Resume after a correction)."""
        with self.lock:
            if self.generating:
                raise PageError(409, "this trajectory is already generating")
            if self.closed_text is not None:
                raise PageError(409, "your correction ended the answer: accept or discard it")
            if self.writer.ended:
                raise PageError(409, "the model ended its answer: correct it, accept or discard it")
            if self.writer.exhausted:
                if self.writer.new_tokens >= MAX_PASSES_TOKENS * self.sampling.max_new_tokens:
                    raise PageError(409, f"this trajectory has sampled {self.writer.new_tokens} tokens, "
                                         f"the most one may: correct, accept or discard it")
                if len(self.writer.ids) >= self.writer.max_context:
                    raise PageError(409, "the model's context is full: correct, accept or discard")
                self.writer.set_text(self.writer.text)  # a new pass of max_new_tokens; the cache is kept
            self.stop_requested.clear()
            self.generating = True

    def step(self) -> str | None:
        """One token of the current pass: its text ('' for none), or None when the pass is over."""
        with self.lock:
            if not self.generating or self.stop_requested.is_set() or self.writer.done:
                return None
            with self.model_lock:
                return self.writer.step()

    def end_pass(self) -> None:
        """End the current pass (a stopped or finished stream; idempotent)."""
        with self.lock:  # waits for a step in flight
            self.generating = False

    # -- corrections --------------------------------------------------------------------------

    def correct(self, at: int, corrected: str, *, ends_turn: bool = False) -> None:
        """Replace the text from ``at`` on with ``corrected`` (one step; module docstring)."""
        with self.lock:
            if self.generating:
                raise PageError(409, "stop the generation before correcting")
            if self.closed_text is not None:
                raise PageError(409, "your correction ended the answer: accept or discard it")
            if len(self.steps) >= MAX_STEPS:
                raise PageError(409, f"a trajectory holds at most {MAX_STEPS} corrections: accept it")
            text, start = self.writer.text, len(self.said)
            if not text.startswith(self.said):
                raise PageError(500, "the generated text no longer starts with the corrected text")
            if not start <= at <= len(text):
                raise PageError(422, f"the correction point {at} is outside the text written since the last "
                                     f"correction (characters {start}..{len(text)})")
            step = self._step(text[start:at], text[at:], corrected, ends_turn)
            if ends_turn:
                self.closed_text = text[:at] + corrected
            else:
                try:
                    self.writer.set_text(text[:at] + corrected)
                except ValueError as e:  # the tokenizer cannot spell the correction exactly
                    self.writer.set_text(text)
                    raise PageError(422, f"cannot resume from this correction: {e}") from None
            self.steps.append(step)
            self.said = text[:at] + corrected

    def _step(self, accepted: str, rejected: str, corrected: str, ends_turn: bool) -> dict[str, Any]:
        """The step dict, checked as the trainer will read it (PageError 422 with the reason)."""
        rejected_ends_turn = self.writer.ended
        if not rejected and not rejected_ends_turn:
            raise PageError(422, "the model wrote nothing after this point: click an earlier word, or let "
                                 "it generate first")
        steer = Steer(prompt=self.prompt, prefix=self.said + accepted, rejected=rejected, corrected=corrected,
                      corrected_ends_turn=ends_turn, rejected_ends_turn=rejected_ends_turn)
        try:
            validate_steer(steer)
            tokenize_steer(steer, self.tok, span=self.span)
        except SteerError as e:
            hint = {"empty_continuation": " (tick 'the answer ends here' to cut the rest)"}.get(e.reason, "")
            message = e.message.removeprefix("steer None: ")  # the tokenizer's errors name the steer
            raise PageError(422, f"this correction cannot be trained on: {message}{hint} [{e.reason}]") from None
        return make_step(self.tok, accepted, rejected, corrected, rejected_ends_turn=rejected_ends_turn,
                         corrected_ends_turn=ends_turn)

    # -- the record -----------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The trajectory as it stands, in the form ``load_steers`` reads (checked with it)."""
        text = self.text
        steps = list(self.steps)
        if text[len(self.said):]:
            steps.append({"accepted": text[len(self.said):]})
        record = {"id": self.record_id, "prompt": self.prompt, "steps": steps,
                  "final": text,
                  "meta": {"source": "localpref steer serve", "model": self.model_id, **asdict(self.sampling),
                           "started": self.started_iso, "saved": now_iso(),
                           "seconds": round(time.time() - self.started, 1),
                           "steers": len(self.steps),
                           "chars_typed": sum(s["cost"]["chars"] for s in self.steps),
                           "new_tokens": self.writer.new_tokens,
                           "model_ended": self.closed_text is None and self.writer.ended}}
        try:
            steers_from_record(record)
        except SteerError as e:  # a bug here, not the person's doing
            raise PageError(500, f"the trajectory does not load as a steer record: {e}") from None
        return record

    def state(self) -> dict[str, Any]:
        """What the page shows: the steps so far, then the live text as click targets."""
        text, start = self.text, len(self.said)
        closed = self.closed_text is not None
        if closed:
            status = "closed"
        elif self.generating:
            status = "generating"
        elif self.writer.ended:
            status = "ended"
        elif self.writer.exhausted:
            status = "exhausted"
        else:
            status = "stopped" if self.writer.new_tokens else "ready"
        segments = [] if closed else word_segments(text, start)
        if status == "ended":  # the end of turn is itself correctable (the model stopped too early)
            segments.append({"at": len(text), "text": "", "end": True})
        return {"id": self.id, "status": status, "steps": self.steps, "live": segments,
                "sampling": asdict(self.sampling), "steers": len(self.steps),
                "chars_typed": sum(s["cost"]["chars"] for s in self.steps), "new_tokens": self.writer.new_tokens}
