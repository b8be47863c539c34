"""
Tests for bpe.py (byte-level BPE from tokenizer.json) and chat.py. Run: python -m pytest -q tests/test_bpe.py

Hugging Face `tokenizers` and `transformers` (test-only dependencies) are the oracles. The Llama 3 vocabulary and
the dataset samples live in ../shared (the project's CI has it); tests that need it skip when it is absent.
DeepSeek-LLM's vocabulary is not here, so a small BPE is trained with its published pre-tokenizer instead.
"""
import json
import os
import random
import sys
import unicodedata

import pytest

from support import bpe
from support import chat
import data
from data import instruct

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/
SHARED = os.path.join(HERE, "..", "shared")
LLAMA3 = os.path.join(SHARED, "assets", "llama3-tokenizer.json")
needs_shared = pytest.mark.skipif(not os.path.isfile(LLAMA3), reason="../shared (dataset samples, Llama 3 "
                                  "tokenizer.json) is not beside this checkout; it is in the project's CI")


def shared_texts():
    """Every line of every dataset sample file under ../shared/data, and each tab-separated field of it."""
    texts = []
    for root, _, files in sorted(os.walk(os.path.join(SHARED, "data"))):
        for name in sorted(files):
            if name == "MANIFEST.md":
                continue
            raw = open(os.path.join(root, name), "rb").read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")  # TREC and rotten tomatoes are not UTF-8
            for line in text.split("\n"):
                texts += [line] + (line.split("\t") if "\t" in line else [])
    return texts


