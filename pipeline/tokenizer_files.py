"""Loads a model's fast tokenizer from its own files, without `AutoTokenizer`.

`transformers.AutoTokenizer` resolves the tokenizer's class through the
model's configuration classes, and in transformers 5 those import PyTorch
whenever it is installed (measured: +490 MB resident and seconds of start-up,
for nothing a run uses). A fast tokenizer is all in its files: `tokenizer.json`
(the Rust pipeline), `tokenizer_config.json` and `special_tokens_map.json`
(which tokens play which role). So the trainer reads those files itself and
wraps the Rust tokenizer in transformers' `PreTrainedTokenizerFast`, which
imports no PyTorch. A hub name is fetched as those files alone.

Roles a tokenizer's files leave unsaid (old hub repositories such as
bert-base-uncased name no special tokens: their class supplied them) take
the conventional token of BERT (`[MASK]`, ...) or RoBERTa (`<mask>`, ...)
where the vocabulary has it, as that class would.
"""

import json
import os
import shutil

import huggingface_hub
import tokenizers
import transformers

from pipeline.errors import InputError

TOKENIZER_FILE = "tokenizer.json"
_ROLE_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # earlier ones win
# The tokens BERT's and RoBERTa's tokenizer classes give each role, first match wins.
_CONVENTIONAL = {
    "cls_token": ("[CLS]", "<s>"), "sep_token": ("[SEP]", "</s>"), "pad_token": ("[PAD]", "<pad>"),
    "mask_token": ("[MASK]", "<mask>"), "unk_token": ("[UNK]", "<unk>"), "bos_token": ("<s>",),
    "eos_token": ("</s>",)}


def load_tokenizer(name_or_path):
    """The model's fast tokenizer (a directory or a hub name), as PreTrainedTokenizerFast.

    Its `source_dir` is the local directory its files were read from (see save_tokenizer).
    """
    name = str(name_or_path)
    local = os.path.isdir(name)
    directory = name if local else _hub_files(name)
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise InputError(_no_tokenizer(name, _holds(directory) if local else
                                       f"the Hugging Face Hub repository has no {TOKENIZER_FILE}"))
    try:
        backend = tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # the Rust library's own exception type is not exported
        raise InputError(f"{path}: not a tokenizer.json that the tokenizers library reads: "
                         f"{str(error).strip().splitlines()[0]}") from error
    settings = _settings(directory)
    roles = _roles(settings, backend)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path=name, **roles,
        **{key: settings[key] for key in ("model_max_length", "additional_special_tokens")
           if key in settings})
    tokenizer.source_dir = directory
    return tokenizer


def save_tokenizer(tokenizer, directory):
    """Copies the files a tokenizer was loaded from into the local `directory`.

    Not save_pretrained: that would name the generic class it was loaded as
    (TokenizersBackend, which transformers 4 does not have) where the files
    name the tokenizer's own (BertTokenizer, ...).
    """
    for file_name in (TOKENIZER_FILE, *_ROLE_FILES):
        path = os.path.join(tokenizer.source_dir, file_name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(directory, file_name))


def _hub_files(name):
    """The local folder holding a hub tokenizer's files (downloaded, or from the cache)."""
    if not _could_be_hub_name(name):
        raise InputError(_no_tokenizer(name, "the directory does not exist"))
    try:
        return huggingface_hub.snapshot_download(name, allow_patterns=[TOKENIZER_FILE,
                                                                       *_ROLE_FILES])
    except huggingface_hub.utils.LocalEntryNotFoundError as error:
        raise InputError(_no_tokenizer(name, "there is no such directory, and the Hugging Face "
                                             "Hub cannot be reached (no network)")) from error
    except huggingface_hub.utils.RepositoryNotFoundError as error:
        raise InputError(_no_tokenizer(
            name, "there is no such directory, nor such a repository on the Hugging Face Hub"
        )) from error


def _settings(directory):
    """tokenizer_config.json's settings over special_tokens_map.json's (either may be absent)."""
    settings = {}
    for file_name in reversed(_ROLE_FILES):
        path = os.path.join(directory, file_name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    settings.update(json.load(f))
            except json.JSONDecodeError as error:
                raise InputError(
                    f"{path}: line {error.lineno}: invalid JSON ({error.msg})") from error
    return settings


def _roles(settings, backend):
    """{role: token} for each special-token role the tokenizer fills (see the module doc)."""
    vocabulary = backend.get_vocab()
    roles = {}
    for role, conventional in _CONVENTIONAL.items():
        token = settings.get(role)
        if isinstance(token, dict):  # a serialised AddedToken
            token = token.get("content")
        if token is None:
            token = next((t for t in conventional if t in vocabulary), None)
        if token is not None:
            roles[role] = token
    return roles


def _holds(directory):
    files = sorted(os.listdir(directory))
    shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    return f"the directory holds {shown or 'nothing'}"


def _no_tokenizer(name, reason):
    return (f"no tokenizer at {name!r}: expected a directory with {TOKENIZER_FILE} "
            f"(or a hub name); {reason}")


def _could_be_hub_name(name):
    """Whether name may be a hub repository id ('runs/x/tokenizer' and './tok' may not)."""
    try:
        huggingface_hub.utils.validate_repo_id(name)
    except huggingface_hub.utils.HFValidationError:
        return False
    return True
