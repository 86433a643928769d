"""The malloc arena limit takes effect: threads that allocate at once share two arenas."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Eight threads allocate at the same time, then glibc's malloc_stats lists the arenas.
THREADS = """
import ctypes, sys, threading
from trainer import memory
limited = memory.limit_arenas() if sys.argv[1] == "limit" else False
barrier = threading.Barrier(8)
def allocate():
    barrier.wait()
    blocks = [ctypes.create_string_buffer(4096) for _ in range(200)]
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(limited)
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    result = subprocess.run([sys.executable, "-c", THREADS, mode], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip(), result.stderr.count("Arena ")


def test_threads_share_the_limited_arenas():
    assert arenas("limit") == ("True", 2)
    limited, default = arenas("default")
    assert limited == "False" and default > 2  # glibc's own limit is 8 per core
