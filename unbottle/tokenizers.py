"""Offline tokenizers built in memory from a word list: a word-level CLIP BPE and a word-level fast tokenizer.

The embedded shapes models read these (their vocabularies are the word lists here and in `unbottle.shapes`), and so
do the tiny test pipelines of `unbottle.testing`. Prompts tokenize into meaningful, stable ids (not a stream of
unknown tokens), with no file or network access.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

# The default vocabulary: the words of the shapes world and of common prompts; anything else becomes characters
# (CLIP) or <unk> (word level). The shapes-clip weights are trained on these ids: the list is fixed.
WORDS: tuple[str, ...] = tuple(
    """
    a an the of and or with on in at to from by for is are its this that it one two three four five six
    red green blue yellow orange purple pink white black gray grey brown cyan magenta
    circle circles square squares triangle triangles star stars hexagon hexagons diamond diamonds cross crosses
    ellipse ellipses heart hearts ring rings cube cubes sphere spheres car cars sheep dog dogs cat cats bird birds
    small large big tiny huge striped dotted solid left right above below under over near next beside behind
    moves moving up down top bottom middle center background photo picture image video of painting
    man woman person people tree trees house houses sky sun moon water river mountain field flower flowers
    """.split()
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable unicode map (the standard table, rebuilt here)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    bs = printable[:]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _clip_vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Character vocabulary plus left-to-right merge chains that build each word as one `word</w>` token."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merge = (left, right)
            left = left + right
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(left, len(vocab))
    return vocab, merges


def clip_bpe_tokenizer(model_max_length: int = 77, words: tuple[str, ...] = WORDS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary (< 1,000 ids for `WORDS`) spells every word of `words` as one token."""
    vocab, merges = _clip_vocab_and_merges(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def word_level_tokenizer(
    model_max_length: int = 64,
    *,
    pad: str = "<pad>",
    eos: str | None = "</s>",
    bos: str | None = None,
    unk: str = "<unk>",
    extra_special: tuple[str, ...] = (),
    words: tuple[str, ...] = WORDS,
) -> PreTrainedTokenizerFast:
    """A lower-casing word-level fast tokenizer (T5/UMT5/Llama/Gemma stand-in): `[bos] words [eos]`, pad id 0."""
    specials = [pad, unk] + [t for t in (eos, bos) if t is not None] + list(extra_special)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in list(words) + list(".,!?;:'\"-()"):
        vocab.setdefault(w, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    single = " ".join(t for t in (f"{bos}:0" if bos else None, "$A:0", f"{eos}:0" if eos else None) if t)
    special_ids = [(t, vocab[t]) for t in (bos, eos) if t is not None]
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=special_ids)
    kwargs = {"pad_token": pad, "unk_token": unk, "model_max_length": model_max_length}
    if eos is not None:
        kwargs["eos_token"] = eos
    if bos is not None:
        kwargs["bos_token"] = bos
    if extra_special:
        kwargs["additional_special_tokens"] = list(extra_special)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
