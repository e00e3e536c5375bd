"""Small pieces every package uses: user-facing errors and the strict dataclass config loader.

It depends on nothing else in the project, so `tokenizer`, `eval` and `results` still stand alone.
"""
