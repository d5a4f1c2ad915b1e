"""Captions of shapes scenes in a small natural grammar, and the parser that reads them back into facts.

Grammar (with variations): "a [size] [texture] <color> <shape>", "<A> and <B>", "<A> to the left of / to the right
of / above / below <B>", "<two|three|four> <color> <shape>s", "<A> moving|moves <left|right|up|down>".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .world import COLORS, NUMBERS, SHAPES, SIZES, TEXTURES, Obj, Scene

_RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_TEXTURE_WORDS = {"striped": "striped", "dotted": "dotted", "solid": "solid"}
_PLURAL = {s: s + ("es" if s.endswith("ss") else "s") for s in SHAPES}


@dataclass(frozen=True)
class Mention:
    """An object as a caption names it: colour and shape always; size, texture, motion when given."""

    color: str
    shape: str
    size: str | None = None
    texture: str | None = None
    motion: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption asserts: the objects, and a relation between the first two, or a count of the first."""

    mentions: tuple[Mention, ...]
    relation: str | None = None
    count: int | None = None

    @property
    def category(self) -> str:
        if self.count is not None:
            return "count"
        if any(m.motion for m in self.mentions):
            return "motion"
        if self.relation is not None:
            return "spatial"
        if len(self.mentions) > 1:
            return "color_binding"
        return "attribute" if any(m.texture or m.size for m in self.mentions) else "single"


def _phrase(obj: Obj, mention: dict, article: bool = True) -> str:
    words = []
    if mention.get("size") and obj.size != "medium":
        words.append(obj.size)
    if mention.get("texture"):
        words.append(_TEXTURE_WORDS[obj.texture])
    words += [obj.color, obj.shape]
    return (("an " if words[0][0] in "aeiou" else "a ") if article else "") + " ".join(words)


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """One caption of the scene (the variation drawn from `rng`)."""
    rng = rng or random.Random(0)
    objs, m = scene.objects, scene.mention
    if scene.kind == "count":
        return f"{NUMBERS[scene.count]} {objs[0].color} {_PLURAL[objs[0].shape]}"
    if scene.kind in ("single", "attribute"):
        return _phrase(objs[0], m)
    if scene.kind == "pair":
        return f"{_phrase(objs[0], m)} and {_phrase(objs[1], m)}"  # the scene's order is already random
    if scene.kind == "relation":
        return f"{_phrase(objs[0], m)} {_RELATION_WORDS[scene.relation]} {_phrase(objs[1], m)}"
    verb = rng.choice(["moving", "moves"])
    parts = [f"{_phrase(o, m)} {verb} {o.motion}" for o in objs]
    return " and ".join(parts)


def spec_of(scene: Scene) -> CaptionSpec:
    """The facts the scene's caption asserts (what `parse_caption(caption(scene))` returns)."""
    m = scene.mention
    if scene.kind == "count":
        o = scene.objects[0]
        return CaptionSpec((Mention(o.color, o.shape),), count=scene.count)
    mentions = tuple(
        Mention(
            o.color,
            o.shape,
            o.size if m.get("size") and o.size != "medium" else None,
            o.texture if m.get("texture") else None,
            o.motion,
        )  # fmt: skip
        for o in scene.objects
    )
    return CaptionSpec(mentions, relation=scene.relation)


_WORD = {"color": "|".join(COLORS), "shape": "|".join(SHAPES), "size": "|".join(s for s in SIZES if s != "medium"),
         "texture": "|".join(TEXTURES)}  # fmt: skip
_OBJECT = (
    rf"(?:a |an |one )?(?:(?P<size{{i}}>{_WORD['size']}) )?(?:(?P<texture{{i}}>{_WORD['texture']}) )?"
    rf"(?P<color{{i}}>{_WORD['color']}) (?P<shape{{i}}>{_WORD['shape']})"
    rf"(?: (?:moving|moves|is moving) (?:to the )?(?P<motion{{i}}>left|right|up|down))?"
)
_RELATION = r"(?P<relation>to the left of|to the right of|on the left of|on the right of|left of|right of|above|below)"
_PAIR = re.compile(rf"^{_OBJECT.format(i=0)}(?:(?:,? and |, ){_OBJECT.format(i=1)})?$")
_REL = re.compile(rf"^{_OBJECT.format(i=0)} {_RELATION} {_OBJECT.format(i=1)}$")
_SINGULAR = {plural: shape for shape, plural in _PLURAL.items()}
_NUMBER = "|".join(NUMBERS.values())
_COUNT = re.compile(rf"^(?P<n>{_NUMBER}|\d) (?P<color>{_WORD['color']}) (?P<shape>{'|'.join(_SINGULAR)})$")


def _mention(match: re.Match, i: int) -> Mention | None:
    if match.group(f"color{i}") is None:
        return None
    return Mention(match.group(f"color{i}"), match.group(f"shape{i}"), match.group(f"size{i}"),
                   match.group(f"texture{i}"), match.group(f"motion{i}"))  # fmt: skip


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower().rstrip("."))


def mention_word_spans(text: str) -> tuple[tuple[int, int], ...]:
    """Word spans [start, end) of the mentions of `parse_caption(text)`, in order: article, attributes, shape and
    motion words (a count caption is one mention over all its words); words are split on single spaces."""
    clean = _clean(text)
    if _COUNT.match(clean):
        return ((0, clean.count(" ") + 1),)
    match = _REL.match(clean) or _PAIR.match(clean)
    if match is None:
        raise ValueError(f"caption {text!r} is not in the shapes grammar (see unbottle.shapes.captions)")
    spans = []
    for i in (0, 1):
        if match.group(f"color{i}") is None:
            continue
        start = next(match.start(f"{g}{i}") for g in ("size", "texture", "color") if match.group(f"{g}{i}"))
        article = re.search(r"(?:^| )(?:a|an|one) $", clean[:start])
        first = clean[:start].count(" ") - (1 if article else 0)
        end = match.end(f"motion{i}") if match.group(f"motion{i}") else match.end(f"shape{i}")
        spans.append((first, clean[:end].count(" ") + 1))
    return tuple(spans)


def parse_caption(text: str) -> CaptionSpec:
    """The facts of a caption in the shapes grammar; ValueError naming the caption if it is not one."""
    clean = _clean(text)
    if match := _COUNT.match(clean):
        n = match.group("n")
        count = int(n) if n.isdigit() else {v: k for k, v in NUMBERS.items()}[n]
        return CaptionSpec((Mention(match.group("color"), _SINGULAR[match.group("shape")]),), count=count)
    if match := _REL.match(clean):
        relation = match.group("relation").replace("to the ", "").replace("on the ", "")
        return CaptionSpec((_mention(match, 0), _mention(match, 1)), relation=relation)
    if match := _PAIR.match(clean):
        return CaptionSpec(tuple(m for m in (_mention(match, 0), _mention(match, 1)) if m is not None))
    raise ValueError(f"caption {text!r} is not in the shapes grammar (see unbottle.shapes.captions)")
