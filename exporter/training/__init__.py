"""Training models headprune then prunes: a Marian translation model and its BPE tokenizer."""
