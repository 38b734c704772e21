# -*- test-case-name: tests.test_demo -*-
"""
Deterministic "inference" for the demo upstream: tokens, token counts and
embedding vectors that are pure functions of the request.

Nothing here does I/O or touches a reactor.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any, Iterable, Sequence

import attr

#: The fixed vocabulary a completion is drawn from.  Changing it changes every
#: demo completion, so treat it as frozen.
WORDS: tuple[str, ...] = (
    "llama", "swap", "model", "token", "stream", "reactor", "twisted", "defer",
    "proxy", "server", "upstream", "cache", "prompt", "answer", "quick", "brown",
    "fox", "jumps", "over", "lazy", "dog", "alpaca", "vicuna", "guanaco",
    "tensor", "matrix", "vector", "kernel", "layer", "weight", "bias", "logit",
    "sample", "greedy", "beam", "batch", "slot", "context", "window", "rope",
    "attention", "head", "query", "key", "value", "softmax", "gradient", "epoch",
    "hello", "world", "demo", "fast", "small", "local", "light", "cloud",
    "river", "mountain", "forest", "ocean", "desert", "meadow", "valley", "stone",
)

#: Dimension of the vectors returned by L{embed}.
EMBEDDING_DIMENSION = 8


@attr.s(frozen=True, auto_attribs=True)
class Generation:
    """
    The outcome of "running the model" on one prompt.

    @ivar prompt: The prompt text the tokens were derived from.
    @ivar promptTokens: How many tokens the prompt counts as (L{countTokens}).
    @ivar tokens: The produced tokens, each a word followed by a space.
    @ivar truncated: C{True} when the request's token limit cut generation
        short (OpenAI C{"length"}, Anthropic C{"max_tokens"}).
    """

    prompt: str
    promptTokens: int
    tokens: tuple[str, ...]
    truncated: bool

    @property
    def text(self) -> str:
        """
        The whole completion: the concatenated tokens.
        """
        return "".join(self.tokens)

    @property
    def completionTokens(self) -> int:
        """
        How many tokens were produced.
        """
        return len(self.tokens)

    @property
    def finishReason(self) -> str:
        """
        The OpenAI C{finish_reason}: C{"length"} or C{"stop"}.
        """
        return "length" if self.truncated else "stop"

    @property
    def stopReason(self) -> str:
        """
        The Anthropic C{stop_reason}: C{"max_tokens"} or C{"end_turn"}.
        """
        return "max_tokens" if self.truncated else "end_turn"


def countTokens(prompt: str) -> int:
    """
    Count the tokens of a prompt: its whitespace-separated words, at least 1.
    """
    return max(1, len(prompt.split()))


def tokenAt(promptDigest: bytes, index: int) -> str:
    """
    The token at position C{index} of the completion of a prompt.

    @param promptDigest: L{promptDigest} of the prompt.
    @return: A word from L{WORDS} followed by a space.
    """
    h = hashlib.blake2b(promptDigest + index.to_bytes(8, "little"), digest_size=8)
    return WORDS[int.from_bytes(h.digest(), "little") % len(WORDS)] + " "


def promptDigest(prompt: str) -> bytes:
    """
    A stable digest of a prompt (unlike C{hash()}, the same in every process).
    """
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def generate(prompt: str, naturalTokens: int, limit: int | None) -> Generation:
    """
    Produce the completion of C{prompt}.

    @param naturalTokens: How many tokens the model produces when unlimited
        (the server's C{--tokens}).
    @param limit: The request's token limit, or L{None} for no limit.
    """
    count = naturalTokens if limit is None else min(naturalTokens, limit)
    digest = promptDigest(prompt)
    return Generation(
        prompt=prompt,
        promptTokens=countTokens(prompt),
        tokens=tuple(tokenAt(digest, i) for i in range(count)),
        truncated=count < naturalTokens,
    )


def textOf(content: Any) -> str:
    """
    Extract the text of a message's content in any of the shapes the OpenAI and
    Anthropic APIs use: a string, L{None}, or a list of parts where text parts
    carry a C{"text"} key and tool results nest a C{"content"}.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for t in (textOf(part) for part in content) if t)
    if isinstance(content, dict):
        texts = []
        for key in ("text", "content", "output"):
            value = content.get(key)
            if isinstance(value, (str, list)):
                texts.append(textOf(value))
        return "\n".join(t for t in texts if t)
    return ""


def promptOfMessages(messages: Iterable[Any], system: Any = None) -> str:
    """
    The prompt of a chat: the optional system text then every message's
    content, one per line.
    """
    parts = [textOf(system)]
    for message in messages:
        if isinstance(message, dict):
            parts.append(textOf(message.get("content")))
        else:
            parts.append(textOf(message))
    return "\n".join(p for p in parts if p)


def embed(text: str) -> list[float]:
    """
    A deterministic unit vector of L{EMBEDDING_DIMENSION} floats for C{text}.
    """
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=4 * EMBEDDING_DIMENSION
    ).digest()
    raw = [
        (n / 0xFFFFFFFF) * 2.0 - 1.0
        for n in struct.unpack("<%dI" % EMBEDDING_DIMENSION, digest)
    ]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Round-trip through float32 so the float and base64 encodings agree.
    packed = struct.pack("<%df" % len(raw), *(x / norm for x in raw))
    return list(struct.unpack("<%df" % len(raw), packed))


def embeddingBase64(vector: Sequence[float]) -> str:
    """
    Encode a vector the way OpenAI's C{encoding_format: "base64"} does: the
    little-endian float32 array, base64-encoded.
    """
    return base64.b64encode(struct.pack("<%df" % len(vector), *vector)).decode("ascii")
