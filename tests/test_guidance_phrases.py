"""Noun phrases at every nesting level, and their alignment to CLIP and T5 token positions."""

from __future__ import annotations

import functools
import re
from types import SimpleNamespace

import pytest

import unbottle
from unbottle.guidance import ParserUnavailableError, noun_phrases, phrase_char_spans, phrase_token_spans
from unbottle.guidance.alignment import _spans_by_offsets, _spans_by_prefix
from unbottle.guidance.phrases import _doc_spans, _select, _tree_spans
from unbottle.testing import tokenizers

tiny_clip_tokenizer = functools.cache(tokenizers.tiny_clip_tokenizer)  # built once: the tests only read them
tiny_t5_tokenizer = functools.cache(tokenizers.tiny_t5_tokenizer)

# Expected phrases written by hand from the definition in unbottle/guidance/phrases.py: every multi-word NP node in
# pre-order, the whole prompt left out, "X prep Y" -> [X prep Y, X, Y], "X and Y" -> [X and Y, X, Y].
CASES: list[tuple[str, list[str]]] = [
    # DESIGN.md's example and the shapes world's caption forms
    ("a red car and a white sheep", ["a red car", "a white sheep"]),
    ("a red circle to the left of a blue square", ["a red circle", "a blue square"]),
    ("a red circle to the right of a blue square", ["a red circle", "a blue square"]),
    ("a green star above a yellow triangle", ["a green star", "a yellow triangle"]),
    ("a red circle left of a blue square", ["a red circle", "a blue square"]),
    ("two green stars", []),
    ("a striped pink star", []),
    ("a dotted yellow triangle and a solid blue star", ["a dotted yellow triangle", "a solid blue star"]),
    ("a small blue circle", []),
    ("a red square moves left", ["a red square"]),
    ("a red square moving left and a blue circle moving right", ["a red square", "a blue circle"]),
    ("a large striped red cross below a small dotted blue diamond",
     ["a large striped red cross", "a small dotted blue diamond"]),
    # nesting through prepositions (right-attaching) and coordination (binds loosest)
    ("a red car on a blue road", ["a red car", "a blue road"]),
    ("a photo of a red car on a blue road", ["a photo", "a red car on a blue road", "a red car", "a blue road"]),
    ("a cat on a mat in a house", ["a cat", "a mat in a house", "a mat", "a house"]),
    ("a cat on a mat and a dog", ["a cat on a mat", "a cat", "a mat", "a dog"]),
    ("a photo of a cat and a dog", ["a photo of a cat", "a photo", "a cat", "a dog"]),
    ("a man with a red hat and a woman with a blue scarf",
     ["a man with a red hat", "a man", "a red hat", "a woman with a blue scarf", "a woman", "a blue scarf"]),
    ("a red car in front of a white house", ["a red car", "a white house"]),
    ("a small dog next to a big cat", ["a small dog", "a big cat"]),
    # commas, "or", "&", the Oxford comma, trailing punctuation, casing, extra spaces
    ("a red car, a blue bus and a green tree", ["a red car", "a blue bus", "a green tree"]),
    ("A Red  Car, a blue bus, and a green tree.", ["A Red  Car", "a blue bus", "a green tree"]),
    ("a red apple or a green pear!", ["a red apple", "a green pear"]),
    ("a black cat & a white dog", ["a black cat", "a white dog"]),
    ("  A BLUE SPHERE   ON A RED CUBE.  ", ["A BLUE SPHERE", "A RED CUBE"]),
    # numbers, stacked and coordinated adjectives, compounds, unknown heads
    ("three yellow stars and 2 red hearts", ["three yellow stars", "2 red hearts"]),
    ("the two small dogs under a big old tree", ["the two small dogs", "a big old tree"]),
    ("a very shiny bright red sports car", []),
    ("a red and white striped umbrella near a blue beach chair",
     ["a red and white striped umbrella", "a blue beach chair"]),
    ("a big, fluffy white cat on a wooden table", ["a big, fluffy white cat", "a wooden table"]),
    ("a black-and-white photo of an astronaut's helmet", ["a black-and-white photo", "an astronaut's helmet"]),
    # nothing multi-word, verbs and clauses, elided nouns
    ("cats and dogs", []),
    ("sunset", []),
    ("", []),
    ("a dog is sitting on a red sofa", ["a dog", "a red sofa"]),
    ("a man wearing a red hat riding a horse", ["a man", "a red hat", "a horse"]),
    ("a red and a blue car", ["a blue car"]),
    ("the sky is blue; a bird flies", ["the sky", "a bird"]),
    # repeats are listed each time
    ("a red cube and a red cube", ["a red cube", "a red cube"]),
]  # fmt: skip