def category_samples(category, n=6):
    """n code points of a general category spread over its whole range (so non-BMP ones too)."""
    cps = [cp for lo, hi in bpe.category_ranges((category,)) for cp in range(lo, hi + 1)]
    return "".join(chr(cps[i * (len(cps) - 1) // (n - 1)]) for i in range(n))


def unicode_texts():
    texts = [
        "Hello world!", "", " ", "  leading and trailing  ", "tabs\tand\nnewlines\r\nmixed\n\n\nend",
        "trailing spaces   ", "a\u00a0b\u2028c\u2029d\u3000e\u2003f \u200bg\ufeffh", "\x1c\x1d\x1e\x1f x\x1c y",
        "\x85 NEL \x0b\x0c", " \n \n\n  \r\n\r\n \t\t x", "it's they'll I'M WE'LL he'S you'Re 'd 'VE ’s ’ll x'ſ",
        "1 12 123 1234 12345 123456 1234567 3.14159 1,000,000 ٣٤٥ १२३ 𝟙𝟚𝟛 ⅫⅧ ½¾ ①②",
        "日本語のテキストとカタカナ ー 你好，世界！ 한국어 텍스트", "Россия и Україна", "مرحبا بالعالم", "עברית",
        "नमस्ते दुनिया", "ไทย", "𠀀𠀁𪜀 𐐀𐐨 𝐀𝐁𝐂 𞤀𞤢",
        "emoji 😀👍🏽🇺🇸🇸🇰 ❤️ 👨‍👩‍👧‍👦 🏳️‍🌈 👩🏾‍💻 #️⃣ *️⃣", "e\u0301 a\u0308 \u0915\u093f \u20dd x\u0489",
        "<|eot_id|>", "a<|eot_id|>b", "text <|begin_of_text|> mid-text <|eot_id|>\n<|start_header_id|>user",
        "<|begin_of_text|><|begin_of_text|>", "<|eot_id", "<|reserved_special_token_7|>x",
        "def foo(x):\n    return x ** 2  # comment\n", "<br /><br />HTML &amp; entities", "ABC123def456",
        "\x00\x01\x7f\x80\xff", "sister\xf0city", "x" * 300, "ab" * 200 + " " * 50,
    ]
    for category in ("Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No", "Mn", "Mc", "Me", "Pc", "Sm", "So", "Zs"):
        chars = category_samples(category)
        texts += [chars, " ".join(chars), "a" + "a".join(chars), "1".join(chars) + " x", "'" + "'".join(chars)]
    texts += [" " * n + "x" for n in range(1, 6)] + ["\n" * n + " " * n for n in range(1, 6)]
    texts += ["".join(random.Random(0).choice("aZ 1\n\t'é😀\u3000.,") for _ in range(60)) for _ in range(50)]
    return texts


@pytest.fixture(scope="module")
def llama3():
    tokenizers = pytest.importorskip("tokenizers")
    return bpe.load_tokenizer(LLAMA3), tokenizers.Tokenizer.from_file(LLAMA3)


def hf_ids(hf, texts):
    return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


def first_mismatches(ours, hf, texts):
    return [(t, a, b) for t, a, b in zip(texts, [ours.encode(t) for t in texts], hf_ids(hf, texts)) if a != b][:3]


# -----------------------------------------------------------------------------
# Llama 3

@needs_shared
def test_llama3_matches_hugging_face_on_every_shared_text(llama3):
    ours, hf = llama3
    texts = shared_texts()
    assert len(texts) > 50000
    assert not first_mismatches(ours, hf, texts)
    assert ours.encode("Hello world!") == [9906, 1917, 0]  # assets/README.md


@needs_shared
def test_llama3_matches_hugging_face_on_unicode(llama3):
    ours, hf = llama3
    assert not first_mismatches(ours, hf, unicode_texts())


def known_code_points():
    """Every code point both Unicode versions know: unicodedata (14.0) assigns it (not Cn), which also drops what
    Oniguruma's 16.0 added since; surrogates (Cs) are not text. Private use (Co, 137,468 of them) all behaves alike
    and only every 16th is kept."""
    return [chr(cp) for cp in range(sys.maxunicode + 1)
            if unicodedata.category(chr(cp)) not in ("Cn", "Cs") and (unicodedata.category(chr(cp)) != "Co"
                                                                         or cp % 16 == 0)]


def code_point_texts(chars):
    """Each char after a letter, a space, itself, before a digit, after an apostrophe and before a newline."""
    return ["".join(f"{c}a {c} x{c}{c}1'{c}\n" for c in chars[i:i + 64]) for i in range(0, len(chars), 64)]


@needs_shared
def test_llama3_pre_tokenizes_every_known_code_point_like_hugging_face(llama3):
    ours, hf = llama3
    texts = code_point_texts(known_code_points())
    mismatches = [t for t in texts if ours.pre_tokenize(t) != [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(t)]]
    assert not mismatches, mismatches[:1]


@needs_shared
def test_llama3_encodes_a_dense_sample_of_code_points_like_hugging_face(llama3):
    ours, hf = llama3
    assert not first_mismatches(ours, hf, code_point_texts(known_code_points()[::7]))


@needs_shared
def test_decode_inverts_encode_and_equals_hugging_face(llama3):
    ours, hf = llama3
    texts = unicode_texts() + shared_texts()[::50]
    for text, ids in zip(texts, hf_ids(hf, texts)):
        assert ours.decode(ids) == hf.decode(ids)
        if "<|" not in text:
            assert ours.decode(ids) == text
    rng = random.Random(0)  # arbitrary ids: broken UTF-8 becomes U+FFFD as Rust's from_utf8_lossy does
    for _ in range(300):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randrange(1, 12))]
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)


@needs_shared
def test_llama3_vocabulary_attributes(llama3):
    ours, hf = llama3
    assert ours.vocab_size == hf.get_vocab_size(with_added_tokens=True) == 128256
    assert ours.token_to_id("<|eot_id|>") == hf.token_to_id("<|eot_id|>") == 128009
    assert ours.token_to_id("Hello") == hf.token_to_id("Hello") and ours.token_to_id("no such token") is None
    assert ours.special_ids == set(range(128000, 128256))
    assert ours.bos_id is None and ours.eos_id is None  # no tokenizer_config.json beside the asset
    assert ours.model_file == LLAMA3


def text_of(token):
    return bytes(bpe.CHAR_TO_BYTE[c] for c in token).decode("utf-8", errors="replace")


