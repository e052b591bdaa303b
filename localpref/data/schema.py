"""The steer: localpref's unit of data.

A person stopped a model's generation after ``prefix`` (accepted assistant text), the model had
continued with ``rejected``, and the person wrote ``corrected`` instead. Continuations are partial:
they do not end the assistant turn unless ``*_ends_turn`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Prompt = Union[str, list[Message]]

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Steer:
    prompt: Prompt  # a plain string, or chat messages rendered with the tokenizer's chat template
    prefix: str  # accepted assistant text before the correction point (may be empty)
    rejected: str  # the model's continuation from that point
    corrected: str  # the person's continuation from that point
    id: str | None = None
    corrected_ends_turn: bool = False  # True: the corrected continuation closes the assistant turn
    rejected_ends_turn: bool = False  # True: the rejected continuation closes the assistant turn
    meta: dict[str, Any] = field(default_factory=dict)  # free-form, carried through untouched
    # Where the steer was read from, ("file", line), so that errors found later (at tokenization)
    # still name the file and line. Set by load_steers; not part of the JSONL record.
    origin: tuple[str, int] | None = field(default=None, compare=False, repr=False)

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record (defaults omitted)."""
        d: dict[str, Any] = {"prompt": self.prompt, "prefix": self.prefix,
                             "rejected": self.rejected, "corrected": self.corrected}
        if self.id is not None:
            d["id"] = self.id
        if self.corrected_ends_turn:
            d["corrected_ends_turn"] = True
        if self.rejected_ends_turn:
            d["rejected_ends_turn"] = True
        if self.meta:
            d["meta"] = self.meta
        return d