@pytest.mark.parametrize(("prompt", "expected"), CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_builtin_phrases(prompt, expected):
    assert len(CASES) >= 30
    assert noun_phrases(prompt, parser="builtin") == expected


@pytest.mark.parametrize(("prompt", "expected"), CASES[:20])
def test_phrases_are_substrings_in_preorder_and_ignore_case_and_spacing(prompt, expected):
    phrases = noun_phrases(prompt, parser="builtin")
    starts = [s for s, _ in phrase_char_spans(prompt, phrases)]
    assert starts == sorted(starts) and all(p in prompt for p in phrases)
    assert noun_phrases(prompt.upper(), parser="builtin") == [p.upper() for p in phrases]
    spaced = "  " + re.sub(" ", "   ", prompt) + " "
    squeezed = [" ".join(p.split()) for p in noun_phrases(spaced, parser="builtin")]
    assert squeezed == [" ".join(p.split()) for p in phrases]


def test_public_name_is_live_and_auto_falls_back_to_builtin_here():
    assert unbottle.noun_phrases is noun_phrases
    assert unbottle.noun_phrases("a red car and a white sheep") == ["a red car", "a white sheep"]
    with pytest.raises(ValueError, match="unknown parser"):
        noun_phrases("a red car", parser="benepar")


@pytest.mark.parametrize(("parser", "package"), [("spacy", "spaCy"), ("stanza", "stanza")])
def test_named_parser_without_package_or_model_is_a_clear_error(parser, package):
    try:
        __import__(parser)
    except ImportError:
        with pytest.raises(ParserUnavailableError, match=rf"parser='{parser}' needs .*{package}.* not installed"):
            noun_phrases("a red car", parser=parser)
    else:  # package present: without a local model the error names the model
        with pytest.raises(ParserUnavailableError, match="model"):
            noun_phrases("a red car", parser=parser)


def test_constituency_tree_gives_every_np_in_preorder():
    """The stanza path on a hand-built tree: (NP (NP a photo) (PP of (NP (NP a red car) (PP on (NP a road)))))."""

    def node(label, *children):
        return SimpleNamespace(label=label, children=list(children))

    def leaf(word):
        return node("DT" if word == "a" else "NN", node(word))

    red_car_on_a_road = node(
        "NP",
        node("NP", leaf("a"), leaf("red"), leaf("car")),
        node("PP", leaf("on"), node("NP", leaf("a"), leaf("road"))),
    )
    tree = node("ROOT", node("NP", node("NP", leaf("a"), leaf("photo")), node("PP", leaf("of"), red_car_on_a_road)))
    prompt = "a photo of a red car on a road"
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", prompt)]
    assert _select(prompt, _tree_spans(tree, words)) == ["a photo", "a red car on a road", "a red car", "a road"]


def test_spacy_dependency_growth_on_a_hand_built_parse():
    """The spaCy path on a fake Doc for "a red car on a road and a dog": chunks grown along prep/pobj and conj."""
    prompt = "a red car on a road and a dog"
    words = prompt.split()
    heads = [2, 2, 2, 2, 5, 3, 2, 8, 2]
    deps = ["det", "amod", "ROOT", "prep", "det", "pobj", "cc", "det", "conj"]
    idx = [m.start() for m in re.finditer(r"\S+", prompt)]
    toks = [SimpleNamespace(i=i, text=w, idx=idx[i], dep_=deps[i], is_punct=False) for i, w in enumerate(words)]
    for t in toks:
        t.children = [c for c in toks if heads[c.i] == t.i and c.i != t.i]
    chunks = [SimpleNamespace(start=s, end=e, root=toks[r]) for s, e, r in ((0, 3, 2), (4, 6, 5), (7, 9, 8))]

    class Doc(list):
        noun_chunks = chunks

    assert _select(prompt, _doc_spans(Doc(toks))) == ["a red car on a road", "a red car", "a road", "a dog"]


# --------------------------------------------------------------------------------------------------------- alignment
def _decoded(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True).replace("</w>", " ").split()


@pytest.mark.parametrize("make", [tiny_clip_tokenizer, tiny_t5_tokenizer], ids=["clip", "t5"])
@pytest.mark.parametrize(("prompt", "expected"), [c for c in CASES if c[1]][:20])
def test_spans_decode_back_to_the_phrase(make, prompt, expected):
    tok = make()
    ids = tok(prompt, truncation=True, max_length=tok.model_max_length)["input_ids"]
    spans = phrase_token_spans(tok, prompt, expected)
    for phrase, (start, end) in zip(expected, spans, strict=True):
        assert _decoded(tok, ids[start:end]) == _decoded(tok, tok(phrase, add_special_tokens=False)["input_ids"])


def test_clip_bos_and_t5_no_bos_offsets():
    prompt = "a red car and a white sheep"
    phrases = ["a red car", "a white sheep"]
    # BOS at 0; the tiny CLIP BPE spells "white sheep" with 7 sub-word tokens, all inside the span
    assert phrase_token_spans(tiny_clip_tokenizer(), prompt, phrases) == [(1, 4), (5, 13)]
    assert phrase_token_spans(tiny_t5_tokenizer(), prompt, phrases) == [(0, 3), (4, 7)]  # no BOS; EOS at 7


def test_repeated_phrases_get_different_spans_in_order():
    prompt = "a red cube and a red cube"
    phrases = noun_phrases(prompt, parser="builtin")
    assert phrase_token_spans(tiny_clip_tokenizer(), prompt, phrases) == [(1, 4), (5, 8)]
    assert phrase_char_spans("A red cube and a RED  cube", ["a red cube"] * 2) == [(0, 10), (15, 26)]
    nested = ["a photo of a cat", "a photo", "a cat", "a dog"]
    spans = phrase_token_spans(tiny_t5_tokenizer(), "a photo of a cat and a dog", nested)
    assert spans == [(0, 5), (0, 2), (3, 5), (6, 8)]
    with pytest.raises(ValueError, match="does not occur"):
        phrase_char_spans("a red cube", ["a blue cube"])
    with pytest.raises(ValueError):  # word boundaries: "a cat" is not in "a cattle"
        phrase_char_spans("a cattle", ["a cat"])


@pytest.mark.parametrize(("make", "lead", "trail"), [(tiny_clip_tokenizer, 1, 1), (tiny_t5_tokenizer, 0, 1)])
def test_truncation_gives_none_or_clipped_spans(make, lead, trail):
    tok = make()
    prompt = "a red car and a white sheep"
    phrases = ["a red car", "a white sheep"]
    # keep 5 content tokens: "a red car and a" -> the second phrase is clipped to its first word
    max_length = 5 + lead + trail
    assert phrase_token_spans(tok, prompt, phrases, max_length=max_length) == [(lead, lead + 3), (lead + 4, lead + 5)]
    # keep 3 content tokens: the second phrase is wholly cut off
    assert phrase_token_spans(tok, prompt, phrases, max_length=3 + lead + trail) == [(lead, lead + 3), None]
    # the default limit is the tokenizer's model_max_length, as in the pipelines
    long = "a red car and " * 40 + "a white sheep"
    spans = phrase_token_spans(tok, long, ["a white sheep"])
    assert spans == [None]


@pytest.mark.parametrize("make", [tiny_clip_tokenizer, tiny_t5_tokenizer], ids=["clip", "t5"])
@pytest.mark.parametrize("max_length", [None, 6, 9, 12])
def test_prefix_fallback_for_slow_tokenizers_agrees_with_offsets(make, max_length):
    tok = make()
    prompt = "a photo of a red car on a blue road and a zebra"  # "zebra" is spelled by characters in tiny CLIP
    phrases = noun_phrases(prompt, parser="builtin")
    chars = phrase_char_spans(prompt, phrases)
    assert _spans_by_prefix(tok, prompt, chars, max_length) == _spans_by_offsets(tok, prompt, chars, max_length)

    class Slow:  # a tokenizer without offsets: phrase_token_spans must take the prefix path
        is_fast = False
        model_max_length = tok.model_max_length

        def __call__(self, text, **kwargs):
            assert "return_offsets_mapping" not in kwargs
            return tok(text, **kwargs)

    slow = phrase_token_spans(Slow(), prompt, phrases, max_length)
    assert slow == phrase_token_spans(tok, prompt, phrases, max_length)


def test_every_shapes_caption_form_yields_its_object_phrases():
    """Generated shapes captions (all kinds, video motion included): one phrase per mentioned object, none else."""
    import random

    from unbottle.shapes.captions import caption, spec_of
    from unbottle.shapes.world import sample_scene

    rng = random.Random(0)
    for i in range(300):
        scene = sample_scene(rng, video=i % 2 == 1)
        text = caption(scene, rng)
        mentions = spec_of(scene).mentions
        phrases = noun_phrases(text, parser="builtin")
        if len(mentions) == 1 and not mentions[0].motion:  # the caption is one noun phrase: the whole prompt
            assert phrases == [], text
        else:
            assert [p.split()[-1] for p in phrases] == [m.shape for m in mentions], text
            assert all(m.color in p.split() for p, m in zip(phrases, mentions, strict=True)), text
