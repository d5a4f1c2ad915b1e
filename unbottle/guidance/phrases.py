"""Noun phrases of a prompt at every nesting level, as Structured Diffusion Guidance uses them.

Definition (Feng et al. 2023, "Training-Free Structured Diffusion Guidance", arXiv 2212.05032): every NP node of a
constituency parse that covers more than one word, nested ones included, in pre-order (an outer phrase before the
phrases inside it, otherwise left to right; start offsets never decrease). A phrase that covers the whole prompt
(ignoring surrounding punctuation) is left out: the guidance always uses the full prompt as its first value set, and
the official code lists it once, first (nps[0]). So `noun_phrases("a red car and a white sheep")` is
`["a red car", "a white sheep"]` and a prompt that is one noun phrase ("a small blue circle") has none. Phrases are
returned as substrings of the original prompt (original casing and spacing); parsing is case-insensitive.

Parsers: "stanza" (constituency parse, the official code's parser; needs stanza and a local English model),
"spacy" (noun chunks grown along prepositional and coordination dependencies; needs spaCy and a local English model),
"builtin" (the rule-based chunker below, no dependencies) and "auto" (stanza, else spaCy, else builtin).

The builtin chunker parses this grammar, words classified by a small lexicon (unknown words are nouns):

    coordination := chain ((","|"and"|"or"|"&"|", and"|", or") chain)*      one NP when it has two or more chains
    chain        := base (preposition chain)?                                 NP "X prep Y", right-attaching
    base         := determiner? number? adjective* noun+                      adjectives may be joined by ","/"and"

so "X prep Y" gives ["X prep Y", "X", "Y"] and "X and Y" gives ["X and Y", "X", "Y"] (each only if more than one
word, and the outer one only if it is not the whole prompt); coordination binds loosest ("a cat on a mat and a dog" is
"a cat on a mat" + "a dog"). Spatial multi-word prepositions ("to the left of", "in front of", "next to", ...) are
prepositions, not NPs: "the left" is not an object, although a literal Penn-treebank parse would list it. Verbs,
pronouns and other punctuation end a phrase; only verbs in the lexicon are known, so "a dog eats a bone" reads
"a dog eats" as a compound noun (use stanza or spaCy for free-form text).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PARSERS = ("auto", "stanza", "spacy", "builtin")


class ParserUnavailableError(ImportError):
    """A parser was asked for by name but its package or local model is not available (nothing is downloaded)."""


# ----------------------------------------------------------------------------------------------------------- lexicon
DETERMINERS = frozenset(
    "a an the this that these those some many several few each every any another my your his her its our their no "
    "all both".split()
)
NUMBERS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty dozen hundred thousand".split()
)
ADJECTIVES = frozenset(
    # colours and shades
    "red green blue yellow orange purple pink white black gray grey brown cyan magenta violet gold golden silver "
    "beige turquoise teal navy maroon crimson scarlet indigo light dark bright pale deep pastel neon colorful "
    "colourful transparent "
    # sizes and shapes of things
    "small large big tiny huge giant little tall short long wide narrow thin thick fat medium round "
    # textures and materials
    "striped dotted solid spotted checkered plaid furry fluffy shiny glossy matte metallic wooden rough smooth soft "
    "hard fuzzy hairy wet dry "
    # other common modifiers and intensifiers
    "old new young beautiful cute happy sad pretty ugly empty full hot cold "
    "very really extremely quite slightly".split()
)
PREPOSITIONS = frozenset(
    "of on in at with without by near under over above below beneath behind beside besides between among inside "
    "outside into onto from across against along around through toward towards underneath atop within to for upon "
    "via".split()
)
# Multi-word prepositions, matched longest first (all lower case, as word tuples).
COMPOUND_PREPOSITIONS = tuple(
    sorted(
        (
            tuple(p.split())
            for p in (
                "to the left of",
                "to the right of",
                "on the left of",
                "on the right of",
                "on the left side of",
                "on the right side of",
                "in front of",
                "in back of",
                "on top of",
                "in the middle of",
                "in the center of",
                "at the top of",
                "at the bottom of",
                "next to",
                "close to",
                "far from",
                "left of",
                "right of",
            )
        ),
        key=len,
        reverse=True,
    )
)
CONJUNCTIONS = frozenset({"and", "or", "&"})
VERBS = frozenset(
    "is are was were be been being am has have had do does did can could will would should may might must "
    "move moves moving moved sit sits sitting stand stands standing run runs running fly flies flying eat eats eating "
    "hold holds holding wear wears wearing ride rides riding play plays playing walk walks walking jump jumps jumping "
    "lie lies lying look looks looking float floats floating swim swims swimming drive drives driving parked made "
    "covered filled sleep sleeps sleeping read reads reading dance dances dancing chase chases chasing carry carries "
    "carrying surrounded grazing hang hangs hanging painted drawn rolling rolls bouncing bounces spinning spins "
    "falling falls".split()
)
OTHER_BREAKS = frozenset(
    "it they he she we i you them him us me which who whom whose where when while there here then not".split()
)
DIRECTIONS = frozenset({"left", "right", "up", "down"})  # adverbs ("moves left") unless a base already began

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


@dataclass
class _Token:
    text: str  # lower case
    start: int
    end: int

    @property
    def is_word(self) -> bool:
        return self.text[0].isalnum()


@dataclass
class _Node:
    start: int  # token indices, [start, end)
    end: int
    children: list[_Node] = field(default_factory=list)

    def preorder(self) -> list[_Node]:
        return [self] + [n for c in self.children for n in c.preorder()]


# ---------------------------------------------------------------------------------------------------- builtin parser
class _Chunker:
    """Recursive-descent parser of the builtin grammar over the prompt's word and punctuation tokens."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.t = [tok.text for tok in tokens]

    def _at(self, i: int) -> str:
        return self.t[i] if i < len(self.t) else ""

    def _is_noun(self, w: str) -> bool:
        if not w or not w[0].isalnum() or w in DIRECTIONS:
            return False
        closed = DETERMINERS | NUMBERS | ADJECTIVES | PREPOSITIONS | CONJUNCTIONS | VERBS | OTHER_BREAKS
        return w not in closed and not w.isdigit()

    def _coordinator(self, i: int) -> int:
        """Length of the coordinator at token i (",", "and", "or", "&", ", and", ", or"), 0 if none."""
        if self._at(i) == ",":
            return 2 if self._at(i + 1) in CONJUNCTIONS else 1
        return 1 if self._at(i) in CONJUNCTIONS else 0

    def _preposition(self, i: int) -> int:
        for words in COMPOUND_PREPOSITIONS:
            if tuple(self.t[i : i + len(words)]) == words:
                return len(words)
        return 1 if self._at(i) in PREPOSITIONS else 0

    def base(self, i: int) -> _Node | None:
        j = i
        if self._at(j) in DETERMINERS:
            j += 1
        if self._at(j) in NUMBERS or self._at(j).isdigit():
            j += 1
        while self._at(j) in ADJECTIVES:
            j += 1
            k = self._coordinator(j)
            if k and self._at(j + k) in ADJECTIVES:  # "a red and white car", "a big, shiny ball"
                j += k
        first_noun = j
        if self._at(j) in DIRECTIONS and j > i:  # "the left", "a left turn": a direction word after a modifier
            j += 1
        while self._is_noun(self._at(j)) and not self._preposition(j):  # "next to" ends "a car next to ..."
            j += 1
        return _Node(i, j) if j > first_noun else None

    def chain(self, i: int) -> _Node | None:
        head = self.base(i)
        if head is None:
            return None
        k = self._preposition(head.end)
        if k and (obj := self.chain(head.end + k)) is not None:
            return _Node(i, obj.end, [head, obj])
        return head

    def coordination(self, i: int) -> _Node | None:
        first = self.chain(i)
        if first is None:
            return None
        items, j = [first], first.end
        while (k := self._coordinator(j)) and (nxt := self.chain(j + k)) is not None:
            items.append(nxt)
            j = nxt.end
        return _Node(i, j, items) if len(items) > 1 else first

    def parse(self) -> list[_Node]:
        roots, i = [], 0
        while i < len(self.t):
            node = self.coordination(i)
            if node is None:
                i += 1
            else:
                roots.append(node)
                i = node.end
        return roots


