"""Host names from DHCP (or an operator) made into DNS labels that are valid
and unique within the zone.

A name becomes one label: the part before its first dot (``web1.other.org``
is ``web1``; the zone's own domain is ours to add), lower-cased, with every
run of characters other than letters, digits and hyphens turned into one
hyphen, hyphens at either end stripped, at most 63 characters. Nothing left
means no record.

A label already held by another host gets the first free numeric suffix,
``web``, ``web-2``, ``web-3``..., cut so that label and suffix still fit in
63; the suffix depends only on what is taken at the time. (dnsmasq instead
moves a name to the newest lease that asks for it, unless the older one's
name came from its configuration; here a client's DHCP request never takes
a running machine's name, and :class:`zone.Zone` lets only a name the
operator chose take a label back from a host that named itself.)
"""

from __future__ import annotations

import re
from collections.abc import Container

LABEL_MAX = 63
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def host_label(text: str | None) -> str | None:
    """The DNS label for a host name, or None when nothing usable is left."""
    if not text:
        return None
    first = text.strip().split(".", 1)[0][:LABEL_MAX * 4]
    label = _NOT_LABEL.sub("-", first.lower()).strip("-")
    label = label[:LABEL_MAX].rstrip("-")
    return label or None


def unique_label(label: str, taken: Container[str]) -> str:
    """``label`` itself if free, else ``label-N`` for the smallest free N ≥ 2."""
    if label not in taken:
        return label
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = label[:LABEL_MAX - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
        n += 1
