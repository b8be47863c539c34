"""
Byte-level BPE tokenizer read from a Hugging Face tokenizer.json, by hand (Llama 3, DeepSeek-LLM, GPT-2 style).

It encodes exactly as the `tokenizers` library (0.22, Rust) does with `encode(text, add_special_tokens=False)`:
added tokens are cut out of the text first, the pre-tokenizer splits the rest into pieces, each piece is mapped
byte by byte to GPT-2's printable characters, and BPE merges each piece (tokenizer/mod.rs encode_single_sequence).

    tok = load_tokenizer("models/Llama-3.1-8B-Instruct")   # a folder holding tokenizer.json, or the file itself
    tok.encode("Hello world!")                              # [9906, 1917, 0]
    tok.decode([9906, 1917, 0])                             # "Hello world!"

Regexes. tokenizers compiles Split patterns with Oniguruma (its default `onig` feature, Ruby syntax; utils/onig.rs).
Python's `re` has no \\p{L}/\\p{N}, so `translate` rewrites every class as explicit ranges built from `unicodedata`
(one scan of all code points, about 0.3 s, once per process). More differences handled there: Oniguruma's \\s is
\\t \\n \\v \\f \\r, NEL and categories Zs/Zl/Zp, while Python's also matches \\x1c-\\x1f; Ruby's ^ and $ match at every
line, as Python's do under re.M; Oniguruma's \\w is the Alphabetic property, which unicodedata lacks, so it is refused.
Unicode versions: Python 3.11's unicodedata is 14.0.0 (`unicodedata.unidata_version`); the tokenizers 0.22.2 wheel
bundles Oniguruma through onig_sys 69.9.1 and knows Unicode 16.0 (U+1C89, new in 16.0, is \\p{L} there; U+10940,
new in 17.0, is not). Code points assigned after 14.0 are letters or numbers to Oniguruma but unassigned to us, so
text using them can split differently; every code point both versions know pre-tokenizes the same (test_bpe.py).
Speed: about 300k tokens/s on the dataset samples (one CPU), the per-word BPE cache included.
"""
import functools
import json
import os
import re
import sys
import unicodedata


class TokenizerError(ValueError):
    """A tokenizer.json or tokenizer_config.json tpv cannot use; the message is one line."""


# -----------------------------------------------------------------------------
# GPT-2's byte <-> printable character table

