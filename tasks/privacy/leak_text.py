"""The leak scan of free text (log lines, artifact markdown): tokens, n-grams and two patterns.

Every token of a text and every run of up to `SecretIndex.max_ngram` tokens is hashed and looked
up in the text index, in one batch for all texts. Two patterns need no batch: an e-mail address
with a real local part and an E.164 phone number. Base64 `data:` URIs (the embedded chart PNGs)
are cut from text before scanning: they are pixels, and random base64 could look like a phone
number; markup escapes and invisible characters are undone first (`readable`). Counts are per
kind, never values.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from tasks.common.emails import local_part
from tasks.common.errors import EMAIL_PATTERN, PHONE_PATTERN, ValuePattern
from tasks.privacy.leak_index import LOWER_KINDS, SECRET_KINDS, SecretIndex, hash_strings, tokens

# --- value-free patterns --------------------------------------------------------------------------

PATTERN_EMAIL = "pattern:email"
PATTERN_PHONE = "pattern:e164_phone"
# Values of these shapes are leaks whoever they belong to. Each holds its `re` form (text) and
# its RE2 form (Arrow's vectorized match over table cells, tasks.privacy.leak_tables).
PATTERNS: tuple[tuple[str, ValuePattern], ...] = (
    (PATTERN_EMAIL, EMAIL_PATTERN),
    (PATTERN_PHONE, PHONE_PATTERN),
)
_DATA_URI = re.compile(r"data:[\w/+.\-]+;base64,[A-Za-z0-9+/=\s]*")
# What text is read as, before it is scanned: markup escapes undone (artifacts are escaped for
# the UI, tasks.reporting.artifacts.ui_text, with backslashes, entities and invisible joiners)
# and invisible characters dropped, so `jo\u200b@x.com` or `jo\\_doe` is still found.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]")
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def readable(text: str) -> str:
    """The text as a reader sees it: no base64 images, escapes undone, no invisible characters."""
    text = html.unescape(_MD_ESCAPE.sub(r"\1", _INVISIBLE.sub("", text)))
    return _DATA_URI.sub(" ", text)


class TextScanner:
    """Counts a batch's raw values, by kind, in free text."""

    def __init__(self, index: SecretIndex) -> None:
        """Look values up in `index`'s text forms."""
        self._index = index

    def text_counts(self, text: str) -> Counter[str]:
        """Occurrences per kind in one text: secrets and patterns."""
        text = readable(text)
        counts = self.counts([text])[0]
        for kind, pattern in PATTERNS:
            counts[kind] += len(pattern.python.findall(text))
        return counts

    def line_counts(self, lines: Iterable[str]) -> Counter[str]:
        """Lines with a hit, per kind (a line counts once per kind)."""
        cleaned = [readable(line) for line in lines]
        counts: Counter[str] = Counter()
        for line, found in zip(cleaned, self.counts(cleaned), strict=True):
            kinds = set(found)
            kinds.update(kind for kind, pattern in PATTERNS if pattern.python.search(line))
            counts.update(kinds)
        return counts

    def counts(self, texts: Sequence[str]) -> list[Counter[str]]:
        """Secrets per kind in each text: one hashed lookup for every token and n-gram of all."""
        token_lists = [tokens(text) for text in texts]
        found = self._found(c for words in token_lists for c in self._candidates(words))
        return [self._counts(words, found) for words in token_lists]

    def _found(self, candidates: Iterable[str]) -> dict[str, str]:
        """The candidates that are text secrets, with their kind."""
        unique = list(dict.fromkeys(candidates))
        kinds = self._index.text.lookup(hash_strings(unique))
        return {
            value: SECRET_KINDS[kind]
            for value, kind in zip(unique, kinds.tolist(), strict=True)
            if kind >= 0
        }

    def _ngram_lengths(self, words: list[str], start: int) -> range:
        """Lengths of the multi-word runs from `start` worth looking up."""
        return range(2, min(self._index.max_ngram, len(words) - start) + 1)

    def _candidates(self, words: list[str]) -> Iterable[str]:
        for i, token in enumerate(words):
            yield token
            lower = token.lower()
            yield lower
            if (local := local_part(lower)) is not None:
                yield local
            for n in self._ngram_lengths(words, i):
                yield " ".join(words[i : i + n])

    def _counts(self, words: list[str], found: Mapping[str, str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for token, n in Counter(words).items():
            if (kind := found.get(token)) and kind not in LOWER_KINDS:
                counts[kind] += n
            lower = token.lower()
            # A whole address, else the local part of an address at any domain.
            local = local_part(lower) or ""
            for probe in (lower, local):
                if probe and found.get(probe) in LOWER_KINDS:
                    counts[found[probe]] += n
                    break
        for i in range(len(words)):
            for n in self._ngram_lengths(words, i):
                kind = found.get(" ".join(words[i : i + n]))
                if kind and kind not in LOWER_KINDS:
                    counts[kind] += 1
        return counts
