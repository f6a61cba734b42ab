"""The prompt screen: normalise away the usual disguises, then match the operator's lists.

The screen compares words, not substrings, so "Essex" is not "sex"; to make that hold against
disguises, a prompt is first folded to plain lower-case Latin words: Unicode compatibility
forms (full-width letters), accents, zero-width and control characters, Cyrillic and Greek
look-alikes, digit and symbol substitutions (`s3x`, `p0rn`, `$ex`), letters spaced or dotted
out (`n u d e`, `n.u.d.e`) and stretched (`nuuude`). Lists are plain text files (see
lists/default.txt); the built-in one always applies, operators add theirs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from darkroom.errors import ContentPolicyViolation

CATEGORIES = ("deny", "sexual", "minor")

_LOOKALIKES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "и": "u", "і": "i", "ї": "i",
        "ј": "j", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "ѕ": "s",
        "т": "t", "у": "y", "х": "x", "ь": "b",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
        "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    }
)  # fmt: skip
_DIGITS = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b"})
# Symbols stand for letters only inside a word ("$ex", "n!pple"), not as punctuation ("wow!").
_SYMBOLS = {"@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e", "£": "l"}
_SYMBOL_IN_WORD = re.compile(r"[@$!|+€£](?=[a-z0-9])")
_NOT_WORD = re.compile(r"[^a-z]+")
_STRETCHED = re.compile(r"([a-z])\1{2,}")
_AGE = re.compile(r"\b(\d{1,2})\s*-?\s*(?:years?|yrs?|yo|y/o)\b")
_DROPPED = frozenset(("Cf", "Cs", "Co", "Cn", "Mn", "Me"))


def _fold(text: str) -> str:
    """Compatibility forms, accents and invisible characters folded away; lower case."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    # Invisible characters (zero-width, format, marks) vanish; control characters separate.
    text = "".join(
        " " if unicodedata.category(c) == "Cc" else c
        for c in text
        if unicodedata.category(c) not in _DROPPED
    )
    return text.casefold().translate(_LOOKALIKES)


@dataclass(frozen=True, slots=True)
class Words:
    """A prompt as the screen sees it: plain lower-case Latin words, and the runs of single
    letters that were spelled out ("n u d e c h i l d"), which are searched inside too."""

    words: tuple[str, ...]
    spelled: tuple[str, ...]


def words(text: str) -> list[str]:
    return list(screened(text).words)


def screened(text: str) -> Words:
    folded = _SYMBOL_IN_WORD.sub(lambda m: _SYMBOLS[m.group()], _fold(text)).translate(_DIGITS)
    tokens = [_STRETCHED.sub(r"\1", t) for t in _NOT_WORD.split(folded) if t]
    # Letters spaced or dotted out ("n u d e", "n.u.d.e") become the word they spell.
    merged: list[str] = []
    spelled: list[str] = []
    run: list[str] = []
    for token in [*tokens, ""]:
        if len(token) == 1:
            run.append(token)
            continue
        if run:
            merged.append("".join(run))
            if len(run) > 1:
                spelled.append(merged[-1])
            run = []
        if token:
            merged.append(token)
    return Words(tuple(merged), tuple(spelled))


def stated_ages(text: str) -> list[int]:
    """Ages a prompt states ("12 year old", "12yo"), read before digits are substituted."""
    return [int(m.group(1)) for m in _AGE.finditer(_fold(text))]


@dataclass(frozen=True, slots=True)
class Term:
    words: tuple[str, ...]
    prefix: bool  # the last word may continue ("masturbat*")

    @classmethod
    def parse(cls, line: str) -> Term | None:
        prefix = line.endswith("*")
        found = tuple(words(line.rstrip("*")))
        return cls(found, prefix) if found else None

    def found_in(self, prompt: Words) -> bool:
        joined = "".join(self.words)
        if any(joined in run for run in prompt.spelled):
            return True
        text = prompt.words
        n = len(self.words)
        last = self.words[-1]
        for i in range(len(text) - n + 1):
            if tuple(text[i : i + n - 1]) != self.words[:-1]:
                continue
            word = text[i + n - 1]
            if word == last or (self.prefix and word.startswith(last)):
                return True
        return False


@dataclass
class PromptScreen:
    terms: dict[str, list[Term]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})

    @classmethod
    def load(cls, extra_files: Iterable[Path] = ()) -> PromptScreen:
        """The built-in lists plus the operator's files; ValueError on a malformed file."""
        screen = cls()
        builtin = resources.files("darkroom.moderation").joinpath("lists/default.txt")
        screen.add_lines(builtin.read_text(encoding="utf-8"), source="built-in list")
        for path in extra_files:
            screen.add_lines(path.read_text(encoding="utf-8"), source=str(path))
        return screen

    def add_lines(self, text: str, *, source: str) -> None:
        category: str | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                category = line[1:-1].strip()
                if category not in CATEGORIES:
                    raise ValueError(f"{source}:{number}: unknown list [{category}]")
                continue
            if category is None:
                raise ValueError(f"{source}:{number}: a term before any [list] heading")
            term = Term.parse(line)
            if term is None:
                raise ValueError(f"{source}:{number}: {line!r} has no letters to match")
            self.terms[category].append(term)

    def refusal(self, prompt: str, *, strict: bool) -> str | None:
        """Why this prompt is refused, or None."""
        text = screened(prompt)

        def hit(category: str) -> bool:
            return any(term.found_in(text) for term in self.terms[category])

        if hit("deny"):
            return "it asks for content this service never generates"
        sexual = hit("sexual")
        if sexual and (hit("minor") or any(age < 18 for age in stated_ages(prompt))):
            return "sexual content involving minors"
        if sexual and strict:
            return "sexual content (nsfw_check is on)"
        return None

    def check(self, prompt: str, *, strict: bool) -> None:
        """ContentPolicyViolation (param `prompt`) for a refused prompt."""
        reason = self.refusal(prompt, strict=strict)
        if reason is not None:
            raise ContentPolicyViolation(
                f"Prompt refused by the content policy: {reason}", param="prompt"
            )
