"""Writing one assistant turn token by token, with corrections spliced in: the steering loop's engine.

``TurnWriter`` holds a prompt, the assistant text written so far and the model's KV cache. The
steering loop (``localpref.steering``), the steering evaluation and the web page all drive it the
same way::

    writer = TurnWriter(model, tokenizer, prompt, temperature=0.0, seed=0)
    while not writer.done:
        piece = writer.step()          # one sampled token; its text ('' for the end of turn)
    writer.set_text(accepted + correction)   # a person's correction: resume from there

``generate_batch`` runs one such pass for many prompts at once (left-padded, rows leaving the batch
as they stop): what collection and evaluation use, several times faster on CPU than one row at a time.

After ``set_text`` the context is ``render_prompt(prompt) + text`` tokenized whole, exactly as a
steer built from this text is tokenized for training (``localpref.data.tokenize``). Within a pass
the model sees its own sampled ids, which can differ from the whole-text tokenization of what they
spell (and a byte-level model can stop mid-character, which decodes to U+FFFD); the steers record
text, so training re-tokenizes what the model wrote. ``set_text`` re-tokenizes and keeps the KV cache for the tokens
the old and new context share (``DynamicCache.crop``): a resume after a correction recomputes only
from the first changed token. The cache is made here (``new_cache``), handed to the model under the
name its forward takes (``cache_argument``), and filled by the model in place. Sampling:
``temperature == 0`` is greedy; otherwise softmax sampling (optionally nucleus ``top_p``) from a
``torch.Generator`` seeded by ``seed``, so a run is reproducible.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from localpref.data.tokenize import leading_special_ids, render_prompt
from localpref.spans import common_prefix_len


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Ids that end the assistant turn: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([gen] if isinstance(gen, int) else (gen or []))
    return ids


def new_cache() -> Any:
    """An empty KV cache that the model fills in place as it runs.

    We make it rather than let the model start one: given none, transformers 4.x returns the legacy
    tuple format (no ``crop``, and deprecated when fed back), and 5.x deprecates reading it back as
    ``out.past_key_values``. No ``config``: a layer of plain ``DynamicCache`` keeps every position
    (4.x has no other kind), so ``crop`` can always rewind; what a sliding-window layer saves is
    little at our lengths.
    """
    from transformers import DynamicCache

    return DynamicCache()


def cache_argument(model: Any) -> str:
    """The keyword under which ``model``'s forward takes the KV cache: ``cache`` where transformers
    5 renamed it (passing ``past_key_values`` there warns, "will be removed in version 5.40.0"),
    ``past_key_values`` in transformers 4 and in models that still declare it. A peft model's
    forward takes ``**kwargs`` and hands them to the model it wraps, so that model is asked."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def check_sampling(temperature: float, top_p: float) -> None:
    """ValueError unless ``0 <= temperature < inf`` and ``0 < top_p <= 1``, naming the setting. NaN
    fails every comparison, so ``temperature < 0`` alone let it through into the softmax."""
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not math.isfinite(value):
            raise ValueError(f"{name}: {value} is not a number" if math.isnan(value)
                             else f"{name}: {value} is not a finite number")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


