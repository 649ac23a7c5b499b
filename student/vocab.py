"""Whole words in a student's vocabulary: the words `tc vocab` found appended to the WordPiece model of its
tokenizer.json (ids from the base vocabulary's size on), and to vocab.txt when the folder carries one.

HF WordPiece matches greedily, longest first, from the start of each pre-tokenized word: a word in the vocabulary
becomes one id, every other word falls back to word-pieces (a longer word that starts with a listed one, e.g.
"playgrounds" after "playground", now starts with that word's id). The extended tokenizer.json is the file
model2vec, sentence-transformers and WordPieceTokenizer all load, so every export tokenises alike.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer

from teacher_cache.base.errors import UserError


def wordpiece_model(data: dict, where: str = "tokenizer.json") -> dict:
    """The WordPiece model of a parsed tokenizer.json, refused in one line for another model."""
    model = data.get("model") if isinstance(data, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise UserError(f"{where}: a {kind or 'unknown'} tokenizer; whole words are added to WordPiece "
                        "vocabularies (BERT-style teachers) only")
    return model


def base_vocab_size(tokenizer_json: bytes | str) -> int:
    """How many ids the tokenizer has (added tokens included): the first id an appended word takes."""
    text = tokenizer_json.decode() if isinstance(tokenizer_json, bytes) else tokenizer_json
    return Tokenizer.from_str(text).get_vocab_size(with_added_tokens=True)


def extend_tokenizer_json(tokenizer_json: bytes | str, words: list[str]) -> bytes:
    """tokenizer.json with `words` appended to its WordPiece vocabulary, in order (ids base, base + 1, ...).

    Refused in one line when the vocabulary's ids are not 0..n-1 with the added tokens among them (an appended id
    would collide), or when a word is there already (the words were made for another vocabulary).
    """
    data = json.loads(tokenizer_json)
    vocab = wordpiece_model(data)["vocab"]
    base = len(vocab)
    added = [t.get("id") for t in data.get("added_tokens") or []]
    if sorted(vocab.values()) != list(range(base)) or any(not isinstance(i, int) or i >= base for i in added):
        raise UserError("tokenizer.json: its ids are not 0..n-1 with the added tokens among them; whole words "
                        "cannot be appended")
    for offset, word in enumerate(words):
        if word in vocab:
            raise UserError(f"tokenizer.json: {word!r} is in the vocabulary already (id {vocab[word]}); these whole "
                            "words were made for another tokenizer")
        vocab[word] = base + offset
    text = json.dumps(data, ensure_ascii=False)
    tokenizer = Tokenizer.from_str(text)  # what every loader will see: each word one id, in order
    if any(tokenizer.token_to_id(word) != base + i for i, word in enumerate(words)):
        raise UserError("tokenizer.json: the extended vocabulary does not give the appended words their ids")
    return text.encode()


def extend_vocab_txt(vocab_txt: bytes, words: list[str], base: int) -> bytes:
    """vocab.txt (one token a line, line i = id i) with `words` appended; refused unless it lists `base` tokens."""
    lines = vocab_txt.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != base:
        raise UserError(f"vocab.txt: {len(lines)} tokens, tokenizer.json {base}; they are not the same vocabulary")
    return "".join(line + "\n" for line in lines + list(words)).encode()


def extend_tokenizer_files(files: dict[str, bytes], words: list[str]) -> dict[str, bytes]:
    """A student's tokenizer files with `words` appended to the vocabulary (tokenizer.json, and vocab.txt if there)."""
    if not words:
        return dict(files)
    extended = dict(files)
    extended["tokenizer.json"] = extend_tokenizer_json(files["tokenizer.json"], words)
    if "vocab.txt" in files:
        base = len(wordpiece_model(json.loads(files["tokenizer.json"]))["vocab"])
        extended["vocab.txt"] = extend_vocab_txt(files["vocab.txt"], words, base)
    return extended