def _tokens(prompt: str) -> list[_Token]:
    return [_Token(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(prompt)]


def _select(prompt: str, spans: Sequence[tuple[int, int, int]]) -> list[str]:
    """Phrases from (char start, char end, word count) in pre-order: > 1 word, not the whole prompt, no repeats."""
    words = [m for m in _TOKEN.finditer(prompt) if m.group()[0].isalnum()]
    whole = (words[0].start(), words[-1].end()) if words else (0, 0)
    seen: set[tuple[int, int]] = set()
    out = []
    for start, end, n_words in spans:
        if n_words > 1 and (start, end) != whole and (start, end) not in seen:
            seen.add((start, end))
            out.append(prompt[start:end])
    return out


def _builtin(prompt: str) -> list[str]:
    tokens = _tokens(prompt)
    spans = []
    for root in _Chunker(tokens).parse():
        for node in root.preorder():
            n_words = sum(tok.is_word for tok in tokens[node.start : node.end])
            spans.append((tokens[node.start].start, tokens[node.end - 1].end, n_words))
    return _select(prompt, spans)


# ----------------------------------------------------------------------------------------------------- stanza parser
def _tree_spans(tree: Any, word_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(char start, char end, n words) of every NP node of a constituency tree (stanza `.label`/`.children`)."""
    out: list[tuple[int, int, int]] = []

    def visit(node: Any, first: int) -> int:  # returns the number of leaves under node
        if not node.children:
            return 1
        slot = len(out)
        if node.label == "NP":
            out.append((0, 0, 0))  # placeholder: pre-order position, filled once the leaves are counted
        n = 0
        for child in node.children:
            n += visit(child, first + n)
        if node.label == "NP":
            out[slot] = (word_spans[first][0], word_spans[first + n - 1][1], n)
        return n

    visit(tree, 0)
    return out


@functools.lru_cache(maxsize=1)
def _stanza_pipeline() -> Any:
    try:
        import stanza
    except ImportError as e:
        raise ParserUnavailableError(
            "parser='stanza' needs the stanza package (pip install stanza) and its English constituency model "
            "(stanza.download('en', processors='tokenize,pos,constituency')); stanza is not installed"
        ) from e
    try:
        return stanza.Pipeline(lang="en", processors="tokenize,pos,constituency", download_method=None, verbose=False)
    except Exception as e:  # stanza raises several types for a missing resource; unbottle never downloads
        raise ParserUnavailableError(
            "parser='stanza' needs a local English constituency model: run "
            f"stanza.download('en', processors='tokenize,pos,constituency') first ({type(e).__name__}: {e})"
        ) from e


def _stanza(prompt: str) -> list[str]:
    text = prompt.lower() if len(prompt.lower()) == len(prompt) else prompt  # the official code lower-cases
    spans: list[tuple[int, int, int]] = []
    for sentence in _stanza_pipeline()(text).sentences:
        word_spans = [(tok.start_char, tok.end_char) for tok in sentence.tokens]
        spans += _tree_spans(sentence.constituency, word_spans)
    return _select(prompt, spans)


# ------------------------------------------------------------------------------------------------------ spaCy parser
_SPACY_MODELS = ("en_core_web_trf", "en_core_web_lg", "en_core_web_md", "en_core_web_sm")


@functools.lru_cache(maxsize=1)
def _spacy_pipeline() -> Any:
    try:
        import spacy
    except ImportError as e:
        raise ParserUnavailableError(
            "parser='spacy' needs the spaCy package (pip install 'unbottle[parse]') and a local English model "
            "(python -m spacy download en_core_web_sm); spaCy is not installed"
        ) from e
    for name in _SPACY_MODELS:
        try:
            return spacy.load(name)
        except OSError:
            continue
    raise ParserUnavailableError(
        f"parser='spacy' needs a local English spaCy model, one of {', '.join(_SPACY_MODELS)} "
        "(python -m spacy download en_core_web_sm); none is installed"
    )


def _doc_spans(doc: Any) -> list[tuple[int, int, int]]:
    """Builtin-grammar nodes grown on a spaCy parse: noun chunks, + prep/pobj chains, + conj coordinations."""
    chunk_of = {chunk.root.i: chunk for chunk in doc.noun_chunks}
    used: set[int] = set()

    def chain(root: Any) -> tuple[int, int, list] | None:  # (first token, end token, children)
        chunk = chunk_of.get(root.i)
        if chunk is None:
            return None
        used.add(root.i)
        for prep in (c for c in root.children if c.dep_ == "prep" and c.i >= chunk.end):
            pobj = next((c for c in prep.children if c.dep_ == "pobj"), None)
            obj = chain(pobj) if pobj is not None else None
            if obj is not None:
                return (chunk.start, obj[1], [(chunk.start, chunk.end, []), obj])
            break
        return (chunk.start, chunk.end, [])

    def coordination(root: Any) -> tuple[int, int, list] | None:
        first = chain(root)
        if first is None:
            return None
        items, node = [first], root
        while (conj := next((c for c in node.children if c.dep_ == "conj" and c.i > node.i), None)) is not None:
            nxt = chain(conj)
            if nxt is None:
                break
            items.append(nxt)
            node = conj
        return (first[0], items[-1][1], items) if len(items) > 1 else first

    spans: list[tuple[int, int, int]] = []

    def emit(node: tuple[int, int, list]) -> None:
        start, end, children = node
        n_words = sum(not doc[i].is_punct for i in range(start, end))
        spans.append((doc[start].idx, doc[end - 1].idx + len(doc[end - 1].text), n_words))
        for child in children:
            emit(child)

    for chunk in doc.noun_chunks:
        if chunk.root.i not in used and (node := coordination(chunk.root)) is not None:
            emit(node)
    return spans


def _spacy(prompt: str) -> list[str]:
    text = prompt.lower() if len(prompt.lower()) == len(prompt) else prompt
    return _select(prompt, _doc_spans(_spacy_pipeline()(text)))


# ------------------------------------------------------------------------------------------------------------ public
_NAMED: dict[str, Callable[[str], list[str]]] = {"stanza": _stanza, "spacy": _spacy, "builtin": _builtin}


def noun_phrases(prompt: str, parser: str = "auto") -> list[str]:
    """Noun phrases of `prompt` at every nesting level, in pre-order (the NP nodes of Feng et al. 2023, SDG)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not isinstance(parser, str) or parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; expected one of {', '.join(PARSERS)}")
    if parser != "auto":
        return _NAMED[parser](prompt)
    for name in ("stanza", "spacy"):
        try:
            return _NAMED[name](prompt)
        except ParserUnavailableError:
            continue
    return _builtin(prompt)
