"""Shared fixtures: tiny random models and data files, built offline once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

# The interruption campaign's checks live in the benchmark that also counts them: show their details on failure.
pytest.register_assert_rewrite("benchmarks.faults")

import torch  # noqa: E402

from exporter import load_model, load_tokenizer  # noqa: E402
from tests.helpers import (  # noqa: E402
    make_bert,
    make_causal_lm,
    make_marian,
    make_vit,
    random_images,
    random_sentences,
    write_jsonl,
)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (two threads on a busy machine are many times slower);
    a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def short_triton_exit_timeout():
    """Servers started in this process wait 3 s, not 10, for open connections when stopped: module fixtures' clients
    stay open until collected, and each stop would wait out the timeout (commands run as subprocesses keep 10 s)."""
    import serving.server.process

    previous = serving.server.process.EXIT_TIMEOUT_S
    serving.server.process.EXIT_TIMEOUT_S = 3
    yield
    serving.server.process.EXIT_TIMEOUT_S = previous


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("headprune")


@pytest.fixture(scope="session")
def bert_dir(workdir) -> Path:
    return make_bert(workdir / "bert")


@pytest.fixture(scope="session")
def distilbert_dir(workdir) -> Path:
    return make_bert(workdir / "distilbert", model_type="distilbert")


@pytest.fixture(scope="session")
def deberta_dir(workdir) -> Path:
    return make_bert(workdir / "deberta", model_type="deberta-v2")


@pytest.fixture(scope="session")
def gpt2_dir(workdir) -> Path:
    return make_causal_lm(workdir / "gpt2", model_type="gpt2", steps=150)


@pytest.fixture(scope="session")
def llama_dir(workdir) -> Path:
    return make_causal_lm(workdir / "llama", model_type="llama", steps=150)


@pytest.fixture(scope="session")
def mistral_dir(workdir) -> Path:
    return make_causal_lm(workdir / "mistral", model_type="mistral", steps=150)


@pytest.fixture(scope="session")
def qwen2_dir(workdir) -> Path:
    return make_causal_lm(workdir / "qwen2", model_type="qwen2", steps=150)


@pytest.fixture(scope="session")
def lm_data(workdir) -> Path:
    """Plain text, one passage per line, with a blank line that must be skipped."""
    lines = random_sentences(24, seed=4, low=2, high=12)
    path = workdir / "lm.txt"
    path.write_text("\n".join(lines[:12]) + "\n\n" + "\n".join(lines[12:]) + "\n")
    return path


@pytest.fixture(scope="session")
def vit_dir(workdir) -> Path:
    return make_vit(workdir / "vit")


@pytest.fixture(scope="session")
def image_data(workdir, vit_dir) -> Path:
    """An image folder (one subfolder per label, PNG and JPEG files) labelled by the tiny ViT's own predictions with
    every sixth label flipped, as cls_data is."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    images = random_images(48, seed=5)
    model, processor = ViTForImageClassification.from_pretrained(vit_dir), ViTImageProcessor.from_pretrained(vit_dir)
    with torch.no_grad():
        predicted = model(**processor(images, return_tensors="pt")).logits.argmax(-1).tolist()
    root = workdir / "images"
    for i, (image, label) in enumerate(zip(images, predicted)):
        folder = root / model.config.id2label[(label + (i % 6 == 0)) % 2]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:02d}.{'jpg' if i % 3 == 0 else 'png'}")
    return root


@pytest.fixture(scope="session")
def mpnet_dir(workdir) -> Path:
    return make_bert(workdir / "mpnet", model_type="mpnet")


@pytest.fixture(scope="session")
def marian_dir(workdir) -> Path:
    return make_marian(workdir / "marian")


@pytest.fixture(scope="session")
def cls_data(workdir, bert_dir) -> Path:
    """Sentences labelled by the tiny BERT's own predictions with every sixth label flipped: the model
    separates the data (about 83 % accuracy) and predicts both classes."""
    texts = random_sentences(64, seed=1)
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    with torch.no_grad():
        predicted = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    names = model.config.id2label
    rows = [
        {"text": text, "label": names[(label + (i % 6 == 0)) % 2]}
        for i, (text, label) in enumerate(zip(texts, predicted))
    ]
    return write_jsonl(workdir / "cls.jsonl", rows)


@pytest.fixture(scope="session")
def mt_data(workdir) -> Path:
    rows = [{"source": s, "target": t} for s, t in zip(random_sentences(24, seed=2), random_sentences(24, 3, 2, 6))]
    return write_jsonl(workdir / "mt.jsonl", rows)