def bytes_to_unicode():
    """byte -> char: printable Latin-1 bytes stand for themselves, the other 68 move to U+0100.. in byte order
    (openai/gpt-2 encoder.py bytes_to_unicode; tokenizers pre_tokenizers/byte_level.rs bytes_char)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    moved = [b for b in range(256) if b not in bs]
    return {**{b: chr(b) for b in bs}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
LATIN1_TO_CHAR = str.maketrans({chr(b): c for b, c in BYTE_TO_CHAR.items()})


def to_byte_chars(text):
    """UTF-8 bytes of text as GPT-2 characters (latin-1 turns each byte into one char, then one table lookup)."""
    return text.encode("utf-8").decode("latin-1").translate(LATIN1_TO_CHAR)


# -----------------------------------------------------------------------------
# Oniguruma pattern -> Python re

@functools.lru_cache(maxsize=None)
def category_runs():
    """[(first code point, general category)] for each run of equal categories, from one scan of unicodedata."""
    runs, previous = [], None
    for cp in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(cp))
        if category != previous:
            runs.append((cp, category))
            previous = category
    return runs


@functools.lru_cache(maxsize=None)
def category_ranges(categories):
    """(lo, hi) code point ranges whose category starts with one of `categories` ("L", "Nd", ...)."""
    runs = category_runs()
    ends = [start - 1 for start, _ in runs[1:]] + [sys.maxunicode]
    return merge([(lo, hi) for (lo, category), hi in zip(runs, ends) if category.startswith(categories)])


def merge(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def complement(ranges):
    out, next_cp = [], 0
    for lo, hi in ranges:
        if lo > next_cp:
            out.append((next_cp, lo - 1))
        next_cp = hi + 1
    return out + ([(next_cp, sys.maxunicode)] if next_cp <= sys.maxunicode else [])


# Oniguruma's Unicode \s and \d (doc/RE): \s is \t \n \v \f \r, NEL and the Z categories (Python's \s adds
# \x1c-\x1f), \d is Nd. Its \w (so \b too) is Unicode's Alphabetic property, which unicodedata lacks: refused.
SPACE = [(0x09, 0x0D), (0x85, 0x85)]
CLASS_ESCAPES = {"s": lambda: merge(SPACE + category_ranges(("Z",))), "d": lambda: category_ranges(("Nd",))}
GENERAL_CATEGORIES = {"L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
                      "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So",
                      "Z", "Zs", "Zl", "Zp", "C", "Cc", "Cf", "Cs", "Co", "Cn"}
SAME_IN_PYTHON = "nrtfvAxu"  # letter escapes that mean the same in Python's re; other letters are refused
ESCAPE = re.compile(r"\\(?:([pP])\{(\^?)(\w+)\}|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|(.))", re.S)


def escape(pattern, i):
    """The escape at pattern[i] -> (ranges if it is a set else None, its re text, index after it)."""
    m = ESCAPE.match(pattern, i)
    if m is None:
        raise ValueError("a pattern ending in a backslash is not valid")
    p, caret, name, hex2, hex4, char = m.groups()
    if p:
        if name not in GENERAL_CATEGORIES:
            raise ValueError(f"\\{p}{{{name}}} is not implemented (only general categories: L, N, Lu, ...)")
        ranges = category_ranges((name,))
        return (complement(ranges) if (p == "P") != (caret == "^") else ranges), None, m.end()
    if char and char.lower() in CLASS_ESCAPES:
        ranges = CLASS_ESCAPES[char.lower()]()
        return (complement(ranges) if char.isupper() else ranges), None, m.end()
    if char == "z":
        return None, r"\Z", m.end()  # Ruby's \z is Python's \Z; Ruby's \Z (or before a final newline) is refused
    if char and char.isalnum() and char not in SAME_IN_PYTHON:
        raise ValueError(f"the escape \\{char} is not implemented")
    return None, m.group(0), m.end()


def code_point(text):
    """A single-char atom's re text (a literal or an escape) -> its code point."""
    if text[0] != "\\":
        return ord(text)
    if text[1] in "xu":
        return int(text[2:], 16)
    return ord({"n": "\n", "r": "\r", "t": "\t", "f": "\f", "v": "\v"}.get(text[1], text[1]))


def parse_class(pattern, i):
    """The bracket class at pattern[i] == "[" -> (its ranges, index after "]")."""
    i += 1
    negate = pattern.startswith("^", i)
    i += negate
    ranges = []
    while pattern[i] != "]":
        if pattern[i] == "[" or pattern.startswith("&&", i):
            raise ValueError("nested classes and && intersections are not implemented")
        atom, text, i = escape(pattern, i) if pattern[i] == "\\" else (None, pattern[i], i + 1)
        if atom is not None:
            ranges += atom
        elif pattern[i] == "-" and pattern[i + 1] != "]":
            _, hi, i = escape(pattern, i + 1) if pattern[i + 1] == "\\" else (None, pattern[i + 1], i + 2)
            ranges.append((code_point(text), code_point(hi)))
        else:
            ranges.append((code_point(text), code_point(text)))
    ranges = merge(ranges)
    return (complement(ranges) if negate else ranges), i + 1


def class_re(ranges, bmp_only=False):
    """Ranges as re text. Python's re keeps the part of a class above U+FFFF as a list that it scans for every
    char missing from the BMP part, so that part sits behind a lookahead only chars above U+FFFF pass (2x faster
    on such text), or is left out (bmp_only, for text without such chars: a plain class, 9x faster)."""
    def body(rs):
        return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in rs)
    bmp = [(lo, min(hi, 0xFFFF)) for lo, hi in ranges if lo <= 0xFFFF]
    astral = [(max(lo, 0x10000), hi) for lo, hi in ranges if hi > 0xFFFF]
    if bmp_only or not astral:
        return f"[{body(bmp)}]" if bmp else "(?!)"
    if not bmp:
        return f"[{body(astral)}]"
    return f"(?:[{body(bmp)}]|(?=[^\\x00-\\uffff])[{body(astral)}])"


