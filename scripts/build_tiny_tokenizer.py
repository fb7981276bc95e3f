#!/usr/bin/env python
"""Build a tiny, deterministic Llama-3-style byte-level BPE tokenizer for tests.

The tokenizer mimics the structure of the Llama 3.2 tokenizer (same pre-tokenizer regex,
byte-level alphabet, byte-level decoder, ``<|begin_of_text|>`` prepended by the
post-processor, the same special-token names) but has a vocabulary of only 512 learned
tokens plus six special tokens, trained on a small fixed English corpus written below.

Output: ``src/tadastream/assets/tiny_tokenizer/`` containing ``tokenizer.json``,
``tokenizer_config.json`` and ``special_tokens_map.json``.  The result loads with
``transformers.AutoTokenizer.from_pretrained(dir)`` under transformers 4.x and 5.x.

Usage::

    python scripts/build_tiny_tokenizer.py [--out DIR] [--check]

``--check`` rebuilds into a temporary directory and verifies that the files are
byte-identical to the ones in ``--out`` (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 512  # learned vocabulary (256 byte symbols + merges)

# Llama 3 pre-tokenization regex (contractions, letter runs, 1-3 digit groups, punctuation,
# newlines, whitespace).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
SPECIAL_TOKENS = [
    BOS,
    EOS,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]

CORPUS = [
    "The examination and testimony of the experts, enabled the commission to conclude that five "
    "shots may have been fired.",
    "Please call Stella. Ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station.",
    "The quick brown fox jumps over the lazy dog!",
    "How are you doing today? I'm doing well, thank you.",
    "It's 7:30 in the morning; the meeting starts at 9:15 and ends around 11:45.",
    "In 1963, the report ran to 888 pages, with 26 volumes of hearings and exhibits.",
    "Call me at 555-0123 or 555-0199, extension 42.",
    "The price rose from $3.50 to $4.75, an increase of 35.7 percent.",
    "Wait... what did you just say?",
    '"Never," she said, "never again."',
    "Is it raining outside, or is that just the sprinklers?",
    "Hello, world! This is a test of the text-to-speech system.",
    "The commission concluded that the shots were fired from the sixth floor window.",
    "They would've come earlier, but they'd missed the bus and couldn't find a taxi.",
    "You're right: we'll need more time (at least two weeks) to finish the project.",
    "Numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100 and 1000 appear often.",
    "On March 3rd, 2021, about 12,500 people attended the festival.",
    "The weather today is sunny with a high of 72 degrees and a low of 55.",
    "Speech synthesis turns written text into natural sounding audio.",
    "Each token gets exactly one acoustic vector and a duration in frames.",
    "Streaming lets the listener hear the first words before the last ones are generated.",
    "My favourite colours are green, blue and orange; what are yours?",
    "Dr. Smith arrived at 4 p.m. and left before the evening news.",
    "A journey of a thousand miles begins with a single step.",
    "Whether the weather be fine, or whether the weather be not, we'll weather the weather.",
    "Peter Piper picked a peck of pickled peppers.",
    "She sells sea shells by the sea shore - and the shells she sells are surely sea shells.",
    "The experts testified that the rifle could have fired three shots in under six seconds.",
    "Question: can you hear me now? Answer: yes, loud and clear.",
    "First, open the door; second, turn on the light; third, sit down.",
    "Why not? Because I said so!",
    "The library opens at 8 and closes at 20 on weekdays.",
    "Good morning, everyone. Let's begin with a short review of yesterday's lesson.",
    "He whispered, 'don't be afraid', and then he was gone.",
    "Temperatures dropped to -5 overnight, the coldest in 30 years.",
    "Water boils at 100 degrees Celsius, or 212 degrees Fahrenheit.",
    "The assistant answered the user's question politely and precisely.",
    "Line one\nLine two\n\nA new paragraph starts here.",
    "Tabs\tand  double  spaces   should also be handled.",
]


def build(out_dir: Path) -> None:
    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    n_learned = tok.get_vocab_size(with_added_tokens=True)
    if n_learned != VOCAB_SIZE:
        raise RuntimeError(f"trainer produced {n_learned} tokens, expected {VOCAB_SIZE}")
    tok.add_special_tokens(SPECIAL_TOKENS)
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == VOCAB_SIZE + i, name
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
    }
    special_map = {"bos_token": BOS, "eos_token": EOS}
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
        (out_dir / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=repo / "src" / "tadastream" / "assets" / "tiny_tokenizer")
    ap.add_argument("--check", action="store_true", help="verify the files in --out are reproducible")
    args = ap.parse_args(argv)
    if not args.check:
        build(args.out)
        print(f"wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
        _, mismatch, errors = filecmp.cmpfiles(args.out, tmp, names, shallow=False)
        if mismatch or errors:
            print(f"NOT reproducible: differ={mismatch} missing={errors}")
            return 1
    print("tokenizer files are reproducible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
