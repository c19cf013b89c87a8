"""Test helpers: tiny random-weight Hugging Face models with real tokenizers, and data files, built offline."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MarianConfig,
    MarianMTModel,
    MistralConfig,
    MistralForCausalLM,
    MPNetConfig,
    MPNetForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from serving.client import TritonClient

WORDS = (
    "the a movie film great awful good bad fine boring fun plot actor scene story love hate was is very "
    "not really quite long short dull bright dark slow fast el la una pelicula buena mala muy es fue"
).split()


# Weights this wide make a wrong head, row or bias move outputs by about 0.1-1, orders of
# magnitude above the checks' tolerances (HF's default std 0.02 moved them by ~1e-5).
INIT_STD = 0.2
BIAS_STD = 0.5


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gives every linear layer weights of std INIT_STD and every bias (linear and LayerNorm) non-zero values; returns the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, INIT_STD, generator=generator)
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module.bias is not None:
                module.bias.normal_(0, BIAS_STD, generator=generator)
    return model


def random_sentences(count: int, seed: int, low: int = 3, high: int = 9) -> list[str]:
    """Returns ``count`` random sentences over the tiny vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(count)]


def center_decision(model, tokenizer, texts: list[str] | None = None, inputs: dict | None = None) -> None:
    """Shifts a binary classifier's output bias so that about half of ``texts`` (or of the batch ``inputs``) fall on
    each side.

    A random model otherwise predicts one class for nearly everything, and accuracy
    comparisons between deployments would then prove little. The boundary goes into the
    widest gap between margins near the median, so no text sits on a near-tie.
    """
    with torch.no_grad():
        logits = model(**(inputs if inputs is not None else tokenizer(texts, padding=True, return_tensors="pt"))).logits
        margins = sorted(set((logits[:, 1] - logits[:, 0]).tolist()))
        middle = margins[len(margins) // 4 : max(len(margins) * 3 // 4, len(margins) // 4 + 2)]
        low, high = max(zip(middle, middle[1:]), key=lambda pair: pair[1] - pair[0])
        head = getattr(model.classifier, "out_proj", model.classifier)  # RoBERTa-style heads end in out_proj
        head.bias[1] -= (low + high) / 2


def make_bert(
    path: Path, seed: int = 0, layers: int = 3, heads: int = 4, head_size: int = 8, model_type: str = "bert"
) -> Path:
    """Saves a tiny random BERT (or, with ``model_type``, DistilBERT, MPNet or DeBERTa-v2) sequence classifier
    (2 labels) with a WordPiece tokenizer; returns its folder."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    labels = dict(num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    if model_type == "distilbert":
        config = DistilBertConfig(
            vocab_size=len(vocab),
            dim=heads * head_size,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=4 * heads * head_size,
            max_position_embeddings=64,
            dropout=0.1,
            attention_dropout=0.1,
            **labels,
        )
        model = DistilBertForSequenceClassification(config)
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    elif model_type == "mpnet":
        config = MPNetConfig(
            vocab_size=len(vocab),
            hidden_size=heads * head_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * heads * head_size,
            max_position_embeddings=64,
            pad_token_id=0,
            **labels,
        )
        model = MPNetForSequenceClassification(config)
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    elif model_type == "deberta-v2":
        # Relative attention with its own positional projections, the per-head parts a wrong prune would break.
        config = DebertaV2Config(
            vocab_size=len(vocab),
            hidden_size=heads * head_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * heads * head_size,
            max_position_embeddings=64,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=16,
            type_vocab_size=0,
            pad_token_id=0,
            **labels,
        )
        model = DebertaV2ForSequenceClassification(config)
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    else:
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=heads * head_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * heads * head_size,
            max_position_embeddings=64,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            **labels,
        )
        model = BertForSequenceClassification(config)
    model = randomize(model.eval(), seed)
    center_decision(model, tokenizer, random_sentences(200, seed=seed + 100))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def word_tokenizer(eos_template: bool = False) -> PreTrainedTokenizerFast:
    """Returns a word-level tokenizer over WORDS (ids 0-2: <pad>, </s>, <unk>); with ``eos_template`` every
    text ends with </s>, as Marian's do."""
    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos_template:
        core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def make_causal_lm(
    path: Path,
    model_type: str = "gpt2",
    seed: int = 0,
    layers: int = 3,
    heads: int = 4,
    key_value_heads: int = 2,
    head_size: int = 8,
    steps: int = 0,
) -> Path:
    """Saves a tiny random causal language model (GPT-2, Llama with ``key_value_heads`` grouped-query heads and
    Q/K/V biases, Mistral with them and a sliding window, or Qwen2 with sliding layers after a full one) with a word-level tokenizer that has no padding token, as GPT-2's and Llama's have none, trained
    for ``steps`` steps on successor chains; returns its folder."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer()
    tokenizer.pad_token = None
    torch.manual_seed(seed)
    width = heads * head_size
    if model_type == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=1,
        )
        model = GPT2LMHeadModel(config)
    elif model_type == "mistral":  # a sliding window of 4 positions, shorter than most prompts
        config = MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=key_value_heads,
            intermediate_size=2 * width,
            max_position_embeddings=64,
            sliding_window=4,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=None,
        )
        model = MistralForCausalLM(config)
    elif model_type == "qwen2":  # sliding-window layers (window 4) after a full-attention first layer
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=key_value_heads,
            intermediate_size=2 * width,
            max_position_embeddings=64,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=None,
        )
        model = Qwen2ForCausalLM(config)
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=key_value_heads,
            intermediate_size=2 * width,
            max_position_embeddings=64,
            attention_bias=True,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=None,
        )
        model = LlamaForCausalLM(config)
    model = randomize(model.eval(), seed)
    if steps:
        train_successor_chains(model, tokenizer, steps, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def successor_chains(count: int, seed: int) -> list[list[int]]:
    """Returns ``count`` token-id sentences of 3 to 9 words in which each word's successor is fixed (a seeded cycle
    through the vocabulary's words), each ending with </s> (id 1)."""
    words = list(range(3, 3 + len(WORDS)))
    cycle = random.Random(99).sample(words, len(words))
    successor = {a: b for a, b in zip(cycle, cycle[1:] + cycle[:1])}
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        word, sentence = rng.choice(words), []
        for _ in range(rng.randint(3, 9)):
            sentence.append(word)
            word = successor[word]
        sentences.append(sentence + [1])
    return sentences


def train_successor_chains(model, tokenizer, steps: int, seed: int) -> None:
    """Trains a causal language model for seconds on successor_chains, so that its greedy continuations depend on
    the prompt, with clear margins, and end (random ones repeat one token or end at once)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        rows = successor_chains(32, seed=1000 * seed + step)
        width = max(map(len, rows))
        ids = torch.tensor([row + [1] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def random_images(count: int, seed: int) -> list:
    """Returns ``count`` RGB images of different sizes: smooth colour gradients plus noise, so resizing matters."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        height, width = rng.integers(12, 40, size=2)
        ys, xs = np.mgrid[0:height, 0:width]
        base = rng.uniform(0, 255, size=3) + rng.uniform(-4, 4, size=3) * (xs + ys)[..., None]
        pixels = np.clip(base + rng.normal(0, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def make_vit(
    path: Path,
    seed: int = 0,
    layers: int = 3,
    heads: int = 4,
    head_size: int = 8,
    image_size: int = 16,
    patch_size: int = 4,
) -> Path:
    """Saves a tiny random ViT image classifier (2 labels) with its image processor (resize to image_size, rescale,
    normalize); returns its folder."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = dict(num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    config = ViTConfig(
        hidden_size=heads * head_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * heads * head_size,
        image_size=image_size,
        patch_size=patch_size,
        **labels,
    )
    model = randomize(ViTForImageClassification(config).eval(), seed)
    processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]
    )
    center_decision(model, None, inputs=processor(random_images(100, seed + 100), return_tensors="pt"))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_marian(path: Path, seed: int = 0, layers: int = 2, heads: int = 4, d_model: int = 32) -> Path:
    """Saves a tiny random Marian translation model with a word-level tokenizer; returns its folder."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(eos_template=True)
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=1,
    )
    model = randomize(MarianMTModel(config).eval(), seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Writes rows as JSONL; returns the path."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_trained_marian(path: Path, seed: int = 0, layers: int = 2, steps: int = 200) -> Path:
    """Saves a tiny Marian trained for seconds to reverse its input; returns its folder.

    Random post-norm decoders generate one token over and over; this one's greedy
    outputs depend on the source and end (EOS) at different lengths, so generation
    checks compare real sequences. Biases stay non-zero from ``randomize``."""
    make_marian(path, seed=seed, layers=layers)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    model = MarianMTModel.from_pretrained(path)
    train_to_reverse(model, tokenizer, seed, steps)
    model.save_pretrained(path)
    return path


def train_to_reverse(model, tokenizer, seed: int, steps: int) -> None:
    """Trains a translation ``model`` in place, for ``steps`` batches of random sentences, to reverse its input;
    leaves it in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        sources = random_sentences(32, seed=1000 * seed + step)
        batch = tokenizer(
            sources, text_target=[" ".join(s.split()[::-1]) for s in sources], padding=True, return_tensors="pt"
        )
        batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def call_together(send: Callable[[int], object], count: int) -> list:
    """Calls ``send(0..count-1)`` from one thread each, released together; returns each result, or the
    exception it raised (requests sent at once so that Triton's dynamic batcher can group them)."""
    results: list = [None] * count
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = send(index)
        except Exception as error:  # the caller checks which requests failed, and how
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def random_plan(draw, inventory) -> dict:
    """Returns a plan drawn by hypothesis's ``draw``: any heads of any layer, often a whole layer."""
    plan = {}
    for layer in inventory.layers:
        heads = draw(st.lists(st.integers(0, layer.original_heads - 1), max_size=layer.original_heads, unique=True))
        if draw(st.booleans()) and draw(st.booleans()):
            heads = list(range(layer.original_heads))  # a zero-head layer, often enough to matter
        if heads:
            plan.setdefault(layer.attention_type.name, {})[layer.index] = sorted(heads)
    return plan


def client_for(served: dict, protocol: str) -> TritonClient:
    """Returns a client of the Triton server in ``served["server"]`` (a module fixture) over ``protocol``."""
    return TritonClient(served["server"].url(protocol), protocol)


def optimize_result(total: float = 2.9, latency: float = 2.45, gain_low: float = -0.9) -> dict:
    """Returns an optimize.json as `headprune optimize` writes it, for a 50 %-pruned, distilled INT8 choice whose
    throughput at batch 16 is ``total`` times the unpruned model's and p50 at batch 1 ``latency`` times lower."""
    from serving.benchmark.latency import Speedup
    from serving.optimize.search import Candidate

    def speed(ratio: float) -> dict:
        return Speedup(ratio, ratio * 0.95, ratio * 1.05, 10, 10, 80, 80).to_dict()

    def quality(value: float, low: float) -> dict:
        return {
            "metric": "accuracy",
            "value": value,
            "baseline_value": 0.869,
            "examples": 1000,
            "gain": 100 * (value - 0.869),
            "gain_low": low,
            "gain_high": low + 2.6,
            "p_value": 0.5,
        }

    steps = [
        (Candidate(0.5), 1.28, 1.28, 0.862),
        (Candidate(0.5, True), 1.02, 1.30, 0.871),
        (Candidate(0.5, True, "int8"), total / 1.30, total, 0.873),
    ]
    rows = [
        {
            "step": c.to_dict(),
            "share": speed(share),
            "throughput": speed(cumulative),
            "p50_b1": speed(latency if c.precision == "int8" else 1.2),
            "quality": quality(value, gain_low),
        }
        for c, share, cumulative, value in steps
    ]
    trial = {
        "record": "trial",
        "candidate": steps[-1][0].to_dict(),
        "quality": quality(0.876, -0.5),
        "eligible": True,
        "speedup": speed(2.49),
        "seconds": 207.0,
    }
    return {
        "settings": {
            "max_drop": 1.0,
            "objective": "throughput",
            "batch_size": 16,
            "search_trials": 3,
            "budget_minutes": 30.0,
            "repo": "outputs/bench/optimize-repo",
            "seq_len": 128,
        },
        "task": "classification",
        "environment": {
            "machine": {"cpu_model": "AMD EPYC", "cpus": 2, "int8_instructions": ["avx2"], "platform": "Linux"}
        },
        "levers_not_applicable": {},
        "search": {"trials": [trial], "stopped_by_budget": False, "masked_quality": {"0.5": 0.849}},
        "chosen": steps[-1][0].to_dict(),
        "proof": {
            "steps": rows,
            "batch_size": 16,
            "trials": 10,
            "baseline_quality": {"metric": "accuracy", "value": 0.869, "examples": 1000},
        },
        "installed": {"chosen": "minilm_best", "unpruned": "minilm_best_unpruned"},
    }
