"""The end of a run: the model and tokenizer in Hugging Face's format, the eval results, samples.

Only process 0 writes; a gs:// output_dir gets local files copied there
(run_dir.local_files), since transformers writes local paths only.
"""

import json
import os

import numpy as np

import model
from pipeline import sources, tokenizer_files
from trainer import console, run_dir


def write_outputs(output_dir, eval_results, trained=None):
    """Writes eval_results.json (if any) and, for `trained` (module, params, tokenizer), the model.

    Reports the export on the console.
    """
    with run_dir.local_files(output_dir) as directory:
        if eval_results:
            with open(os.path.join(directory, "eval_results.json"), "w") as f:
                json.dump(eval_results, f, indent=2)
        if trained:
            module, params, tokenizer = trained
            model.save_pretrained(directory, module, params)
            tokenizer_files.save_tokenizer(tokenizer, directory)
    if trained:
        console.show(f"Exported the model and tokenizer (Hugging Face format) to {output_dir}")


def held_out_sentences(data_config, count, min_words=8, max_words=30):
    """The first `count` validation lines of a readable length (validation is never trained on)."""
    chosen = []
    for batch in sources.line_batches(data_config, "validation"):
        for line in batch["text"].numpy():
            text = line.decode("utf-8", "replace").strip()
            if min_words <= len(text.split()) <= max_words:
                chosen.append(text)
                if len(chosen) == count:
                    return chosen
    return chosen


def show_fill_mask(module, params, tokenizer, data_config, count, top_k=3):
    """Shows the model's guesses for one hidden word in each of a few held-out sentences."""
    console.show("Fill-mask predictions on held-out sentences:")
    for text in held_out_sentences(data_config, count):
        encoded = tokenizer(text, truncation=True, max_length=data_config.max_seq_length)
        ids = np.array(encoded["input_ids"])
        words = [i for i in range(1, len(ids) - 1)
                 if tokenizer.convert_ids_to_tokens(int(ids[i])).isalpha()
                 and not tokenizer.convert_ids_to_tokens(int(ids[i + 1])).startswith("##")]
        if not words:
            continue
        position = words[len(words) // 2]
        answer = tokenizer.convert_ids_to_tokens(int(ids[position]))
        ids[position] = tokenizer.mask_token_id
        logits = module.apply({"params": params}, ids[None], np.ones_like(ids)[None],
                              masked_positions=np.array([[position]]))
        guesses = tokenizer.convert_ids_to_tokens(
            np.argsort(-np.asarray(logits[0, 0]))[:top_k].tolist())
        console.show(f"  {tokenizer.decode(ids[1:-1])}\n    answer: {answer}; "
                     f"model: {', '.join(guesses)}")
