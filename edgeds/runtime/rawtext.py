"""Raw prompts, as `POST /v1/completions` sends them: text in, its plain continuation out.

No chat template and no reasoning split: the prompt is tokenized as it is, with the model's
own BOS rule and special tokens in the text parsed (as llama-server does), and every generated
token is answer text, `<think>` tags included.
"""

from __future__ import annotations

from edgeds.errors import EdgedsError
from edgeds.events import Answer, Event
from edgeds.llamacpp.binding import Model, TextStream


def raw_prompt_tokens(model: Model, prompt: str) -> list[int]:
    """The token ids of a raw prompt (BOS first where the model asks for it)."""
    try:
        tokens = model.tokenize(prompt, add_special=True, parse_special=True)
    except UnicodeEncodeError as err:  # a lone surrogate ("\ud800" in JSON) has no UTF-8 form
        raise EdgedsError(f"the prompt is not valid Unicode: {err.object[err.start]!r} at character "
                          f"{err.start} ({err.reason})") from None
    if not tokens:  # llama.cpp would decode nothing and abort on the missing logits
        raise EdgedsError("the prompt is empty (and the model adds no BOS token)")
    return tokens


class RawStream:
    """Generated token ids → Answer events, with PhaseStream's interface (no think phase)."""

    def __init__(self, model: Model):
        self._text = TextStream(model)
        self._tokens = 0

    def push(self, token: int) -> list[Event]:
        self._tokens += 1
        text = self._text.push(token)
        return [Answer(text)] if text else []

    def finish(self) -> list[Event]:
        text = self._text.flush()
        return [Answer(text)] if text else []

    stopped_thinking = False
    reasoning_tokens = 0

    @property
    def answer_tokens(self) -> int:
        return self._tokens
