"""The embedded default corpus: docstrings of the running interpreter's standard library.

Every machine with Python has it, so the demo and the tests need no download.
Docstrings are read with `ast` (nothing is imported, so no module side
effects) and written one paragraph per line, in a stable order.
"""

import argparse
import ast
import os
import pathlib
import sysconfig
import warnings

_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_MIN_PARAGRAPH_CHARS = 20


def _stdlib_sources(stdlib_dir):
    for root, dirs, files in os.walk(stdlib_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield pathlib.Path(root, name)


def _docstrings(source):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _paragraphs(docstring):
    for block in docstring.split("\n\n"):
        text = " ".join(line.strip() for line in block.splitlines() if line.strip())
        if len(text) >= _MIN_PARAGRAPH_CHARS:
            yield text


def stdlib_paragraphs(stdlib_dir=None):
    """Yields the standard library's docstring paragraphs, one string each."""
    stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
    for path in _stdlib_sources(stdlib_dir):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for doc in _docstrings(source):
            yield from _paragraphs(doc)


def write_corpus(path, max_bytes=None):
    """Writes the corpus to `path` (one paragraph per line); returns the line count.

    The file is written under a temporary name and renamed, so a reader never
    sees a partial corpus.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    lines = written = 0
    with tmp.open("w", encoding="utf-8") as f:
        for paragraph in stdlib_paragraphs():
            line = paragraph + "\n"
            if max_bytes is not None and written + len(line.encode("utf-8")) > max_bytes:
                break
            f.write(line)
            written += len(line.encode("utf-8"))
            lines += 1
    tmp.replace(path)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="Text file to write.")
    parser.add_argument("--max_bytes", type=int, default=None, help="Stop before this size.")
    args = parser.parse_args(argv)
    lines = write_corpus(args.output, args.max_bytes)
    print(f"wrote {lines} lines to {args.output}")


if __name__ == "__main__":
    main()
