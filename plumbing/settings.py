"""
The command line of every command: settings as defaults < config files < --key=value, checked (an unknown key or a
wrong type stops with one line), --help read from the comments beside the settings in a command's source, and the
last line a command prints kept clear of progress bars.
"""
import ast
import os
import sys
from types import SimpleNamespace


def configure(defaults, argv, sources=(), usage=""):
    """Returns a namespace of the defaults overridden by argv (config file paths and --key=value). --help (-h)
    lists the keys, their defaults and the comment beside each in `sources` (the command's files), and exits."""
    if "--help" in argv or "-h" in argv:
        print_help(defaults, list(sources) or [sys.argv[0]], usage)
        raise SystemExit(0)
    c = dict(defaults)

    def set_key(key, value, origin):
        if key not in c:
            raise SystemExit(f"unknown config key '{key}' ({origin}); valid keys: {', '.join(sorted(c))}")
        want = type(c[key])
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise SystemExit(f"config key '{key}' ({origin}) must be {want.__name__}, got {type(value).__name__} "
                             f"{value!r}")
        c[key] = value

    for arg in argv:
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            if not eq:                      # a bare flag, like --resume, means True
                raw = "True"
            try:                            # strings are taken as typed: --device=cuda, --budgets=1e12,1e13
                value = raw if isinstance(c.get(key), str) else ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            set_key(key, value, f"from {arg}")
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"config file '{arg}' not found (configs are in configs/, e.g. configs/toy.py)")
            scope = run_config_file(arg)
            for key, value in scope.items():
                if not key.startswith("_") and not callable(value) and not isinstance(value, type(os)):
                    set_key(key, value, f"in {arg}")
    return SimpleNamespace(**c)


def settings(namespace):
    """A command's defaults: the lowercase names its module assigns a bool, int, float, str or dict (the settings
    block of train.py, sample.py, plan.py, routing.py and scaling.py), as configure takes them."""
    return {k: v for k, v in namespace.items()
            if k.islower() and not k.startswith("_") and isinstance(v, (bool, int, float, str, dict))}


def key_comments(sources, function=None):
    """{name: its comment} for each module-level `name = value  # comment` in the source files (or each argument
    of `function`, one a line): what --help shows beside the key."""
    import io
    import tokenize
    comments = {}
    for path in sources:
        text = open(path).read()
        notes = {t.start[0]: t.string.lstrip("# ") for t in tokenize.generate_tokens(io.StringIO(text).readline)
                 if t.type == tokenize.COMMENT}
        tree = ast.parse(text)
        nodes = tree.body if function is None else \
            next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function).args.args
        for node in nodes:
            if isinstance(node, ast.arg) or isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                name = node.arg if isinstance(node, ast.arg) else node.targets[0].id
                comments.setdefault(name, notes.get(node.end_lineno, "") or notes.get(node.lineno, ""))
    return comments


def command_name(path):
    """How the command in `path` is typed after `python`: train.py at the root, -m plumbing.memplan in the package."""
    folder, file = os.path.split(os.path.abspath(path))
    package = os.path.isfile(os.path.join(folder, "__init__.py"))
    return f"-m {os.path.basename(folder)}.{file[:-3]}" if package else file


def print_help(defaults, sources, usage="", function=None):
    comments = key_comments(sources, function)
    print(usage or f"usage: python {command_name(sources[0])} [config.py ...] [--key=value ...]")
    for k, v in defaults.items():
        print((f"  --{k}={v}".ljust(36) + f"  {comments.get(k, '')}").rstrip())


def run_config_file(path):
    """The names a python config file assigns; one that fails to run stops with its file, line and error."""
    import builtins
    import traceback
    scope = {"__file__": path}   # a config may build on another: exec(open(...).read())
    try:
        exec(builtins.compile(open(path).read(), path, "exec"), scope)   # named, so errors point into the file
    except Exception as e:
        lines = [e.lineno] if isinstance(e, SyntaxError) else \
            [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        raise SystemExit(f"config file {path}, line {lines[-1] if lines else '?'}: {type(e).__name__}: "
                         f"{e.msg if isinstance(e, SyntaxError) else e}")
    return scope


def cli(main, argv):
    """Runs a command's main. Whatever stops it, open progress bars are closed first, so that its last message is
    a line of its own, not the tail of the bar's line."""
    try:
        main(argv)
    except BaseException:
        from tqdm import tqdm
        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()
        raise
