"""Hugging Face checkpoint import and export.

Our parameter tree mirrors the PyTorch module names, so a Flax path maps to
a PyTorch name by joining with "." and renaming the leaf (Dense `kernel`
is PyTorch's transposed `weight`; `embedding` and LayerNorm `scale` are
`weight`). Everything layout-specific (prefixes, legacy names, tied
aliases) is normalised on the PyTorch side before matching.
"""

import copy
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from model import bert, configuration
from model.build import build, init_params, param_shapes
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
ARCHITECTURES = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM",
                 "xlm-roberta": "XLMRobertaForMaskedLM"}
_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def torch_names(params):
    """{PyTorch name: (Flax path, leaf)} for every parameter of a tree."""
    names = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [p.key for p in path]
        names[".".join(keys[:-1] + [_LEAF_NAMES[keys[-1]]])] = (tuple(keys), leaf)
    return names


def _swap_layout(path, array):
    """Flax Dense kernels are [in, out], PyTorch Linear weights [out, in]; both ways."""
    return array.T if path[-1] == "kernel" else array


def _prefix(config):
    return "roberta" if bert.is_roberta(config) else "bert"


def _head_prefix(config):
    return "lm_head" if bert.is_roberta(config) else "cls.predictions"


# ---- reading -----------------------------------------------------------------


def _read_safetensors(path):
    with safe_open(path, framework="flax") as f:
        return {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in f.keys()}


def _read_torch_bin(path):
    try:
        import torch
    except ImportError as e:
        raise UserError(f"{path}: reading pytorch_model.bin needs torch; "
                        "convert the checkpoint to safetensors or install torch") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def _read_file(path):
    return _read_safetensors(path) if path.endswith(".safetensors") else _read_torch_bin(path)


def read_state_dict(directory):
    """All tensors of a checkpoint directory as float32 numpy arrays."""
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            break
    else:
        raise UserError(f"{directory}: no weights found; expected one of "
                        f"{', '.join(WEIGHT_FILES)}")
    if not name.endswith(".index.json"):
        return _read_file(path)
    with open(path, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UserError(f"{path}: field 'weight_map' (tensor name -> shard file) is missing")
    state = {}
    for shard in sorted(set(weight_map.values())):
        state.update(_read_file(os.path.join(directory, shard)))
    return state


def normalise_names(state, config):
    """Map the key layouts found in practice onto BertForMaskedLM/RobertaForMaskedLM names.

    Handles a bare BertModel (no prefix), legacy LayerNorm gamma/beta, the
    position_ids buffer, and the head's tied decoder aliases.
    """
    prefix, head = _prefix(config), _head_prefix(config)
    bare = not any(k.startswith(prefix + ".") for k in state)
    out = {}
    for key, value in state.items():
        if key.endswith(".gamma"):
            key = key[:-len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[:-len("beta")] + "bias"
        if bare and key.split(".")[0] in ("embeddings", "encoder", "pooler"):
            key = f"{prefix}.{key}"
        if key.endswith("embeddings.position_ids"):
            continue
        if key == f"{head}.decoder.bias":
            out.setdefault(f"{head}.bias", value)
            continue
        if key == f"{head}.decoder.weight" and config.tie_word_embeddings:
            continue
        out[key] = value
    return out


def load_params(state, expected, source):
    """Fill `expected` ({torch name: (path, abstract leaf)}) from a state dict.

    Returns (flat {path: array}, missing names, unexpected names).
    """
    flat, missing = {}, []
    for name, (path, leaf) in expected.items():
        if name not in state:
            missing.append(name)
            continue
        torch_shape = leaf.shape[::-1] if path[-1] == "kernel" else leaf.shape
        if state[name].shape != torch_shape:
            raise UserError(f"{source}: tensor {name} has shape {state[name].shape}, "
                            f"the model expects {torch_shape}")
        flat[path] = _swap_layout(path, state[name])
    unexpected = sorted(set(state) - set(expected))
    return flat, missing, unexpected


def from_pretrained(path, dtype=jnp.float32, config_overrides=None, seed=0, shapes_only=False):
    """Load a Hugging Face MLM (or bare encoder) checkpoint directory: (module, params).

    Weights missing from the checkpoint (e.g. the MLM head of a bare
    BertModel) are initialised from `seed` and listed in a warning. With
    shapes_only, the weights are not read: params are build.param_shapes.
    """
    path = os.fspath(path)
    config = configuration.apply_overrides(configuration.load_config(path), config_overrides)
    module = build(config, dtype)
    shapes = param_shapes(module)
    if shapes_only:
        return module, shapes
    expected = torch_names(shapes)
    state = normalise_names(read_state_dict(path), config)
    flat, missing, unexpected = load_params(state, expected, path)
    if unexpected:
        logger.warning("%s: unused weights in the checkpoint: %s", path, ", ".join(unexpected))
    if missing:
        logger.warning("%s: weights not in the checkpoint, newly initialised: %s",
                       path, ", ".join(missing))
        fresh = torch_names(init_params(module, seed))
        for name in missing:
            p, leaf = fresh[name]
            flat[p] = leaf
    params = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))
    return module, params


# ---- writing -----------------------------------------------------------------


def save_pretrained(directory, module, params):
    """Write config.json and model.safetensors that transformers' *ForMaskedLM loads.

    The tied decoder weight is omitted, as transformers itself saves it:
    loading re-ties it to the word embeddings.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config = copy.deepcopy(module.config)
    config.architectures = [ARCHITECTURES[config.model_type]]
    tensors = {
        name: np.ascontiguousarray(_swap_layout(p, np.asarray(leaf, dtype=np.float32)))
        for name, (p, leaf) in torch_names(jax.device_get(params)).items()}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(directory)
