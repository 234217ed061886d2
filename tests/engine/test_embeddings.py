"""The embedding engine against the references: sentence-transformers for all-MiniLM-L6-v2 (fp32, the same texts in
several languages, some far past the model's 256-token limit), HF transformers for a decoder model's last token."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.embeddings import MODEL, cosines, multilingual_texts, reference
from tide.engine.embeddings import EmbedParams
from tide.engine.encoder.embedder import Embedder
from tide.engine.encoder.engine import EmbeddingEngine
from tide.engine.encoder.packing import PackedBatch
from tide.engine.encoder.pooling import pool
from tide.engine.encoder.task import model_task
from tide.engine.loader import resolve_model
from tide.engine.sampling_params import SamplingParams

NUM_TEXTS = 400


@pytest.fixture(scope="module")
def model_dir():
    return resolve_model(MODEL)


@pytest.fixture(scope="module")
def embedder():
    # A small budget makes many forwards of mixed lengths out of the texts, as a worker's stream does.
    return Embedder(MODEL, dtype="float32", device="cpu", max_num_batched_tokens=4096, max_num_seqs=64)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return multilingual_texts(NUM_TEXTS, seed=21)


@pytest.fixture(scope="module")
def expected(model_dir, texts) -> np.ndarray:
    return reference(model_dir, texts)


def test_vectors_match_sentence_transformers_on_hundreds_of_texts_in_several_languages(embedder, texts, expected):
    lengths = [len(ids) for ids in embedder.engine.tokenizer(texts, verbose=False)["input_ids"]]
    assert sum(n > embedder.engine.max_tokens for n in lengths) >= 20  # truncation is part of what is compared
    vectors = embedder.embed(texts)
    assert vectors.shape == (NUM_TEXTS, 384) and vectors.dtype == np.float32
    assert cosines(vectors, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalised, as the model says


def test_token_ids_embed_as_their_text_does(embedder, texts, expected):
    ids = embedder.engine.tokenizer(texts[:20], truncation=True, max_length=256)["input_ids"]
    assert cosines(embedder.embed(ids), expected[:20]).min() >= 0.9999


def test_the_model_limit_and_pooling_come_from_its_sentence_transformers_files(embedder, model_dir):
    assert model_task(model_dir) == "embed"
    assert embedder.engine.max_tokens == 256 and embedder.engine.dimensions == 384
    assert (embedder.engine.pooling.mode, embedder.engine.pooling.normalize) == ("mean", True)


def _finish(engine: EmbeddingEngine) -> dict:
    done = {}
    while engine.has_unfinished():
        done.update({out.request_id: out for out in engine.step()})
    return done


def test_a_request_of_several_inputs_returns_one_vector_each_in_order(embedder, texts, expected):
    engine = embedder.engine
    engine.add_request("several", texts[:5])
    engine.add_request("one", texts[5])
    done = _finish(engine)
    assert done["several"].embeddings.shape == (5, 384) and done["one"].embeddings.shape == (1, 384)
    assert cosines(done["several"].embeddings, expected[:5]).min() >= 0.9999
    assert len(done["several"].num_tokens) == 5 and max(done["several"].num_tokens) <= 256


def test_without_truncation_an_over_long_input_fails_its_request_naming_its_count_and_the_limit(embedder):
    engine = embedder.engine
    engine.add_request("long", ["short text", "word " * 400], EmbedParams(truncate=False))
    engine.add_request("fine", "short text", EmbedParams(truncate=False))
    done = _finish(engine)
    assert done["long"].finish_reason == "error" and done["long"].error_code == "context_length_exceeded"
    assert "input[1] has 402 tokens" in done["long"].error and "limit of 256" in done["long"].error
    assert done["fine"].error is None and done["fine"].embeddings.shape == (1, 384)


def test_bad_requests_are_refused_with_a_reason(embedder):
    engine = embedder.engine
    with pytest.raises(ValueError, match="not trained for shorter vectors"):
        engine.add_request("d", "text", EmbedParams(dimensions=64))
    with pytest.raises(ValueError, match="more than model"):
        engine.add_request("d", "text", EmbedParams(dimensions=512))
    with pytest.raises(ValueError, match=r"input\[1\] must be .* token ids in \[0, 30522\)"):
        engine.add_request("t", [[101, 102], [101, 10**6]])
    with pytest.raises(ValueError, match="input is empty"):
        engine.add_request("e", [])
    with pytest.raises(ValueError, match="embeds .* cannot generate"):
        engine.add_request("g", "text", SamplingParams())
    assert not engine.has_unfinished()


def test_matryoshka_keeps_the_first_dimensions_renormalised(texts, expected):
    short = Embedder(MODEL, dtype="float32", device="cpu", matryoshka=True).embed(texts[:8], EmbedParams(dimensions=64))
    cut = expected[:8, :64] / np.linalg.norm(expected[:8, :64], axis=1, keepdims=True)
    assert short.shape == (8, 64) and cosines(short, cut).min() >= 0.9999


def test_an_aborted_request_comes_back_without_vectors(embedder, texts):
    engine = embedder.engine
    engine.add_request("gone", texts[:3])
    engine.abort("gone")
    done = _finish(engine)
    assert done["gone"].finish_reason == "abort" and done["gone"].embeddings.shape == (0, 384)


def test_a_decoder_model_embeds_its_last_token_as_transformers_computes_it(tiny_model_dir, texts):
    from transformers import AutoModel

    model_dir = tiny_model_dir("llama")
    embedder = Embedder(str(model_dir), dtype="float32", device="cpu", pooling="last")
    ids = [embedder.engine.tokenizer(t)["input_ids"][:40] for t in texts[:6]]
    vectors = embedder.embed(ids)
    hf = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        last = torch.stack([hf(torch.tensor([row])).last_hidden_state[0, -1] for row in ids]).numpy()
    assert cosines(vectors, last / np.linalg.norm(last, axis=1, keepdims=True)).min() >= 0.9999


@pytest.mark.parametrize("lengths", [[3, 1, 4], [2, 2]])
@pytest.mark.parametrize("mode, reduce", [("mean", lambda t: t.mean(0)), ("max", lambda t: t.amax(0)),
                                          ("cls", lambda t: t[0]), ("last", lambda t: t[-1])])
def test_each_pooling_reduces_each_text_s_own_tokens(mode, reduce, lengths):
    batch = PackedBatch.build([list(range(n)) for n in lengths], torch.device("cpu"))
    hidden = torch.randn(sum(lengths), 8) - 5  # below zero: padding counted as 0 would change the max
    texts = hidden.split(lengths)
    torch.testing.assert_close(pool(hidden, batch, mode), torch.stack([reduce(t) for t in texts]))
