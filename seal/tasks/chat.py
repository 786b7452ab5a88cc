"""A model's chat format as plain strings, so prompts can be built without the tokenizer at hand.

`ChatFrame.from_tokenizer` renders the tokenizer's chat template once around placeholder texts
and keeps the strings between them: what comes before the system message, between it and the
user message, after the user message (the generation prompt: the assistant header) and after an
assistant answer. `frame.prompt(system, user)` then equals
`tokenizer.apply_chat_template([system, user], add_generation_prompt=True, tokenize=False)` for
templates that insert each message's content as it is or trimmed (Llama 3, Qwen, Gemma ...):
contents are trimmed here for that reason (Llama 3's template trims them).

Two details keep training and inference on the same tokens:
- the template's own leading BOS text is dropped when the tokenizer adds a BOS by itself: every
  consumer (generation backends, `seal.inner.train.encode`) tokenizes prompts with the tokenizer's
  special tokens, so keeping it would give two BOS tokens (the reference code does have two, in
  training and inference alike);
- a fixed `date_string` is passed to the template: Llama 3.2's inserts today's date otherwise,
  and a prompt must not change with the day it is built on (a resumed run, a pod on another day).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DATE = "26 Jul 2024"  # the date Llama 3's template falls back to without strftime
_SYS, _USER, _ANSWER = "\x02SYSTEM\x03", "\x02USER\x03", "\x02ANSWER\x03"


@dataclass(frozen=True)
class ChatFrame:
    before_system: str
    system_to_user: str
    generation_prompt: str  # after the user message: the assistant header
    after_answer: str  # after an assistant answer (e.g. "<|eot_id|>")

    def prompt(self, system: str, user: str) -> str:
        """A system and a user message, then the assistant header: the model answers next."""
        return self.before_system + system.strip() + self.system_to_user + user.strip() + self.generation_prompt

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatFrame | None:
        """The tokenizer's chat format, or None when it has no chat template (or one this cannot
        frame: then plain-text prompts are used, with a warning)."""
        if not getattr(tokenizer, "chat_template", None):
            return None
        msgs = [{"role": "system", "content": _SYS}, {"role": "user", "content": _USER}]
        try:
            gen = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False,
                                                date_string=DATE)
            full = tokenizer.apply_chat_template([*msgs, {"role": "assistant", "content": _ANSWER}],
                                                 tokenize=False, date_string=DATE)
        except Exception as e:  # a template may raise on a system role, say: fall back, loudly
            log.warning("the tokenizer's chat template cannot frame puzzles (%s): plain text is used", e)
            return None
        if not (gen.count(_SYS) == gen.count(_USER) == 1 and gen.index(_SYS) < gen.index(_USER)
                and full.count(_ANSWER) == 1):
            log.warning("the tokenizer's chat template drops or repeats messages: plain text is used")
            return None
        before, rest = gen.split(_SYS)
        between, generation = rest.split(_USER)
        head, after = full.split(_ANSWER)
        if head != gen:  # the answer must follow the generation prompt exactly
            log.warning("the tokenizer's chat template renders an answer differently: plain text is used")
            return None
        bos = getattr(tokenizer, "bos_token", None)
        if bos and before.startswith(bos) and adds_bos(tokenizer):
            before = before[len(bos):]
        return cls(before, between, generation, after)


def adds_bos(tokenizer: Any) -> bool:
    """Whether tokenizing a text (with special tokens, as generation does) starts it with BOS."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == bos_id
