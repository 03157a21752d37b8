"""Names for new creatures: a portmanteau of the two species a sample most looks like.

"Bulbasaur" + "Charmander" -> "Bulbamander": the first name up to the end of its middle vowel
group, the second from the consonants before its middle vowel group. A pure function of the two
names, so a seed's name is as deterministic as its image.
"""

from __future__ import annotations

import re

_VOWELS = set("aeiouy")


def _letters(name: str) -> str:
    # "Rotom (Wash)": the form is not part of the name to blend.
    return re.sub(r"[^a-z]", "", re.sub(r"\(.*?\)", "", name).lower())


def _vowel_groups(word: str) -> list[tuple[int, int]]:
    """(start, end) of each run of vowels; 'y' counts as a vowel after a consonant only."""
    groups: list[tuple[int, int]] = []
    i = 0
    while i < len(word):
        if word[i] in _VOWELS and not (word[i] == "y" and i == 0):
            j = i
            while j + 1 < len(word) and word[j + 1] in _VOWELS:
                j += 1
            groups.append((i, j + 1))
            i = j + 1
        else:
            i += 1
    return groups


def _head(word: str) -> str:
    """``word`` up to the end of the vowel group nearest its middle (at least 2 letters)."""
    groups = [g for g in _vowel_groups(word) if g[1] < len(word)] or _vowel_groups(word)
    if not groups:
        return word[: max(2, len(word) // 2)]
    mid = len(word) / 2
    end = min(groups, key=lambda g: (abs(g[1] - mid), g[1]))[1]
    return word[: max(end, 2)]


def _tail(word: str) -> str:
    """``word`` from the consonants before the vowel group nearest its middle."""
    groups = [g for g in _vowel_groups(word) if g[0] > 0] or _vowel_groups(word)
    if not groups:
        return word[len(word) // 2 :]
    mid = len(word) / 2
    start = min(groups, key=lambda g: (abs(g[0] - mid), g[0]))[0]
    while start > 0 and word[start - 1] not in _VOWELS:
        start -= 1
        if start > 0 and word[start - 1] not in _VOWELS and word[start - 1] == word[start]:
            continue
        break
    return word[start:]


def portmanteau(first: str, second: str) -> str:
    """A creature name from two species names ("Bulbasaur", "Charmander" -> "Bulbamander")."""
    a, b = _letters(first), _letters(second)
    if not a or not b:
        return (first or second).strip() or "Unknown"
    if a == b:
        return a.capitalize()
    head, tail = _head(a), _tail(b)
    if head[-1] in _VOWELS and tail[:1] in _VOWELS:
        tail = tail[1:]
    if head[-1] == tail[:1]:
        tail = tail[1:]
    name = head + tail
    if name in (a, b) or len(name) < 4:
        name = a[: (len(a) + 1) // 2] + b[len(b) // 2 :]
    return name.capitalize()