@needs_shared
def test_ignore_merges_takes_a_vocabulary_word_whole(llama3):
    """Llama 3 sets ignore_merges: a pre-token that is itself in the vocabulary is one token, even where the
    merges would end elsewhere (models/bpe/model.rs tokenize_with_cache). 588 of its tokens merge into several
    without it, all among the ids >= 100000 (e.g. "Ġviá»ĩc" = " việc", 100769); check some with both paths."""
    ours, hf = llama3
    words = [w for w, i in ours.vocab.items() if 100000 <= i < 104000 and ours.pre_tokenize(text_of(w)) == [w]]
    ours.ignore_merges = False
    try:
        split = [w for w in words if len(ours.merge(w)) > 1]
    finally:
        ours.ignore_merges = True
    assert split, "every vocabulary word also merges whole, so ignore_merges is not exercised"
    texts = [text_of(w) for w in split[:20]]
    assert [ours.encode(t) for t in texts] == hf_ids(hf, texts) == [[ours.vocab[w]] for w in split[:20]]


# -----------------------------------------------------------------------------
# DeepSeek-LLM: its published pre-tokenizer, on a BPE trained here

def ranges_class(ranges):
    return "".join(chr(lo) if lo == hi else f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges)


# deepseek-ai/deepseek-llm-7b-base tokenizer.json: the cased letters of its first Split, as code points so that no
# editor normalises U+2126 OHM or U+212A KELVIN (same ranges as llama.cpp llama-vocab.cpp DEEPSEEK_LLM)
DEEPSEEK_LETTERS = ranges_class([
    (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA), (0x1BC, 0x1BF),
    (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377), (0x37B, 0x37D), (0x37F, 0x37F),
    (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481),
    (0x48A, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102),
    (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126),
    (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149),
    (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3),
    (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF),
    (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F),
    (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF),
    (0x1E900, 0x1E943)])
DEEPSEEK_PUNCT = ranges_class([(0x21, 0x2F), (0x3A, 0x7E), (0xFF01, 0xFF0F), (0xFF1A, 0xFF5E), (0x2018, 0x201F),
                               (0x3000, 0x3002)])
DEEPSEEK_CJK = ranges_class([(0x4E00, 0x9FA5), (0x0800, 0x4E00), (0xAC00, 0xD7FF)])


