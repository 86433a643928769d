"""The start-up line naming what a run_mlm_flax.py command trains differently here."""

import pytest

from trainer import args as args_lib
from trainer import hf_differences

HF_COMMAND = ["--model_type", "bert", "--tokenizer_name", "tok", "--train_file", "train.txt",
              "--output_dir", "out", "--do_train", "--do_eval", "--max_seq_length", "128"]


def line(*flags):
    """The announcement for HF_COMMAND plus flags, as train.py makes it."""
    _, data_args, training_args = args_lib.parse_args(HF_COMMAND + list(flags))
    data_config = args_lib.data_config(data_args, training_args)
    do_train, do_eval = args_lib.run_modes(training_args)
    return hf_differences.announcement(data_config, training_args, do_train=do_train,
                                       do_eval=do_eval) or ""


CLIPPING = "gradients are clipped to global norm 1 (it does not clip"
EXACT_COUNT = "each example predicts exactly round(0.15 x its tokens), at least 1"
PACKING = "packed examples are [CLS] + tokens + [SEP], documents joined by [SEP]"
HOLD_OUT = "validation is the 5% of training lines picked by a hash of each line"


def test_run_mlm_flax_default_command_names_each_difference_it_meets_in_one_line():
    announced = line()
    assert announced.startswith("Unlike run_mlm_flax.py on these flags: ")
    assert announced.endswith("(docs/run_mlm_flax-flags.md)") and "\n" not in announced
    for clause in (CLIPPING, EXACT_COUNT, PACKING, HOLD_OUT):
        assert clause in announced
    for absent in ("adafactor", "num_train_epochs", "reference", "only evaluates"):
        assert absent not in announced


@pytest.mark.parametrize("flags, clause", [
    (["--adafactor", "--weight_decay", "0.01"],
     "adafactor decays weights by 0.01 (its adafactor ignores weight_decay)"),
    (["--num_train_epochs", "2.5"],
     "num_train_epochs 2.5 trains 2.5 epochs, rounded up to a whole step (it trains int(2.5) "
     "= 2)"),
    (["--train_ref_file", "train.ref"],
     "the reference files' whole words are masked together (it reads no reference file)"),
    (["--do_train", "false"], "--do_eval without --do_train only evaluates (it trains anyway)"),
])
def test_a_flag_that_trains_differently_adds_its_clause(flags, clause):
    assert clause not in line()
    assert clause in line(*flags)


def test_flags_that_make_it_the_same_drop_their_clauses():
    announced = line("--max_grad_norm", "0", "--line_by_line", "--validation_file", "v.txt",
                     "--max_steps", "10", "--num_train_epochs", "2.5")
    assert announced == ("Unlike run_mlm_flax.py on these flags: " + EXACT_COUNT +
                         " (it draws every token with that probability) "
                         "(docs/run_mlm_flax-flags.md)")
    assert line("--do_train", "false", "--validation_file", "v.txt") == (
        "Unlike run_mlm_flax.py on these flags: --do_eval without --do_train only evaluates "
        "(it trains anyway) (docs/run_mlm_flax-flags.md)")


def test_fractional_epochs_train_that_share_of_an_epoch(tokenizer, corpus_file):
    """num_train_epochs 2.5: 2.5 epochs of batches, rounded up (run_mlm_flax.py: 2 epochs)."""
    from trainer import data  # pylint: disable=import-outside-toplevel  (loads TensorFlow)

    def steps(epochs):
        _, data_args, training_args = args_lib.parse_args(
            HF_COMMAND + ["--train_file", str(corpus_file), "--num_train_epochs", epochs,
                          "--per_device_train_batch_size", "8"])
        return data.count_train_steps(args_lib.data_config(data_args, training_args),
                                      tokenizer, training_args, 8)

    one = steps("1")
    assert one > 10 and steps("2.5") == -(-5 * one // 2) and steps("0.01") == 1
