"""What this run trains differently from run_mlm_flax.py on the same flags, said in one line.

Users bring run_mlm_flax.py commands unchanged; docs/run_mlm_flax-flags.md audits
every one of its flags. Where the same flags here change the objective, the
data seen, the schedule or the number of steps, and that is a choice rather
than something made the same, the run says so at start: one line naming only
the differences that this run's own flags meet.
"""

FLAG_AUDIT = "docs/run_mlm_flax-flags.md"


def differences(data_config, training_args, *, do_train, do_eval):
    """The differences this run meets, each as a short clause (empty: none)."""
    found = []
    if do_train:
        found += _training_differences(data_config, training_args)
    elif training_args.do_eval:
        found.append("--do_eval without --do_train only evaluates (it trains anyway)")
    if do_eval and _holds_out_validation(data_config):
        share = data_config.validation_split_percentage
        found.append(f"validation is the {share}% of training lines picked by a hash of each "
                     f"line (it takes the first {share}% of the rows)")
    return found


def _training_differences(data_config, training_args):
    found = []
    if training_args.max_grad_norm > 0:
        found.append(f"gradients are clipped to global norm {training_args.max_grad_norm:g} "
                     "(it does not clip; --max_grad_norm 0 turns clipping off)")
    if training_args.optimizer == "adafactor" and training_args.weight_decay > 0:
        found.append(f"adafactor decays weights by {training_args.weight_decay:g} "
                     "(its adafactor ignores weight_decay)")
    epochs = training_args.num_train_epochs
    if training_args.max_steps <= 0 and epochs != int(epochs):
        found.append(f"num_train_epochs {epochs:g} trains {epochs:g} epochs, rounded up to a "
                     f"whole step (it trains int({epochs:g}) = {int(epochs)})")
    found.append(f"each example predicts exactly round({data_config.mlm_probability:g} x its "
                 "tokens), at least 1 (it draws every token with that probability)")
    if not data_config.line_by_line:
        found.append("packed examples are [CLS] + tokens + [SEP], documents joined by [SEP] "
                     "(it joins each text's own [CLS] ... [SEP] and cuts every max_seq_length "
                     "tokens)")
    if data_config.train_ref_file:
        found.append("the reference files' whole words are masked together (it reads no "
                     "reference file)")
    return found


def _holds_out_validation(data_config):
    """Whether validation is held out of training files (not a file, dataset or mixture)."""
    return not (data_config.validation_file or data_config.validation_mixture
                or data_config.train_mixture or data_config.dataset_name)


def announcement(data_config, training_args, *, do_train, do_eval):
    """The start-up line, or None when this run meets no difference."""
    found = differences(data_config, training_args, do_train=do_train, do_eval=do_eval)
    if not found:
        return None
    return f"Unlike run_mlm_flax.py on these flags: {'; '.join(found)} ({FLAG_AUDIT})"
