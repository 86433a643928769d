"""Optimizers (AdamW, LAMB, Adafactor) with global-norm clipping and a model-agnostic decay mask.

Weight decay applies to weight matrices and embeddings only: a parameter is
decayed when it has at least two dimensions, its name does not contain "bias"
and no module on its path is a normalisation layer. Rank alone already
excludes every bias and LayerNorm scale/offset of an ordinary model whatever
it names them; the name checks cover models whose layers are stacked (scanned),
where a bias or a norm scale gains a leading layer dimension.
"""

import re

import jax
import optax

from pipeline.errors import UserError

NORM_MODULE = re.compile(r"norm|^ln(_|\d|$)", re.IGNORECASE)


def key_name(key):
    """A path entry's name: dict keys, attribute names and sequence indices."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def decays(path, param):
    """Whether one parameter (at a jax.tree_util key path) gets weight decay."""
    names = [key_name(key) for key in path]
    if param.ndim < 2 or (names and "bias" in names[-1].lower()):
        return False
    return not any(NORM_MODULE.search(name) for name in names[:-1])


def weight_decay_mask(params):
    """A pytree of booleans like params: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(training_args, schedule):
    """The optimizer the arguments ask for, clipped to max_grad_norm first (0: no clipping).

    Adafactor adds its decay after the learning rate is applied, so its rate is
    scaled by the schedule here to mean what AdamW's does: lr * weight_decay * w.
    """
    args = training_args
    if args.optimizer == "adamw":
        tx = optax.adamw(schedule, b1=args.adam_beta1, b2=args.adam_beta2, eps=args.adam_epsilon,
                         weight_decay=args.weight_decay, mask=weight_decay_mask)
    elif args.optimizer == "lamb":
        tx = optax.lamb(schedule, b1=args.adam_beta1, b2=args.adam_beta2, eps=args.adam_epsilon,
                        weight_decay=args.weight_decay, mask=weight_decay_mask)
    elif args.optimizer == "adafactor":
        def decay(count):
            return args.weight_decay * schedule(count)
        tx = optax.adafactor(schedule, weight_decay_rate=decay if args.weight_decay > 0 else None,
                             weight_decay_mask=weight_decay_mask)
    else:
        raise UserError(f"optimizer must be adamw, lamb or adafactor, got {args.optimizer!r}")
    if args.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(args.max_grad_norm), tx)
    return tx
