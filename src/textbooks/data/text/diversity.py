"""How diverse a set of generations is, measured rather than assumed.

phi-1 made its synthetic data diverse by putting random topics, audiences and function names into the
prompts; whether the model then wrote different texts is a measurement:

* **distinct-n** (Li et al., 2016): distinct word n-grams / all word n-grams over the generations of a group
  (1.0: no n-gram repeats; low values: the model says the same things again);
* **near-duplicate rate**: the fraction of generations that are near duplicates (``textbooks.data.text.minhash``:
  MinHash Jaccard >= threshold, or the same normalised text) of an earlier one in the group.

``diversity`` reports both for all generations and per value of each grouping key (topic, audience, the
function-name constraint of an exercise), so a prompt dimension that does not diversify shows up.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from textbooks.data.text.minhash import Deduplicator, Duplicates, Sketcher

_WORD = re.compile(r"\w+")
NGRAMS = (1, 2, 4)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams (lower-cased); 0.0 when there are none."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = _WORD.findall(text.lower())
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def near_duplicate_rate(texts: Sequence[str], threshold: float = 0.7) -> float:
    """The fraction of ``texts`` that duplicate an earlier one (exact or near, first of a cluster kept)."""
    if not texts:
        return 0.0
    definition = Duplicates(threshold=threshold)
    d, sketch = Deduplicator(definition), Sketcher(definition)
    dups = sum(d.add(s).duplicate_of is not None for s in sketch(list(texts)))
    return dups / len(texts)


def summary(texts: Sequence[str], threshold: float) -> dict[str, Any]:
    return {
        "count": len(texts),
        **{f"distinct_{n}": round(distinct_n(texts, n), 4) for n in NGRAMS},
        "near_duplicate_rate": round(near_duplicate_rate(texts, threshold), 4),
    }


def diversity(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], *, text: str = "text", threshold: float = 0.7
) -> dict[str, Any]:
    """``{"all": summary, "<key>": {value: summary, ...}, ...}`` over ``rows``' ``text`` column."""
    out: dict[str, Any] = {"all": summary([str(r[text]) for r in rows], threshold)}
    for key in keys:
        groups: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            groups[str(r.get(key))].append(str(r[text]))
        out[key] = {v: summary(ts, threshold) for v, ts in sorted(groups.items())}
    return out


def most_common(values: Iterable[str], k: int = 5) -> list[tuple[str, int]]:
    """The ``k`` most repeated values (e.g. function names the model chose despite the constraint)."""
    return Counter(values).most_common(k)