def isolated(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


DEEPSEEK_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    isolated("[\r\n]"), isolated(f"\\s?[{DEEPSEEK_LETTERS}]+"), isolated(f"\\s?[{DEEPSEEK_PUNCT}]+"),
    isolated("\\s+$"), isolated(f"[{DEEPSEEK_CJK}]+"), {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    """A 3,000-token BPE trained on the samples (or the Unicode list) with DeepSeek-LLM's pre-tokenizer, saved as
    a model folder with its tokenizer_config.json (bos/eos and chat template)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    spec = json.loads(tokenizers.Tokenizer(models.BPE()).to_str())
    hf = tokenizers.Tokenizer.from_str(json.dumps({**spec, "pre_tokenizer": DEEPSEEK_PRE_TOKENIZER}))
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[chat.DEEPSEEK_BOS, chat.DEEPSEEK_EOS], show_progress=False)
    corpus = shared_texts() if os.path.isfile(LLAMA3) else unicode_texts() * 20
    hf.train_from_iterator(corpus + unicode_texts(), trainer=trainer)
    hf.add_tokens([AddedToken("<lstrip>", lstrip=True), AddedToken("<rstrip>", rstrip=True, normalized=False),
                   AddedToken("word", single_word=True), AddedToken("<both>", lstrip=True, rstrip=True)])
    folder = tmp_path_factory.mktemp("deepseek")
    hf.save(str(folder / "tokenizer.json"))
    assert json.loads((folder / "tokenizer.json").read_text())["pre_tokenizer"] == DEEPSEEK_PRE_TOKENIZER
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"__type": "AddedToken", "content": chat.DEEPSEEK_BOS}, "eos_token": chat.DEEPSEEK_EOS,
        "chat_template": DEEPSEEK_TEMPLATE}))
    return bpe.load_tokenizer(str(folder)), hf, folder


def test_deepseek_pre_tokenizer_matches_hugging_face(deepseek):
    ours, hf, _ = deepseek
    texts = unicode_texts() + (shared_texts()[::8] if os.path.isfile(LLAMA3) else [])
    assert not first_mismatches(ours, hf, texts)
    for text, ids in zip(texts, hf_ids(hf, texts)):
        assert ours.decode(ids) == hf.decode(ids)


def test_added_token_flags_match_hugging_face(deepseek):
    ours, hf, _ = deepseek
    texts = ["a <lstrip>b", "a   <lstrip>  b", "<lstrip>", "x<rstrip>   y\n z", "<rstrip>\u3000\x1c", "a word b",
             "aword b", "a words", "word", "_word", "word_", "(word)", "é word", "wordé", "\tword\n", "1word",
             "  <both>  <both>  ", "<lstrip><lstrip>", " <rstrip> <lstrip> ", "a\x1c<lstrip>", "a\u2003<lstrip>"]
    assert not first_mismatches(ours, hf, texts)


def test_deepseek_bos_eos_and_special_ids_come_from_the_config(deepseek):
    ours, hf, folder = deepseek
    assert ours.bos_id == hf.token_to_id(chat.DEEPSEEK_BOS) == 0 and ours.eos_id == hf.token_to_id(chat.DEEPSEEK_EOS)
    assert ours.special_ids == {0, 1} and ours.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    assert ours.model_file == str(folder / "tokenizer.json")
    assert bpe.load_tokenizer(str(folder / "tokenizer.json")).bos_id == 0  # the file itself: its folder's config


@pytest.mark.parametrize("behavior", ["removed", "isolated", "merged_with_previous", "merged_with_next",
                                      "contiguous"])
@pytest.mark.parametrize("invert", [False, True])
def test_split_behaviors_and_escapes_match_hugging_face(behavior, invert):
    tokenizers = pytest.importorskip("tokenizers")
    names = {"merged_with_previous": "MergedWithPrevious", "merged_with_next": "MergedWithNext"}
    text = "Hello,, world!! 12 3\n\n x--y \x1c\u3000z 😀😀 ß ſ 'S 'ﬅ"
    for pattern in [r"\s+", r"[,!]", r"\p{N}+", r"\P{L}+", r"\S+", r"[\p{^L}\D]", r"\d", r"[^\s\p{L}]+",
                    r"\s+$", r"^\S", r"(?i:'s|'t)", r"\p{So}|\p{Zs}"]:
        spec = {"type": "Split", "pattern": {"Regex": pattern}, "invert": invert,
                "behavior": names.get(behavior, behavior.capitalize())}
        ours, _ = bpe.pre_tokenizer(spec)
        hf = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior, invert=invert)
        assert ours(text) == [p for p, _ in hf.pre_tokenize_str(text)], pattern


def test_escapes_match_oniguruma_on_every_code_point():
    """\\s, \\d, \\p{..} of the translation against tokenizers' Oniguruma, over all code points both know."""
    tokenizers = pytest.importorskip("tokenizers")
    text = "".join(chr(cp) for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) not in ("Cn", "Cs"))
    for pattern in [r"\s+", r"\S+", r"\d+", r"\p{L}+", r"\p{N}+", r"\p{M}+", r"\p{P}+", r"\p{S}+", r"[^\s\p{L}]+"]:
        ours, _ = bpe.pre_tokenizer({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"})
        hf = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), "isolated")
        assert ours(text) == [p for p, _ in hf.pre_tokenize_str(text)], pattern


def test_gpt2_byte_level_regex_and_prefix_space_match_hugging_face():
    tokenizers = pytest.importorskip("tokenizers")
    spec = {"type": "Sequence", "pretokenizers": [isolated("[\r\n]"), {"type": "ByteLevel", "add_prefix_space": True,
                                                                        "trim_offsets": True, "use_regex": True}]}
    empty = json.loads(tokenizers.Tokenizer(tokenizers.models.BPE()).to_str())
    hf = tokenizers.Tokenizer.from_str(json.dumps({**empty, "pre_tokenizer": spec})).pre_tokenizer
    ours, byte_level = bpe.pre_tokenizer(spec)
    assert byte_level
    for text in unicode_texts():
        assert ours(text) == [p for p, _ in hf.pre_tokenize_str(text)], text


def test_bytes_to_unicode_is_gpt2s_table():
    tokenizers = pytest.importorskip("tokenizers")
    assert set(bpe.BYTE_TO_CHAR.values()) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert bpe.BYTE_TO_CHAR[ord(" ")] == "\u0120" and bpe.BYTE_TO_CHAR[ord("\n")] == "\u010a"
    assert bpe.to_byte_chars("é ") == "\u00c3\u00a9\u0120"


# -----------------------------------------------------------------------------
# errors: one line, naming the file

def tiny_spec(**changes):
    spec = {"version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "vocab": {c: i for i, c in enumerate(bpe.BYTE_TO_CHAR.values())}, "merges": []}}
    return {**spec, **changes}


def unigram_spec():
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.Unigram([("<unk>", 0.0), ("\u2581a", -1.0), ("a", -2.0)], 0))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    hf.decoder = tokenizers.decoders.Metaspace()
    return json.loads(hf.to_str())


BAD = {
    "not json": ("{not json", "not a JSON"),
    "unigram": (unigram_spec, "the model is Unigram"),
    "metaspace bpe": (lambda: tiny_spec(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581"}),
                      "pre-tokenizer Metaspace is not implemented"),
    "unknown pre-tokenizer": (lambda: tiny_spec(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Whitespace"}, {"type": "ByteLevel"}]}), "pre-tokenizer Whitespace"),
    "script class": (lambda: tiny_spec(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        isolated(r"\p{Han}+"), {"type": "ByteLevel"}]}), "\\p{Han} is not implemented"),
    "word boundary": (lambda: tiny_spec(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        isolated(r"\bx"), {"type": "ByteLevel"}]}), "the escape \\b is not implemented"),
    "word class": (lambda: tiny_spec(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        isolated(r"\w+"), {"type": "ByteLevel"}]}), "the escape \\w is not implemented"),
    "normalizer": (lambda: tiny_spec(normalizer={"type": "NFC"}), "normalizer NFC is not implemented"),
    "no byte level": (lambda: tiny_spec(pre_tokenizer=isolated(" ")), "no ByteLevel step"),
    "byte fallback": (lambda: tiny_spec(model={**tiny_spec()["model"], "byte_fallback": True}), "byte_fallback"),
    "decoder": (lambda: tiny_spec(decoder={"type": "Metaspace"}), "decoder Metaspace is not ByteLevel"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tokenizer_json_is_refused_in_one_line_naming_the_file(tmp_path, case):
    content, expected = BAD[case]
    path = tmp_path / "tokenizer.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content()))
    with pytest.raises(bpe.TokenizerError, match="tokenizer") as e:
        bpe.load_tokenizer(str(tmp_path))
    assert expected in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_files_are_refused_in_one_line(tmp_path):
    for path in [tmp_path / "nowhere" / "tokenizer.json", tmp_path]:  # no such file; a folder without one
        with pytest.raises(bpe.TokenizerError) as e:
            bpe.load_tokenizer(str(path))
        assert "no such tokenizer.json" in str(e.value) and str(tmp_path) in str(e.value)
        assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_a_tiny_vocabulary_without_merges_spells_bytes(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(tiny_spec()))
    tok = bpe.load_tokenizer(str(tmp_path))
    assert tok.decode(tok.encode("héllo 😀")) == "héllo 😀" and len(tok.encode("héllo")) == 6


# -----------------------------------------------------------------------------
# chat formats

# meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json chat_template (July 2024), verbatim
LLAMA31_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# deepseek-ai/deepseek-llm-7b-chat tokenizer_config.json chat_template, verbatim
DEEPSEEK_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}")

# HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json chat_template, verbatim (the decoded JSON string: its
# newlines are real newlines, inside jinja string literals); the 360M and 1.7B models have the same one, and the
# GGUF file that ../shared/tools/smollm2.sh converts carries it too (test_real_model.py compares)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen/Qwen2.5-7B-Instruct tokenizer_config.json chat_template (the other Qwen2.5-Instruct sizes share it),
# verbatim as quoted by minja's template tests (two independent copies of it agree; the hub's file itself could not
# be fetched here)
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        "
    "{{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to "
    "assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    "\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    "
    "{%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if "
    "messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
    "Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in "
    "messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + "
    "'\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        "
    "{{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + "
    "message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            "
    "{%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            "
    "{%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            "
    "{{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role "
    "== \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or "
    "(messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n"
    "    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

TEMPLATES = {"llama3": LLAMA31_TEMPLATE, "deepseek": DEEPSEEK_TEMPLATE, "smollm2": SMOLLM2_TEMPLATE,
             "qwen2.5": QWEN25_TEMPLATE}  # every row of chat.FORMATS, by its model's own template

CHAT_TEXTS = [("Is this review positive?", "yes"), ("  padded question \n", "\n answer with spaces  "),
              ("multi\nline\n\nquestion:", "line one\nline two"), ("Ünïcödé 日本語 😀 ’quotes’", "ça va — 好"),
              ("\x1c odd \x1c", "\u3000full width\u3000"), ("", "")]


