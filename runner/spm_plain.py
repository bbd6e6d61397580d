"""Plain-text SentencePiece encoding that can never produce a control token.

llama.cpp's SPM tokenizer merges symbol pairs by looking the joined text up in the whole vocabulary, control
tokens included (llama-vocab.cpp llm_tokenizer_spm::try_add_bigram has no type check). ChatGLM3's `sop` / `eop`
are spelled like ordinary text, so a user typing "]sop" gets the control token 64792 where SentencePiece itself
(tokenizer.model, which has no such piece) gives "s" "op". When that happens the engine re-encodes the text here:
the same greedy highest-score-pair merging (ties: leftmost), over the vocabulary without control tokens, with
byte fallback — what SentencePiece's BPE does with the real piece table.
"""

from __future__ import annotations


def encode(text: str, pieces: dict[str, tuple[int, float]], *, add_space_prefix: bool = True) -> list[int]:
    """pieces: normal-token text -> (id, score), including the "<0xXX>" byte tokens."""
    normalized = text.replace(" ", "\u2581")
    if add_space_prefix:
        normalized = "\u2581" + normalized
    symbols = list(normalized)
    while len(symbols) > 1:
        best, best_score = -1, float("-inf")
        for i in range(len(symbols) - 1):
            entry = pieces.get(symbols[i] + symbols[i + 1])
            if entry is not None and entry[1] > best_score:
                best, best_score = i, entry[1]
        if best < 0:
            break
        symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
    ids: list[int] = []
    for symbol in symbols:
        entry = pieces.get(symbol)
        if entry is not None:
            ids.append(entry[0])
        else:
            ids += [pieces[f"<0x{byte:02X}>"][0] for byte in symbol.encode("utf-8")]
    return ids
