"""`qrun demo`: the whole pipeline offline on tiny self-made models (cli.py), their checkpoints (checkpoints.py), the
tokenizers it makes (tokenizers.py) and the built-in text it makes them from (corpus.py)."""