def onig_regex(pattern):
    """pattern -> function piece -> the compiled re to use on it: a faster one for pieces without chars above
    U+FFFF (class_re), which match the same."""
    bmp, full = translate(pattern, True), translate(pattern)
    return lambda piece: bmp if piece.isascii() or max(piece) <= "\uffff" else full


@functools.lru_cache(maxsize=None)
def translate(pattern, bmp_only=False):
    """An Oniguruma (Ruby syntax) pattern -> compiled Python re that matches the same. ValueError names what is
    not implemented (nested classes, \\w, \\b, \\G, scripts, ...); re.error is what Python cannot compile."""
    out, i = [], 0
    try:
        while i < len(pattern):
            if pattern[i] == "[":
                ranges, i = parse_class(pattern, i)
                out.append(class_re(ranges, bmp_only))
            elif pattern[i] == "\\":
                ranges, text, i = escape(pattern, i)
                out.append(text if ranges is None else class_re(ranges, bmp_only))
            else:
                out.append(pattern[i])
                i += 1
    except IndexError:
        raise ValueError("an unterminated [ class is not valid") from None
    return re.compile("".join(out), re.M)  # Ruby syntax: ^ and $ match at every line, as under re.M


# -----------------------------------------------------------------------------
# pre-tokenizers: each is a function piece -> list of pieces

def split_spans(regex_for, piece, invert):
    """(start, end, is_match) covering piece, as tokenizers' Pattern::find_matches (utils/onig.rs);
    Invert flips is_match (tokenizer/pattern.rs)."""
    spans, prev = [], 0
    for m in regex_for(piece).finditer(piece):
        start, end = m.span()
        if prev != start:
            spans.append((prev, start, invert))
        spans.append((start, end, not invert))
        prev = end
    if prev != len(piece):
        spans.append((prev, len(piece), invert))
    return spans


def apply_behavior(spans, behavior):
    """Which spans become pieces, per SplitDelimiterBehavior (tokenizer/normalizer.rs NormalizedString::split)."""
    if behavior == "Isolated":
        return [(s, e) for s, e, _ in spans]
    if behavior == "Removed":
        return [(s, e) for s, e, is_match in spans if not is_match]
    if behavior == "MergedWithNext":  # a delimiter joins the piece after it: run the MergedWithPrevious rule backwards
        flipped = [(-e, -s, m) for s, e, m in reversed(spans)]
        return [(-e, -s) for s, e in reversed(apply_behavior(flipped, "MergedWithPrevious"))]
    out, previous_match = [], False
    for s, e, is_match in spans:
        join = is_match == previous_match if behavior == "Contiguous" else is_match and not previous_match
        if join and out:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
        previous_match = is_match
    return out


def split_pre_tokenizer(regex_for, behavior, invert):
    if behavior not in ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
        raise ValueError(f"Split behavior {behavior} is not implemented")
    return lambda piece: [piece[s:e] for s, e in apply_behavior(split_spans(regex_for, piece, invert), behavior)
                          if e > s]


# ByteLevel's own regex when use_regex is true (pre_tokenizers/byte_level.rs RE, from GPT-2's encoder.py)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def byte_level_pre_tokenizer(add_prefix_space, use_regex):
    """Every piece gets its own prefix space (ByteLevel runs per piece of a Sequence or between added tokens), is
    split by GPT-2's regex if use_regex, then becomes GPT-2 byte characters (byte_level.rs pre_tokenize)."""
    gpt2 = split_pre_tokenizer(onig_regex(GPT2_PATTERN), "Isolated", False) if use_regex else lambda p: [p]

    def pre_tokenize(piece):
        if add_prefix_space and not piece.startswith(" "):
            piece = " " + piece
        return [to_byte_chars(p) for p in gpt2(piece)]
    return pre_tokenize


