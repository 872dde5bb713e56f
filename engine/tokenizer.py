"""The model's tokenizer, built with `tokenizers` from a GGUF vocabulary or a tokenizer.json."""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import ModelLoadError

# llama.cpp's pre-tokenizer regexes for the GPT-2 style vocabularies we read from GGUF
# (the names in `tokenizer.ggml.pre`). "smollm" splits digits one by one, then GPT-2's split.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_DIGITS_FIRST = {"smollm", "starcoder", "refact"}
_CONTROL = 3  # gguf token_type for control (special) tokens


class Tokenizer:
    def __init__(self, hf: HFTokenizer, bos_token_id: int | None, eos_token_id: int | None,
                 add_bos: bool = False):
        self.hf, self.bos_token_id, self.eos_token_id, self.add_bos = hf, bos_token_id, eos_token_id, add_bos

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return ([self.bos_token_id] + ids) if self.add_bos and self.bos_token_id is not None else ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    @classmethod
    def from_gguf_fields(cls, fields: dict, where: str) -> "Tokenizer":
        """Build from a GGUF file's `tokenizer.ggml.*` metadata (gpt2-type BPE vocabularies)."""
        kind = fields.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(f"{where}: tokenizer type {kind!r} is not supported (supported: 'gpt2' BPE)")
        tokens = fields.get("tokenizer.ggml.tokens")
        if not tokens:
            raise ModelLoadError(f"{where}: GGUF metadata has no 'tokenizer.ggml.tokens'")
        merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges") or []]
        hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                    ignore_merges=False))
        split = pre_tokenizers.Split(Regex(_GPT2_SPLIT), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        steps = [split, byte_level]
        if fields.get("tokenizer.ggml.pre") in _DIGITS_FIRST:
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
        hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
        hf.decoder = decoders.ByteLevel()
        types = fields.get("tokenizer.ggml.token_type") or []
        hf.add_special_tokens([AddedToken(tokens[i], special=True) for i, t in enumerate(types) if t == _CONTROL])
        return cls(hf, fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id"),
                   add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)))

    @classmethod
    def from_file(cls, path: Path, bos_token_id: int | None, eos_token_id: int | None) -> "Tokenizer":
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for bad JSON
            raise ModelLoadError(f"{path}: not a readable tokenizer.json ({e})") from None
        return cls(hf, bos_token_id, eos_token_id)
