"""A shared source/target BPE tokenizer for translation models, trained with ``tokenizers``."""

from __future__ import annotations

from collections.abc import Iterable

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def train_shared_bpe(texts: Iterable[str], vocab_size: int):
    """Returns a fast tokenizer (BPE over both languages, Marian conventions: ids 0/1/2 = pad/eos/unk, eos appended).

    It encodes sources and targets alike (``tokenizer(source, text_target=target)``)
    and saves and loads with transformers' save_pretrained / AutoTokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.normalizer = normalizers.NFKC()
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], show_progress=False)
    )
    bpe.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, bpe.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD, eos_token=EOS, unk_token=UNK)
