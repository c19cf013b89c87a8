"""Settings of a translation training run (light to import: the CLI reads their defaults without PyTorch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from exporter.errors import HeadpruneError


@dataclass(frozen=True)
class TranslationSettings:
    """Model shape and optimisation of ``train_translation`` (defaults: 7.6M parameters, 40 minutes)."""

    vocab_size: int = 8000
    d_model: int = 256
    layers: int = 3
    heads: int = 8
    ffn: int = 1024
    dropout: float = 0.0
    max_length: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 400
    cooldown: float = 0.2
    label_smoothing: float = 0.1
    batch_tokens: int = 3000
    minutes: float = 40.0
    eval_minutes: float = 5.0
    eval_sentences: int = 300
    seed: int = 0
    source_lang: str = ""  # language codes recorded in the model's config and deployment.json (e.g. en, uk)
    target_lang: str = ""

    # What may change when a run is resumed: how long it goes on and how it is watched.
    RESUMABLE_CHANGES = ("minutes", "eval_minutes", "eval_sentences")

    def __post_init__(self):
        if self.heads < 1 or self.d_model % self.heads:
            raise HeadpruneError(
                f"d_model {self.d_model} does not split into {self.heads} heads",
                "choose `heads` dividing `d_model` (e.g. 8 heads for 256)",
            )
        if (
            min(self.layers, self.ffn, self.vocab_size, self.batch_tokens, self.warmup_steps, self.max_length) < 1
            or self.minutes <= 0
            or self.eval_minutes <= 0
            or not 0 <= self.cooldown < 1
        ):
            raise HeadpruneError(
                "training settings out of range",
                "give positive sizes, steps and minutes, and a cooldown share from 0 up to (not including) 1",
            )

    def fixed(self) -> dict:
        """Returns the settings a resumed run must share with the run it continues."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RESUMABLE_CHANGES}

    def model_config(self, tokenizer):
        """Returns the MarianConfig of these settings for ``tokenizer``'s vocabulary."""
        from transformers import MarianConfig

        return MarianConfig(
            vocab_size=len(tokenizer),
            decoder_vocab_size=len(tokenizer),
            d_model=self.d_model,
            encoder_layers=self.layers,
            decoder_layers=self.layers,
            encoder_attention_heads=self.heads,
            decoder_attention_heads=self.heads,
            encoder_ffn_dim=self.ffn,
            decoder_ffn_dim=self.ffn,
            dropout=self.dropout,
            attention_dropout=0.0,
            activation_dropout=0.0,
            max_position_embeddings=self.max_length + 2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            forced_eos_token_id=None,
            share_encoder_decoder_embeddings=True,
            tie_word_embeddings=True,
            scale_embedding=True,
            architectures=["MarianMTModel"],
            **self.languages(),
        )

    def languages(self) -> dict[str, str]:
        """Returns the language codes given, as the model config records them (source_lang, target_lang)."""
        return {
            key: value for key, value in (("source_lang", self.source_lang), ("target_lang", self.target_lang)) if value
        }
