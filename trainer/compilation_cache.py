"""JAX's persistent compilation cache: a restarted run loads its compiled steps.

After a preemption the new VM compiles the train and eval steps again, which
for a large model on a TPU takes minutes, at every restart. With the cache in
output_dir (a local directory or gs://; JAX reaches gs:// through etils'
epath, that is through TensorFlow's GCS filesystem), the restarted run finds
them there. What JAX does with it (JAX 0.10):

- only process 0 writes entries; every process reads them;
- an executable is stored only when it took at least
  `jax_persistent_cache_min_compile_time_secs` (default 1 s) to compile, and
  is at least `jax_persistent_cache_min_entry_size_bytes` (default 0) long;
  both are JAX flags (environment variables JAX_PERSISTENT_CACHE_...);
- the key hashes the program, the devices, the compile options and the
  jaxlib and backend versions, so an entry written by another version is
  never looked up; an entry that cannot be read is a warning, and the step
  is compiled as if there were none;
- CPU, GPU and TPU backends are supported.
"""

import os
from typing import Optional

import jax
from jax.experimental.compilation_cache import compilation_cache

from trainer import run_dir

DEFAULT_DIR = "compilation_cache"  # under output_dir
_XLA_CACHES = jax.config.jax_persistent_cache_enable_xla_caches  # JAX's choice


def cache_dir(flag: Optional[str], output_dir) -> Optional[str]:
    """The cache directory: --compilation_cache_dir, else JAX_COMPILATION_CACHE_DIR, else
    output_dir/compilation_cache. An empty flag turns the cache off (None)."""
    if flag is None:
        flag = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
            run_dir.absolute(output_dir) / DEFAULT_DIR)
    return str(run_dir.absolute(flag)) if flag else None


def enable(directory: Optional[str]):
    """Points JAX's persistent compilation cache at `directory` (None: no cache) from now on.

    Call it before the steps compile. Within one process the last call wins
    (JAX otherwise keeps the first directory it opened).
    """
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(directory)
    # XLA's own GPU caches (autotuning) go beside it, written by C++ that knows
    # local paths only; for a gs:// cache they would land in a local "gs:" folder.
    remote = directory is not None and "://" in directory
    jax.config.update("jax_persistent_cache_enable_xla_caches",
                      "none" if remote else _XLA_CACHES)
