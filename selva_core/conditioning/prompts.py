"""Prompt validation and normalisation shared by the CLIP and T5 text encoders.

Behaviours (tested in tests/test_conditioning.py):

* Empty or whitespace-only **positive** prompt: an error for the SelVA family, whose prompt selects
  which sound in the video to generate (TextSynch conditions the sync features on it); allowed for
  the MMAudio family, whose official demo accepts ``--prompt ""``. **Negative** prompts may always
  be empty: CLIP("") is the official demo's default negative.
* Non-ASCII text is accepted. It is NFC-normalised, Unicode control characters (category Cc) and
  lone surrogates (Cs) are removed (tab/newline/CR become a space), whitespace runs collapse to one
  space and the ends are stripped. Surrogates must go because CLIP's tokenizer UTF-8-encodes each
  word and would raise on them. What the tokenizers then do: open_clip's byte-level BPE lowercases
  (after ftfy) and can represent any character (a CJK character costs 1-3 tokens); flan-T5's
  SentencePiece vocabulary is mostly Latin-script, so characters outside it become ``<unk>``;
  ByT5 (tiny variant) spends one token per UTF-8 byte.
* Prompts longer than a tokenizer's limit are truncated as the official code does (CLIP keeps the
  first 76 tokens and forces the 77th to end-of-text; T5 keeps 511 tokens plus ``</s>``), and a
  warning says how many tokens were dropped. `TokenCount` records this per prompt.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x85"}
_SPACES = re.compile(r"\s+")


class PromptError(ValueError):
    """A prompt that cannot be used; names the prompt and the reason."""

    def __init__(self, prompt: object, reason: str):
        self.prompt = prompt
        self.reason = reason
        super().__init__(f"invalid prompt {prompt!r}: {reason}")


def clean_prompt(prompt: str) -> str:
    """NFC-normalise, drop control characters and surrogates, collapse and strip whitespace."""
    if not isinstance(prompt, str):
        raise PromptError(prompt, f"expected a str, got {type(prompt).__name__}")
    text = unicodedata.normalize("NFC", prompt)
    chars = []
    for ch in text:
        if ch in _WHITESPACE_CONTROLS:
            chars.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cs"):
            chars.append(ch)
    return _SPACES.sub(" ", "".join(chars)).strip()


def clean_prompts(prompts: Sequence[str]) -> list[str]:
    """`clean_prompt` over a batch; a bare string is refused (it would be read as characters)."""
    if isinstance(prompts, str):
        raise TypeError(f"expected a list of prompts, got the single string {prompts!r}")
    return [clean_prompt(p) for p in prompts]


def validate_prompts(
    prompts: Sequence[str], *, family: str = "selva", negative: bool = False
) -> list[str]:
    """Clean a batch and apply the family policy for empty prompts (see the module docstring)."""
    cleaned = clean_prompts(prompts)
    if family not in ("selva", "mmaudio"):
        raise ValueError(f"unknown model family {family!r}")
    if not negative and family == "selva":
        for raw, text in zip(prompts, cleaned, strict=True):
            if not text:
                raise PromptError(
                    raw,
                    "empty positive prompt; SelVA needs a prompt naming the sound to generate "
                    "(only negative prompts may be empty)",
                )
    return cleaned


@dataclass(frozen=True)
class TokenCount:
    """Tokens one prompt needs (special tokens included) against an encoder's limit."""

    prompt: str
    tokens: int
    limit: int
    encoder: str  # "clip" | "t5"

    @property
    def dropped(self) -> int:
        return max(0, self.tokens - self.limit)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0


def warn_truncated(counts: Sequence[TokenCount]) -> None:
    """One warning per truncated prompt, saying how many tokens the encoder dropped."""
    for c in counts:
        if c.truncated:
            shown = c.prompt if len(c.prompt) <= 80 else c.prompt[:77] + "..."
            log.warning(
                "%s: prompt %r has %d tokens, over the %d-token limit; %d token(s) dropped",
                c.encoder,
                shown,
                c.tokens,
                c.limit,
                c.dropped,
            )
