"""Content negotiation: which of the formats an endpoint can answer in a request's Accept header
asks for (RFC 9110, 12.5.1), or a 406 naming those it can."""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

from service.errors import NotAcceptable

ResponseFormat = Literal["json", "npy", "png"]
JSON = "application/json"
# Accept headers seen are cached with their answer (a client sends the same one every time);
# longer ones, which no real client sends, are worked out each time rather than kept.
CACHED_ACCEPT_CHARS = 256


class Offer(NamedTuple):
    """A media type an endpoint answers in, and the format that writes it."""

    media_type: str
    fmt: ResponseFormat
    description: str = ""  # what such an answer holds, for the docs ("" for JSON)
    alias_of: str | None = None  # another name the endpoint takes for this offer's answer


Offers = tuple[Offer, ...]


def negotiate(accept: str, offers: Offers, where: str) -> ResponseFormat:
    """The format to answer in, for this `Accept` header: of the `offers` (in the endpoint's
    order of preference), the one of highest quality; each takes its quality from the most
    specific range that matches it (`image/png`, then `image/*`, then `*/*`), q=0 is "not
    acceptable", ties go to the endpoint's preference. No header, or an empty one, accepts
    anything. None acceptable: NotAcceptable (406) naming what `where` answers."""
    if not accept:
        return offers[0].fmt
    if accept == JSON and offers[0].media_type == JSON:  # what most clients send
        return "json"
    if len(accept) > CACHED_ACCEPT_CHARS:
        return _negotiate(accept, offers, where)
    return _negotiate_cached(accept, offers, where)


def _negotiate(accept: str, offers: Offers, where: str) -> ResponseFormat:
    ranges = parse_accept(accept)
    if not ranges and not accept.strip(" \t,"):
        return offers[0].fmt
    best: tuple[float, ResponseFormat] | None = None
    for offer in offers:
        quality = accept_quality(ranges, offer.media_type)
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, offer.fmt)
    if best is None:
        shown = accept if len(accept) <= 100 else accept[:100] + "..."
        raise NotAcceptable("", f"Accept: {shown} cannot be produced by {where}; {answers(offers)}")
    return best[1]


_negotiate_cached = functools.lru_cache(maxsize=256)(_negotiate)


def answers(offers: Offers) -> str:
    """What an endpoint answers in, in words: 'it answers application/json or image/png'."""
    types = [offer.media_type for offer in offers if offer.alias_of is None]
    aliases = [offer.media_type for offer in offers if offer.alias_of is not None]
    text = (
        f"it answers {types[0]} only"
        if len(types) == 1
        else (f"it answers {', '.join(types[:-1])} or {types[-1]}")
    )
    return text + (f" (also sent for {', '.join(aliases)})" if aliases else "")


def parse_accept(accept: str) -> list[tuple[str, str, float]]:
    """An Accept header's media ranges as (type, subtype, q), lower case. A range that is not
    `type/subtype` (or `*/*`, `type/*`), or whose q is not a number in [0, 1], is left out, as
    the RFC lets a recipient do; media type parameters other than q are not compared."""
    ranges = []
    for item in accept.split(","):
        media_range, *parameters = item.split(";")
        main, slash, sub = media_range.strip().lower().partition("/")
        if not slash or not main or not sub or (main == "*" and sub != "*"):
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = math.nan
        if 0.0 <= quality <= 1.0:  # NaN is neither
            ranges.append((main, sub, quality))
    return ranges


def accept_quality(ranges: list[tuple[str, str, float]], media_type: str) -> float:
    """The quality the most specific matching range gives `media_type`; 0 when none matches."""
    main, _, sub = media_type.partition("/")
    best_specificity, quality = -1, 0.0
    for range_main, range_sub, range_quality in ranges:
        if range_main == main and range_sub == sub:
            specificity = 2
        elif range_main == main and range_sub == "*":
            specificity = 1
        elif range_main == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity or (
            specificity == best_specificity and range_quality > quality
        ):
            best_specificity, quality = specificity, range_quality
    return quality