def pre_tokenizer(spec):
    """tokenizer.json "pre_tokenizer" -> (function piece -> pieces, whether it contains ByteLevel)."""
    kind = spec.get("type")
    if kind == "Sequence":
        steps = [pre_tokenizer(s) for s in spec["pretokenizers"]]

        def sequence(piece):
            pieces = [piece]
            for step, _ in steps:
                pieces = [p for q in pieces for p in step(q)]
            return pieces
        return sequence, any(byte_level for _, byte_level in steps)
    if kind == "Split":
        pattern = spec["pattern"]
        if "Regex" in pattern:
            regex_for = onig_regex(pattern["Regex"])
        else:
            regex = re.compile(re.escape(pattern["String"]))
            regex_for = lambda piece: regex  # noqa: E731
        return split_pre_tokenizer(regex_for, spec["behavior"], spec.get("invert", False)), False
    if kind == "Digits":  # char::is_numeric, each digit alone or runs of them (pre_tokenizers/digits.rs)
        regex_for = onig_regex(r"\p{N}" if spec.get("individual_digits") else r"\p{N}+")
        return split_pre_tokenizer(regex_for, "Isolated", False), False
    if kind == "ByteLevel":
        return byte_level_pre_tokenizer(spec.get("add_prefix_space", True), spec.get("use_regex", True)), True
    raise ValueError(f"pre-tokenizer {kind} is not implemented")


# -----------------------------------------------------------------------------
# added tokens (tokenizer/added_vocabulary.rs)

@functools.lru_cache(maxsize=None)
def word_regexes():
    """added_vocabulary.rs uses the Rust regex crate's \\w (Alphabetic, marks, Nd, Pc, join controls; Alphabetic is
    approximated by L and Nl here) and \\s (White_Space, the same set as Oniguruma's \\s)."""
    word = class_re(merge(category_ranges(("L", "M", "Nd", "Nl", "Pc")) + [(0x200C, 0x200D)]))
    space = class_re(CLASS_ESCAPES["s"]())
    return re.compile(word), re.compile(f"{space}*\\Z"), re.compile(f"{space}*")


def added_matches(text, regex, tokens):
    """[(segment, token id or None)] as AddedVocabulary::find_matches: leftmost-longest matches (the alternation
    is longest first), single_word ones only between non-word chars, lstrip/rstrip swallow nearby whitespace."""
    if regex is None:
        return [(text, None)]
    out, offset = [], 0
    for m in regex.finditer(text):
        start, stop = m.span()
        token = tokens[m.group(0)]
        if token["single_word"] and ((start > 0 and word_regexes()[0].match(text, start - 1)) or
                                     (stop < len(text) and word_regexes()[0].match(text, stop))):
            continue
        if token["lstrip"]:
            start = max(word_regexes()[1].search(text, 0, start).start(), offset)
        if token["rstrip"]:
            stop = word_regexes()[2].match(text, stop).end()
        if offset < start:
            out.append((text[offset:start], None))
        out.append((text[start:stop], token["id"]))
        offset = stop
    if offset < len(text):
        out.append((text[offset:], None))
    return out


def alternation(contents):
    return re.compile("|".join(re.escape(c) for c in sorted(contents, key=len, reverse=True))) if contents else None


# -----------------------------------------------------------------------------
# the tokenizer

