"""The built-in ``tiny`` model: a small Llama-architecture decoder with a character tokenizer.

``tiny`` is reasonlab's own policy-initialisation stage in miniature: ``scripts/train_tiny.py``
builds a fresh model with :func:`new_tiny_model`, SFTs it on synthetic step-by-step arithmetic traces
(``reasonlab.tasks.arith``) with reasonlab's own SFT loop, and saves the result (under 10 MB) into
``reasonlab/assets/tiny``. Being a normal Hugging Face checkpoint, it runs through the same
transformers backend, trainers and scorers as any other model, in seconds.
"""

from __future__ import annotations

from pathlib import Path

#: Every character the arithmetic task can produce. Keeping the vocabulary this small keeps the
#: embedding matrix tiny and makes each digit its own token (which arithmetic needs).
ALPHABET = list("0123456789+-*/=()., ?:\nQAabcdefghijklmnopqrstuvwxyz")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: one token per character, ids 0-3 special."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + ALPHABET)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split into single characters, keeping every character (spaces and newlines included).
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def new_tiny_model(hidden_size: int = 192, layers: int = 4, heads: int = 6, intermediate: int = 512,
                   max_positions: int = 256, seed: int = 0):
    """A freshly initialised tiny Llama and its tokenizer (about 1.6M parameters by default)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
