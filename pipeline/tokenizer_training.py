"""Trains a small BERT WordPiece tokenizer on a text file, saved in Hugging Face format.

The demo and the tests use it instead of downloading a tokenizer: on the
embedded corpus it takes a few seconds.
"""

import argparse

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
import transformers

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(text_files, vocab_size=8000, lowercase=True):
    """Returns a `transformers.BertTokenizerFast` trained on `text_files`."""
    tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train([str(f) for f in text_files], trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return transformers.BertTokenizerFast(
        tokenizer_object=tokenizer, do_lower_case=lowercase,
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, nargs="+", help="Text files to learn from.")
    parser.add_argument("--output", required=True, help="Directory for the tokenizer files.")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--cased", action="store_true", help="Keep letter case.")
    args = parser.parse_args(argv)
    tokenizer = train_wordpiece(args.input, args.vocab_size, lowercase=not args.cased)
    tokenizer.save_pretrained(args.output)
    print(f"saved a {len(tokenizer)}-token WordPiece tokenizer to {args.output}")


if __name__ == "__main__":
    main()
