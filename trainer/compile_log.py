"""What XLA compiled during a run, and what the persistent compilation cache served instead.

A restarted run should load its train and eval steps from the compilation
cache, not compile them again (minutes for a large model on a TPU). The
start of a run is dominated by fixed costs (imports, the tokenizer), so the
whole start says little about it; JAX's own monitoring events say it exactly:
each backend compile reports its duration, and inside it the persistent
cache reports a hit or a miss first.
"""

import dataclasses
import threading

import jax

_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class Compiled:
    name: str  # JAX's name of the function, e.g. jit(train_step)
    seconds: float
    from_cache: bool  # loaded from the persistent compilation cache, not compiled


class CompileLog:
    """Records each program XLA compiles (or loads) while open; a context manager."""

    def __init__(self):
        self.programs: list[Compiled] = []
        self._hit = threading.local()  # a cache hit seen inside this thread's compile

    def __enter__(self):
        jax.monitoring.register_event_listener(self._on_event)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc_info):
        jax.monitoring.unregister_event_listener(self._on_event)
        jax.monitoring.unregister_event_duration_listener(self._on_duration)

    def _on_event(self, event, **kwargs):
        del kwargs
        if event == _CACHE_HIT:
            self._hit.value = True

    def _on_duration(self, event, duration_secs, **kwargs):
        if event == _COMPILE:
            self.programs.append(Compiled(kwargs.get("fun_name", "?"), duration_secs,
                                          getattr(self._hit, "value", False)))
            self._hit.value = False

    def compiled_seconds(self):
        return sum(p.seconds for p in self.programs if not p.from_cache)

    def summary(self):
        """One line: seconds spent compiling, and what the compilation cache served."""
        compiled = [p for p in self.programs if not p.from_cache]
        loaded = [p for p in self.programs if p.from_cache]
        slowest = max(compiled, key=lambda p: p.seconds, default=None)
        return (f"XLA compiled {len(compiled)} programs in {self.compiled_seconds():.2f} s"
                f"{f' (slowest: {slowest.name}, {slowest.seconds:.2f} s)' if slowest else ''}; "
                f"{len(loaded)} loaded from the compilation cache in "
                f"{sum(p.seconds for p in loaded):.2f} s")
