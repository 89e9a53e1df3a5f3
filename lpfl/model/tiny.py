"""Tiny language models built from a config, for fast tests and emulated (slow) devices.

They have real architectures (Llama for causal, BERT for masked LM) and a real word-level
tokenizer whose vocabulary is the most frequent words of the packaged movie-review corpus, so the
whole LP-FL pipeline runs on them unchanged. Weights are random but seeded: every process that
builds ``tiny-llama`` gets bit-identical weights, which lets a server and its clients agree on the
frozen base without shipping it.
"""

from __future__ import annotations

import collections
import functools
import re

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

TINY_MODELS = ("tiny-llama", "tiny-bert")
VOCAB_WORDS = 3000
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Words of the default patterns and verbalizers, guaranteed to be single tokens.
PROMPT_WORDS = ("review", "all", "in", "the", "movie", "was", "it", "great", "terrible",
                "good", "bad", ":", ",", ".", "?", "!")


@functools.cache
def _vocabulary() -> tuple[str, ...]:
    from lpfl.data import load_corpus

    counts: collections.Counter[str] = collections.Counter()
    for example in load_corpus("mr"):
        counts.update(re.findall(r"\w+|[^\w\s]", example.text.lower()))
    frequent = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    words = list(SPECIALS) + list(PROMPT_WORDS)
    seen = set(words)
    for word in frequent:
        if len(words) >= VOCAB_WORDS:
            break
        if word not in seen:
            words.append(word)
            seen.add(word)
    return tuple(words)


def build_tokenizer(masked: bool) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer; the BERT variant wraps inputs in [CLS] ... [SEP]."""
    vocab = {word: i for i, word in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if masked:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]",
        cls_token="[CLS]", sep_token="[SEP]",
    )


def build(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, str]:
    """Build ``tiny-llama`` or ``tiny-bert`` with seeded weights: (model, tokenizer, kind)."""
    masked = name == "tiny-bert"
    tokenizer = build_tokenizer(masked)
    size = len(tokenizer)
    model: PreTrainedModel
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if masked:
            model = BertForMaskedLM(BertConfig(
                vocab_size=size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=256,
                pad_token_id=tokenizer.pad_token_id,
            ))
        elif name == "tiny-llama":
            model = LlamaForCausalLM(LlamaConfig(
                vocab_size=size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
            ))
        else:
            raise ValueError(f"unknown tiny model {name!r}; known: {TINY_MODELS}")
    model.eval()
    return model, tokenizer, "mlm" if masked else "causal"
