"""Warm starts for the mini models: continue from a bundled model after the caption vocabulary grew.

The mini tokenizer is learned from the world's vocabulary, so adding words (artists, association
phrases) gives new token ids. :func:`carry_text_encoder` builds a text encoder for the new tokenizer that
keeps the old encoder's layers and, for every token string both vocabularies share, its embedding row;
tokens new to the vocabulary start from the old embeddings' mean plus a little noise. Old captions then
encode as before, and training only has to learn the new words.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer


def carry_text_encoder(
    old: CLIPTextModel, old_tokenizer: CLIPTokenizer, new: CLIPTextModel, new_tokenizer: CLIPTokenizer
) -> dict[str, int]:
    """Copy ``old``'s weights into ``new`` (same sizes but the vocabulary), remapping token rows by string.

    Returns:
        ``{"kept": tokens carried over, "new": tokens initialised fresh}``.
    """
    old_state = {k: v.float() for k, v in old.state_dict().items()}
    new_state = new.state_dict()
    emb_key = next(k for k in new_state if k.endswith("embeddings.token_embedding.weight"))
    for key, value in old_state.items():
        if key != emb_key and key in new_state and new_state[key].shape == value.shape:
            new_state[key] = value
    old_vocab, new_vocab = old_tokenizer.get_vocab(), new_tokenizer.get_vocab()
    old_emb = old_state[emb_key]
    gen = torch.Generator().manual_seed(0)
    emb = old_emb.mean(0, keepdim=True) + 0.02 * torch.randn(len(new_vocab), old_emb.shape[1], generator=gen)
    kept = 0
    for token, index in new_vocab.items():
        if token in old_vocab and old_vocab[token] < old_emb.shape[0]:
            emb[index] = old_emb[old_vocab[token]]
            kept += 1
    new_state[emb_key] = emb
    new.load_state_dict(new_state)
    return {"kept": kept, "new": len(new_vocab) - kept}