@pytest.fixture(scope="module")
def hf_chat(tmp_path_factory, deepseek):
    """fmt -> a transformers tokenizer carrying that model's chat template: the Llama 3 vocabulary (a tiny one
    without ../shared: apply_chat_template(tokenize=False) only needs the template and bos/eos), the DeepSeek BPE
    trained above, and the tiny one for the ChatML templates (which write no bos or eos token)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("chat")
    (folder / "tokenizer.json").write_text(json.dumps(tiny_spec()))
    file = LLAMA3 if os.path.isfile(LLAMA3) else str(folder / "tokenizer.json")
    toks = {"llama3": transformers.PreTrainedTokenizerFast(tokenizer_file=file, bos_token="<|begin_of_text|>",
                                                           eos_token="<|eot_id|>"),
            "deepseek": transformers.PreTrainedTokenizerFast(tokenizer_file=str(deepseek[2] / "tokenizer.json"),
                                                             bos_token=chat.DEEPSEEK_BOS, eos_token=chat.DEEPSEEK_EOS),
            **{fmt: transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
               for fmt in ("smollm2", "qwen2.5")}}
    for fmt, tok in toks.items():
        tok.chat_template = TEMPLATES[fmt]
    return toks


def test_every_format_has_its_models_template():
    assert set(TEMPLATES) == set(chat.FORMATS)


@pytest.mark.parametrize("fmt", list(TEMPLATES))
def test_render_equals_apply_chat_template(hf_chat, fmt):
    for user, answer in CHAT_TEXTS:
        for given in (None, answer):
            messages = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": given}] if given
                                                              is not None else [])
            expected = hf_chat[fmt].apply_chat_template(messages, tokenize=False,
                                                        add_generation_prompt=given is None)
            assert chat.render(fmt, user, given) == expected, (user, given)
    assert chat.render(fmt, "q", "a").endswith(chat.answer_end(fmt))


def test_chat_format_is_recognised_from_the_template(tmp_path):
    for fmt, template in TEMPLATES.items():  # each template is its own row's, and no other row's
        assert [name for name, row in chat.FORMATS.items() if all(m in template for m in row.markers)] == [fmt]
        assert chat.chat_format({"chat_template": template}) == fmt
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": DEEPSEEK_TEMPLATE}))
    assert chat.chat_format(str(tmp_path)) == "deepseek"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    for config in [str(tmp_path), str(tmp_path / "missing.json")]:
        with pytest.raises(chat.ChatError) as e:
            chat.chat_format(config)
        assert os.path.basename(config) in str(e.value) and "\n" not in str(e.value)
    # another ChatML model (its own system message) is not taken for one of these
    other_chatml = SMOLLM2_TEMPLATE.replace("named SmolLM, trained by Hugging Face", "named Other")
    message = str(pytest.raises(chat.ChatError, chat.chat_format, {"chat_template": other_chatml}).value)
    assert "an unknown chat_template" in message and "\n" not in message
    assert "Llama-3.1-Instruct, DeepSeek-LLM-Chat, SmolLM2-Instruct and Qwen2.5-Instruct" in message


def test_an_unknown_template_encodes_text_and_refuses_examples(tmp_path):
    """Any tokenizer.json encodes, whatever its chat template; only an example that must become chat text is
    refused, in one line that lists the formats tpv writes."""
    import model_llama
    (tmp_path / "tokenizer.json").write_text(json.dumps(tiny_spec()))
    row = {"sentence": "good", "label": 1}
    for config, refusal in [({"chat_template": "{{ messages }}"}, "an unknown chat_template"),
                            ({}, "no chat_template"), (None, "no tokenizer_config.json")]:
        if config is not None:
            (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        elif (tmp_path / "tokenizer_config.json").exists():
            (tmp_path / "tokenizer_config.json").unlink()
        tokenizer = model_llama.load_tokenizer(str(tmp_path))
        assert tokenizer.chat_format is None and tokenizer.encode("ab") == bpe.Tokenizer(
            str(tmp_path / "tokenizer.json")).encode("ab")
        with pytest.raises(chat.ChatError) as e:
            tokenizer.encode_example(data.get_task("sst2"), row)
        assert refusal in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": SMOLLM2_TEMPLATE}))
    assert model_llama.load_tokenizer(str(tmp_path)).chat_format == "smollm2"


@needs_shared
def test_rendered_chat_text_tokenizes_its_special_tokens(llama3):
    ours, hf = llama3
    text = chat.render("llama3", "Is it good?", "yes")
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ids[0] == 128000 and ids[-1] == ours.token_to_id(chat.answer_end("llama3"))


# -----------------------------------------------------------------------------
# the instruct format (instruct.py): an example's chat prefix and answer tokenize as the whole chat text does

def test_instruct_message_is_the_official_text():
    mnli = data.get_task("mnli")
    assert mnli.instruct({"premise": "A cat.", "hypothesis": "An animal."}) == (
        "Classify the premise and hypothesis pair into labels: entailment, neutral, contradiction. Reply only the "
        "corresponding label.\npremise: A cat.\nhypothesis: An animal.\nlabel: ")
    assert data.get_task("qqp").instruct({"question1": "a", "question2": "b"}).startswith(
        "Classify the question1 and question2 pair into following labels: not duplicate, duplicate.")
    assert data.get_task("qnli").answer({"label": 1}) == "not entailment"
    assert data.get_task("stsb").words[:3] == ("0.0", "0.2", "0.4") and len(data.get_task("stsb").words) == 26
    assert set(data.tasks.INSTRUCT) == set(data.TASKS)  # every task has an instruct format


@pytest.mark.parametrize("fmt", ["llama3", "deepseek"])
def test_prefix_and_answer_tokenize_as_the_whole_chat(fmt, llama3, deepseek):
    tokenizer = (llama3 if fmt == "llama3" else deepseek)[0]
    for name in ("rte", "mnli", "sst2", "stsb"):
        task = data.get_task(name)
        rows = data.read_task(task, os.path.join(SHARED, "data", name), False)[0]["train"][:40]
        for row in rows:
            prefix, answer = instruct.example_ids(tokenizer, fmt, task, row)
            whole = chat.render(fmt, instruct.user_message(fmt, task.instruct(row)), task.answer(row))
            assert prefix + answer == tokenizer.encode(whole), (name, row)
    if fmt == "deepseek":  # official: the rendered DeepSeek text loses "label:"
        assert "label:" not in tokenizer.decode(prefix, skip_special_tokens=False)
    assert tokenizer.decode(answer, skip_special_tokens=False).endswith(chat.answer_end(fmt))


def test_truncation_keeps_the_answer_only_when_asked():
    prefix, answer = list(range(600)), [7, 8]
    cut, kept = instruct.truncate(prefix, answer, "full", tail=5)
    assert cut == prefix[:512] and kept == []  # the official cut: the end goes, answer and all
    cut, kept = instruct.truncate(prefix, answer, "answer", tail=5)
    assert kept == answer and len(cut) + len(kept) == 512 and cut[-5:] == prefix[-5:] and cut[:3] == [0, 1, 2]
    assert instruct.truncate([1, 2], [3], "full", tail=1) == ([1, 2], [3])