def sample_token(logits: Tensor, *, temperature: float, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> int:
    """One token id from next-token ``logits`` (v,): argmax at temperature 0, else sampled."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # fp32: tiny probabilities matter
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class TurnWriter:
    """One assistant turn being written (see the module docstring).

    Attributes: ``text`` (assistant text so far), ``ended`` (the model ended its turn),
    ``exhausted`` (``max_new_tokens`` sampled since the last ``set_text``, or the context is full),
    ``new_tokens`` (tokens sampled in total, over all resumes), ``forwarded_tokens`` (tokens run
    through the model: what the KV cache saves shows in how few these are).
    """

    def __init__(self, model: Any, tokenizer: Any, prompt: str | list[dict[str, str]], *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, max_new_tokens: int = 256):
        check_sampling(temperature, top_p)
        self.model, self.tok = model, tokenizer
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.prompt_text = render_prompt(tokenizer, prompt)
        self._lead = leading_special_ids(tokenizer, prompt)
        self._skip = len(self._decode(self._lead)) + len(self.prompt_text)  # chars before the answer
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.max_context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 1 << 30
        self.ids: list[int] = []
        self.cache, self._cache_name = new_cache(), cache_argument(model)
        self.n_cached = 0  # ids[:n_cached] are in the KV cache
        self.next_logits: Tensor | None = None  # (v,) after feeding all of ids
        self.new_tokens = self.forwarded_tokens = self._pass_tokens = 0
        self.ended = False
        self.text = ""
        self.set_text("")

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @property
    def exhausted(self) -> bool:
        return self._pass_tokens >= self.max_new_tokens or len(self.ids) >= self.max_context

    @property
    def done(self) -> bool:
        return self.ended or self.exhausted

    def set_text(self, text: str) -> None:
        """Make ``text`` the assistant text so far (a correction spliced in) and un-end the turn."""
        ids = self._lead + self.tok(self.prompt_text + text, add_special_tokens=False)["input_ids"]
        # Keep the cache for the shared tokens; at least one token must be fed to get logits.
        keep = min(common_prefix_len(self.ids, ids), self.n_cached, len(ids) - 1)
        if keep < self.n_cached:
            self.cache.crop(keep - self.n_cached)  # a negative count removes tokens (transformers 4 and 5)
        self.ids, self.n_cached, self.next_logits = ids, keep, None
        self.ended, self._pass_tokens = False, 0
        self.text = self._decode(ids)[self._skip:]
        if self.text != text:
            raise ValueError(f"the tokenizer does not round-trip the text: {text!r} came back as {self.text!r}")

    @torch.no_grad()
    def _forward(self) -> None:
        """Feed the ids not yet in the cache (which the model extends in place); keep the next-token logits."""
        new = torch.tensor([self.ids[self.n_cached:]], device=self.model.device)
        out = self.model(input_ids=new, use_cache=True, **{self._cache_name: self.cache})
        self.forwarded_tokens += new.shape[1]
        self.n_cached = len(self.ids)
        self.next_logits = out.logits[0, -1].float()

    def step(self) -> str:
        """Sample one token and return the text it adds ('' when it ends the turn)."""
        if self.done:
            raise RuntimeError("the turn is over (ended or out of tokens); set_text() to resume")
        if self.next_logits is None:
            self._forward()
        token = sample_token(self.next_logits, temperature=self.temperature, top_p=self.top_p,
                             generator=self.generator)
        self.new_tokens += 1
        self._pass_tokens += 1
        self.next_logits = None
        if token in self.stop_ids:
            self.ended = True
            return ""
        self.ids.append(token)
        before = self.text
        self.text = self._decode(self.ids)[self._skip:]
        # A token can complete a multi-byte character started by the previous one, rewriting the
        # replacement character that ended the text: return what changed from the common start.
        return self.text[common_prefix_len(before, self.text):]


@dataclass
class PassResult:
    """One row of ``generate_batch``: the assistant text after the pass and why the pass ended."""

    text: str
    ended: bool  # the model ended its turn
    exhausted: bool  # max_new_tokens sampled (or the context is full)
    new_tokens: int
    forwarded_tokens: int


@torch.no_grad()
def generate_batch(model: Any, tokenizer: Any, prompts: list, texts: list[str], *, temperature: float = 0.0,
                   top_p: float = 1.0, generators: list[torch.Generator] | None = None,
                   max_new_tokens: int = 128, stop: Callable[[int, str], bool] | None = None) -> list[PassResult]:
    """One generation pass for many rows at once: row ``k`` continues ``render_prompt(prompts[k]) +
    texts[k]`` (tokenized whole, as ``TurnWriter`` does) until it ends its turn, samples
    ``max_new_tokens`` tokens, or ``stop(k, text)`` is true after a token. Rows are left-padded into
    one batch with explicit position ids; a row that stops leaves the batch (and the KV cache,
    ``batch_select_indices``), so the pass costs what its longest row needs. Sampling per row uses
    ``generators[k]``, so a row's tokens do not depend on the other rows (greedy ones may, at
    floating-point ties, through padding).
    """
    check_sampling(temperature, top_p)
    n = len(prompts)
    if n == 0:
        return []
    generators = generators or [torch.Generator().manual_seed(0) for _ in range(n)]
    stop_ids = stop_token_ids(model, tokenizer)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    ids, skips = [], []
    for prompt, text in zip(prompts, texts):
        lead, prompt_text = leading_special_ids(tokenizer, prompt), render_prompt(tokenizer, prompt)
        ids.append(lead + tokenizer(prompt_text + text, add_special_tokens=False)["input_ids"])
        skips.append(len(decode(lead)) + len(prompt_text))
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.device
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # (n, t) left-padded
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache, cache_name = new_cache(), cache_argument(model)  # the model extends the cache in place
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                   **{cache_name: cache}).logits[:, -1].float()  # (n, v)
    results = [PassResult(texts[k], False, False, 0, len(ids[k])) for k in range(n)]
    # As TurnWriter: a row whose context is full stops (exhausted), it does not run past the positions.
    max_context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 1 << 30
    active = list(range(n))  # rows still in the batch, in cache order
    for step in range(max_new_tokens):
        tokens, keep = [], []
        for j, k in enumerate(active):
            token = sample_token(logits[j], temperature=temperature, top_p=top_p, generator=generators[k])
            results[k].new_tokens += 1
            if token in stop_ids:
                results[k].ended = True
                continue
            ids[k].append(token)
            results[k].text = decode(ids[k])[skips[k]:]
            if stop is not None and stop(k, results[k].text):
                continue
            if len(ids[k]) >= max_context:
                results[k].exhausted = True
                continue
            tokens.append(token)
            keep.append(j)
        active = [active[j] for j in keep]
        if not active or step == max_new_tokens - 1:
            break
        if len(keep) < attention.shape[0]:
            cache.batch_select_indices(torch.tensor(keep, device=device))
            attention, positions = attention[keep], positions[keep]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(input_ids=torch.tensor(tokens, device=device)[:, None], attention_mask=attention,
                       position_ids=positions, use_cache=True, **{cache_name: cache}).logits[:, -1].float()
        for k in active:
            results[k].forwarded_tokens += 1
    for k in active:
        results[k].exhausted = True
    return results
