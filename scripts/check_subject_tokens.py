#!/usr/bin/env python
"""Check the subject token positions against CLIP's real BPE vocabulary, for every prompt of the named sets.

For each prompt the two positions that the attention baselines would strengthen must exist (the prompt's words are
found in its tokens), point at the last token of each subject word, and equal the dataset's ``indices`` where it has
them. CLIP's vocabulary is read from ``bpe_simple_vocab_16e6.txt.gz`` (shipped, for one, in the open_clip package's
wheel), so no model hub is needed:

    python scripts/check_subject_tokens.py --bpe bpe_simple_vocab_16e6.txt.gz t2i-compbench paper-simple paper-complex
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from noise_diffusion.baselines.tokens import subject_token_indices, subject_words, word_list  # noqa: E402
from noise_diffusion.datasets import load_dataset  # noqa: E402
from noise_diffusion.errors import UserError  # noqa: E402
from noise_diffusion.toy.tokenizer import bytes_to_unicode  # noqa: E402


def clip_tokenizer(bpe: Path, folder: Path):
    """CLIP's tokenizer from its BPE merges, laid out as CLIP builds its vocabulary (bytes, bytes</w>, merges)."""
    from transformers import CLIPTokenizer

    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def problems(tokenizer, entry) -> list[str]:
    try:
        positions = subject_token_indices(tokenizer, entry.prompt)
    except UserError as error:
        return [str(error)]
    ids = tokenizer(entry.prompt).input_ids
    words = [word_list(entry.prompt)[i].lower() for i in subject_words(entry.prompt)]
    found = [tokenizer.convert_ids_to_tokens(ids[i]).removesuffix("</w>") for i in positions]
    wrong = [f"{entry.prompt!r}: token {t!r} does not end {w!r}" for w, t in zip(words, found) if not w.endswith(t)]
    if entry.indices and tuple(positions) != entry.indices:
        wrong.append(f"{entry.prompt!r}: positions {positions}, the dataset's indices {list(entry.indices)}")
    return wrong


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="dataset names or files, as for evaluate.py --dataset")
    parser.add_argument("--bpe", type=Path, required=True, help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = clip_tokenizer(args.bpe, Path(folder))
        failed = 0
        for dataset in args.datasets:
            entries = load_dataset(dataset)
            found = [p for entry in entries for p in problems(tokenizer, entry)]
            failed += len(found)
            print(f"{dataset}: {len(entries)} prompts, {len(found)} problems", *found[:5], sep="\n    ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
