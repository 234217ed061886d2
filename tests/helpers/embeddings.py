"""What the embedding tests share: texts in several languages (some past the model's limit), the
sentence-transformers reference, cosines, and OpenAI embedding batch lines."""
from __future__ import annotations

import random

import numpy as np

MODEL = "all-minilm-l6-v2"
SENTENCES = {
    "en": ["The quarterly report shows revenue grew faster than costs.", "Where is the nearest train station?",
           "Photosynthesis turns light, water and carbon dioxide into sugar."],
    "de": ["Der schnelle braune Fuchs springt über den faulen Hund.", "Wie viel kostet eine Fahrkarte nach Berlin?",
           "Die Sitzung wurde auf nächsten Dienstag verschoben."],
    "fr": ["Le musée ouvre ses portes à neuf heures du matin.", "Pouvez-vous m'aider à trouver mon hôtel ?",
           "La recherche sur le climat avance rapidement cette année."],
    "es": ["El tren sale de la estación a las ocho en punto.", "¿Cuál es la receta tradicional de la paella?",
           "Los estudiantes presentaron su proyecto final ayer."],
    "zh": ["今天的天气非常好，我们去公园散步吧。", "这家餐厅的饺子很有名。", "机器学习正在改变许多行业。"],
    "ja": ["東京は日本の首都で、人口が多い都市です。", "明日の会議は午後三時から始まります。", "桜の季節は春です。"],
    "ru": ["Москва является столицей России.", "Я люблю читать книги по вечерам.", "Поезд опаздывает на десять минут."],
    "ar": ["القاهرة هي عاصمة مصر.", "أحب شرب القهوة في الصباح.", "المكتبة مفتوحة حتى الساعة التاسعة مساءً."],
    "mixed": ["Emoji 🚀 and symbols ∑ ≠ ∞ sit beside ÀÉÎÕÜ accents.", "code: def f(x): return x ** 2  # square",
              "   leading and trailing spaces   "],
}


def multilingual_texts(count: int, seed: int = 0, long_share: float = 0.1) -> list[str]:
    """`count` texts mixing the languages above: one sentence up to dozens, and a `long_share` of them far past a
    256-token limit."""
    rng = random.Random(seed)
    pool = [s for group in SENTENCES.values() for s in group]
    texts = []
    for _ in range(count):
        language = rng.choice(list(SENTENCES))
        sentences = rng.randint(40, 90) if rng.random() < long_share else rng.randint(1, 6)
        texts.append(" ".join(rng.choice(SENTENCES[language] if rng.random() < 0.8 else pool)
                              for _ in range(sentences)))
    return texts


def reference(model_dir, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """sentence-transformers' vectors for `texts` (fp32, CPU)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def embedding_lines(texts: list[str], model: str = MODEL, start: int = 0, **body) -> list[dict]:
    """One `/v1/embeddings` batch line per text, ids `emb-<i>`."""
    return [{"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": model, "input": text, **body}} for i, text in enumerate(texts, start)]