class Tokenizer:
    """Byte-level BPE from tokenizer.json: encode/decode equal to Hugging Face `tokenizers`."""

    def __init__(self, model_file, config_file=None):
        self.model_file = model_file
        self.chat_format = None  # model_llama.load_tokenizer names it, from tokenizer_config.json's chat template
        spec = read_json(model_file, "tokenizer.json")
        self.pre_tokenize = check_spec(spec, model_file)
        model = spec["model"]
        self.vocab = model["vocab"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # "a b" or ["a", "b"]
        self.ranks = {m: rank for rank, m in enumerate(merges)}
        bad = next((m for m in merges if m.replace(" ", "", 1) not in self.vocab), None)
        if bad is not None:
            raise TokenizerError(f"{model_file}: merge {bad!r} makes a token missing from the vocabulary; "
                                 f"download the model's tokenizer.json again")
        self.ignore_merges = model.get("ignore_merges", False)
        self.unk_id = self.vocab.get(model["unk_token"]) if model.get("unk_token") else None
        self.fuse_unk = model.get("fuse_unk", False)
        self.added = {t["content"]: t for t in spec.get("added_tokens", [])}
        self.special_ids = {t["id"] for t in self.added.values() if t["special"]}
        self.special_contents = {t["content"] for t in self.added.values() if t["special"]}
        # raw text first for normalized=False tokens, then the rest (extract_and_normalize); no normalizer here
        self.added_raw = alternation([c for c, t in self.added.items() if not t["normalized"]])
        self.added_normalized = alternation([c for c, t in self.added.items() if t["normalized"]])
        self.id_to_token = {i: t for t, i in self.vocab.items()} | {t["id"]: c for c, t in self.added.items()}
        self.vocab_size = len(self.vocab.keys() | self.added.keys())
        self.bpe = functools.lru_cache(maxsize=1 << 16)(self.merge)  # the per-word cache: words repeat
        config = read_json(config_file, "tokenizer_config.json") if config_file else {}
        if not isinstance(config, dict):
            raise TokenizerError(f"{config_file}: not a JSON object of tokenizer settings; download it again")
        self.bos_id = self.config_token_id(config, "bos_token", config_file)
        self.eos_id = self.config_token_id(config, "eos_token", config_file)

    def token_to_id(self, token):
        """Added tokens first, then the BPE vocabulary (AddedVocabulary::token_to_id); None if neither has it."""
        return self.added[token]["id"] if token in self.added else self.vocab.get(token)

    def config_token_id(self, config, key, config_file):
        token = config.get(key)
        if isinstance(token, dict):  # {"__type": "AddedToken", "content": ...}
            token = token.get("content")
        if token is None:
            return None
        if self.token_to_id(token) is None:
            raise TokenizerError(f"{config_file}: {key} {token!r} is not in {self.model_file}; use the "
                                 f"tokenizer_config.json that came with this tokenizer.json")
        return self.token_to_id(token)

    def merge(self, word):
        """BPE of one pre-token (GPT-2 characters) -> ids. GPT-2's loop: merge the lowest-ranked adjacent pair
        everywhere, repeat; tokenizers' priority queue (models/bpe/word.rs merge_all) gives the same result."""
        if self.ignore_merges and word in self.vocab:
            return (self.vocab[word],)  # Llama 3: a pre-token in the vocabulary is one token (bpe/model.rs)
        parts = list(word)
        while len(parts) > 1:
            rank, i = min((self.ranks.get(f"{a} {b}", len(self.ranks)), i)
                          for i, (a, b) in enumerate(zip(parts, parts[1:])))
            if rank == len(self.ranks):
                break
            pair, merged, j = (parts[i], parts[i + 1]), parts[:i], i
            while j < len(parts):
                if j + 1 < len(parts) and (parts[j], parts[j + 1]) == pair:
                    merged.append(parts[j] + parts[j + 1])
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return tuple(self.symbol_ids(parts))

    def symbol_ids(self, parts):
        """A char missing from the vocabulary becomes unk (runs fused if fuse_unk) or is dropped when the model
        has no unk_token, as bpe/model.rs merge_word does; byte-level vocabularies normally hold all 256."""
        previous_unk = False
        for p in parts:
            if p in self.vocab:
                previous_unk = False
                yield self.vocab[p]
            elif self.unk_id is not None and not (self.fuse_unk and previous_unk):
                previous_unk = True
                yield self.unk_id

    def encode(self, text):
        """str -> ids, as tokenizers' `encode(text, add_special_tokens=False).ids`."""
        ids = []
        for segment, token_id in added_matches(text, self.added_raw, self.added):
            if token_id is not None:
                ids.append(token_id)
                continue
            for piece, piece_id in added_matches(segment, self.added_normalized, self.added):
                if piece_id is not None:
                    ids.append(piece_id)
                    continue
                for word in self.pre_tokenize(piece):
                    ids.extend(self.bpe(word))
        return ids

    def decode(self, ids, skip_special_tokens=True):
        """ids -> str as tokenizers' decode: unknown ids vanish, special tokens too if asked; the ByteLevel decoder
        maps each token's chars back to bytes (a token with a char outside the table, an added token such as
        "<|eot_id|>" written in other chars, keeps its UTF-8), then invalid UTF-8 becomes U+FFFD (byte_level.rs)."""
        out = bytearray()
        for i in ids:
            token = self.id_to_token.get(int(i))
            if token is not None and not (skip_special_tokens and token in self.special_contents):
                out += token_bytes(token)
        return out.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1 << 16)
