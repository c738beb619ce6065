"""
What a command writes: under a temporary name until it is whole, and never over an existing output unless asked.
"""
import os
from contextlib import contextmanager


@contextmanager
def part_file(path):
    """A temporary name to write `path` under: renamed to it when the block succeeds, removed when it fails, so a
    failed or killed command never leaves a half-written file under a real name."""
    part = path + ".part"
    try:
        yield part
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    os.replace(part, path)


def write_lines(path, lines):
    """A text file of the lines, each ended by a newline; returns its path."""
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def refuse_overwrite(paths, overwrite=False):
    """No command replaces an existing output unless asked to: the first one that exists stops it."""
    for path in paths:
        if os.path.exists(path) and not overwrite:
            raise SystemExit(f"{path} exists: pass --overwrite to replace it, or write elsewhere")
