"""Corpus cleaning per BabyLM domain, BPE tokenizer training, tokenize + pack to blocks, and the embedded demo
corpus."""