def token_bytes(token):
    if all(c in CHAR_TO_BYTE for c in token):
        return bytes(CHAR_TO_BYTE[c] for c in token)
    return token.encode("utf-8")


def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read {what} ({e.strerror}); download the model again") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not a JSON {what} ({str(e).splitlines()[0]}); download it again") from None


def check_spec(spec, path):
    """Refuse what this module does not implement, with one line saying what; return the pre-tokenizer."""
    def refuse(what):
        raise TokenizerError(f"{path}: {what}; tpv reads byte-level BPE tokenizer.json files (Llama 3, DeepSeek-LLM, "
                             f"GPT-2 style)")
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        refuse("no \"model\" object, so not a tokenizers tokenizer.json")
    model = spec["model"]
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        refuse(f"the model is {model.get('type')}, not BPE (a sentencepiece-style tokenizer?)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            refuse(f"BPE {key}={model[key]!r} is not implemented")
    if model.get("byte_fallback"):
        refuse("BPE byte_fallback is a sentencepiece-style BPE, not byte-level")
    normalizer = spec.get("normalizer")
    if normalizer and normalizer != {"type": "Sequence", "normalizers": []}:
        refuse(f"normalizer {normalizer.get('type')} is not implemented")
    decoder = spec.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        refuse(f"decoder {decoder.get('type')} is not ByteLevel")
    if not spec.get("pre_tokenizer"):
        refuse("there is no pre-tokenizer, so no ByteLevel step")
    try:
        pre_tokenize, byte_level = pre_tokenizer(spec["pre_tokenizer"])
    except KeyError as e:
        refuse(f"a pre-tokenizer entry lacks the key {e}")
    except re.error as e:
        refuse(f"a Split pattern does not compile in Python's re ({e})")
    except ValueError as e:
        refuse(str(e))
    if not byte_level:
        refuse("the pre-tokenizer has no ByteLevel step")
    return pre_tokenize


def load_tokenizer(path, cls=Tokenizer):
    """A model folder holding tokenizer.json (and maybe tokenizer_config.json), or the tokenizer.json itself ->
    cls (Tokenizer, or a subclass of it: model_llama's adds the chat format)."""
    folder, model_file = (path, os.path.join(path, "tokenizer.json")) if os.path.isdir(path) else \
        (os.path.dirname(path), path)
    if not os.path.isfile(model_file):
        raise TokenizerError(f"{model_file}: no such tokenizer.json; download the model's tokenizer files "
                             f"(tokenizer.json, tokenizer_config.json) into {folder or '.'}")
    config_file = os.path.join(folder, "tokenizer_config.json")
    try:
        return cls(model_file, config_file if os.path.isfile(config_file) else None)
    except (KeyError, TypeError, AttributeError) as e:  # JSON of the wrong shape: a missing key, a list for a dict
        raise TokenizerError(f"{model_file}: a malformed tokenizer.json ({type(e).__name__}: {e}); download the "
                             f"model's tokenizer files again") from None
