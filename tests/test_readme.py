"""The README against the repository: its tree lists every Python file, and the numbers it quotes are the ones in
the committed records under results/."""
import glob
import json
import os
import re

import pytest

from helpers import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


def tree():
    """The README's tree: the code block after 'The tree:'."""
    after = README[README.index("The tree:"):]
    return after[after.index("```\n") + 4:after.index("\n```", after.index("```\n") + 4)]


def code_files():
    """The repository's Python and shell files outside tests/ (and outside what runs write: out/, data/)."""
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and d not in ("out", "data", "tests")]
        rel = os.path.relpath(folder, ROOT)
        found |= {os.path.normpath(os.path.join(rel, f)) for f in files
                  if f.endswith((".py", ".sh")) and f != "__init__.py"}
    return found


def listed_in_tree():
    """The files the tree names: a root file first on its line, a folder's files after its name (continued on lines
    indented like the comments), a package's modules indented under it."""
    listed, folder = set(), ""
    for line in tree().splitlines():
        if not line.startswith(" "):
            first, *words = line.split()
            folder = first if first.endswith("/") else ""
            if not folder:
                listed.add(first)
                continue
        elif line.startswith(" " * 19):
            words = line.split()
        else:
            listed.add(folder + line.split()[0])
            continue
        listed |= {folder + w for w in words if w.endswith((".py", ".sh")) and folder != "tests/"}
    return listed


def test_the_tree_lists_every_python_file_and_nothing_else():
    wanted, listed = code_files(), listed_in_tree()
    assert {"model.py", "plumbing/settings.py", "configs/toy.py", "bench/gpu_report.sh"} <= wanted
    assert wanted - listed == set(), f"in the repository, not in the README's tree: {sorted(wanted - listed)}"
    assert listed - wanted == set(), f"in the README's tree, not in the repository: {sorted(listed - wanted)}"


def memplan_records():
    """{command: the total with checkpointing on in GiB, hours of compute alone, hours with communication overlapped
    in the config's layout and in the recommended one (and its name; None where no layout fits), parameters} of
    results/memplan.txt."""
    out = {}
    for part in open(os.path.join(ROOT, "results", "memplan.txt")).read().split("$ python -m plumbing.memplan ")[1:]:
        command = part.splitlines()[0]
        total = re.search(r"^total\s+([\d.]+)\s+([\d.]+)$", part, re.M)
        best = re.search(r"^(\S+(?: \S+)*)\s{2,}.*\s([\d.,]+)  <- recommended$", part, re.M)
        out[command] = dict(on=float(total.group(2)), hours=float(re.search(r"([\d.]+) h wall", part).group(1)),
                            overlapped=float(re.search(r"([\d.,]+) h overlapped", part).group(1).replace(",", "")),
                            recommended=best and float(best.group(2).replace(",", "")), layout=best and best.group(1),
                            params=re.search(r"([\d.]+B) parameters", part).group(1))
    return out


@pytest.mark.parametrize("quoted,command,key", [
    ("12.4 GiB per GPU to the dense model on 8", "configs/paper_dense.py --gpus=8", "on"),
    ("45.6 GiB to the 256-expert MoE on 8", "configs/paper_moe.py --gpus=8", "on"),
    ("23.9 on 64", "configs/paper_moe.py --gpus=64 --tokens=57e9 --mfu=0.3", "on"),
    ("55.1 GiB to the 1,008-expert one on 64", "configs/paper_moe.py --gpus=64 --moe_experts=1008", "on"),
    ("7.2 h on HSDP", "configs/paper_moe.py --gpus=64 --tokens=57e9 --mfu=0.3", "recommended"),
    ("43.5 on FSDP", "configs/paper_moe.py --gpus=64 --tokens=57e9 --mfu=0.3", "overlapped"),
    ("17.2 h on 64 H200s on HSDP", "configs/paper_moe.py --gpus=64 --moe_experts=1008 --tokens=57e9 --mfu=0.3 "
     "--gpu_memory_gib=141", "recommended"),
    ("145.7 without", "configs/paper_moe.py --gpus=64 --moe_experts=1008 --tokens=57e9 --mfu=0.3 --gpu_memory_gib=141",
     "overlapped"),
    ("hold 1.99B", "configs/paper_dense.py --gpus=8", "params"),
    ("and 13.28B\nparameters", "configs/paper_moe.py --gpus=8", "params"),
])
def test_the_planner_figures_are_the_recorded_ones(quoted, command, key):
    text = " ".join(README.split())
    assert " ".join(quoted.split()) in text, f"the README no longer says {quoted!r}"
    number = re.search(r"[\d.]+B?", quoted.replace("1,008", "")).group(0)
    records = memplan_records()[command]
    record = records[key]
    assert (number == record) if key == "params" else float(number) == round(record, 1), (quoted, record)
    if key == "recommended":   # the layout it names is the one recommended, expert parallelism included
        assert quoted.split()[-1] == records["layout"].split()[0], (quoted, records["layout"])
        ep = re.search(r"EP(\d+)", records["layout"])
        assert not ep or f"{quoted} with `--expert_parallel={ep.group(1)}`" in text, (quoted, records["layout"])


def toy_cell(run, key):
    """A score of a toy run's last evaluation as the README's table writes it: mean [low, high]."""
    last = [json.loads(line) for line in open(os.path.join(ROOT, "results", "toy", f"{run}.jsonl"))][-1]
    lo, hi = last[f"{key}_ci"]
    return f"{last[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def test_the_toy_table_is_the_recorded_runs():
    rows = {"gen": ("toy", "gen"), "caption": ("toy", "caption"), "vqa": ("toy_vqa", "vqa"),
            "caption, clean picture": ("toy_vqa", "caption")}
    start = README.index("| after | score |")
    lines = README[start:README.index("\n\n", start)].splitlines()[2:]   # below the header and its rule
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert [row[1] for row in table] == list(rows)
    for row in table:
        run, score = rows[row[1]]
        for cell, split in zip(row[2:], ("unseen_scenes", "held_out_bindings")):
            assert cell == " / ".join(toy_cell(f"{run}_s{seed}", f"{score}_{split}") for seed in (1337, 1)), row


@pytest.mark.slow
def test_the_findings_paragraph_is_the_results_files():
    """The README's findings are the sentence findings/report.py writes from results/claims.jsonl (every verdict
    and interval as docs/claims.md has them), and its words for the verdicts are the rules plumbing/stats.py reads."""
    import claims
    from findings import report, runs
    from plumbing import stats
    from plumbing.settings import configure, settings
    c = configure(settings(vars(claims)), [])
    got = runs.by_run(runs.current(claims, c)[0])
    sentence = report.findings_sentence(claims, report.analysis(claims, got), got)
    text = " ".join(README.split())
    assert sentence in text, f"the README's findings should say: {sentence}"
    assert all(f"*{v}*" in text for v in stats.VERDICTS)


def test_the_speed_figures_are_the_recorded_ones():
    bench = open(os.path.join(ROOT, "results", "bench.txt")).read()
    text = " ".join(README.split())
    nano, ours = (float(re.search(rf"^{who}\s+([\d.]+) ms", bench, re.M).group(1)) for who in ("nanoGPT", "this project"))
    ratio = re.search(r"^this project .* ([\d.]+)x nanoGPT$", bench, re.M).group(1)
    assert f"takes {ours:.0f} ms a step to nanoGPT's {nano:.0f}" in text and f"({float(ratio):.2f}×" in text
    losses = [float(x) for x in re.findall(r"held-out loss ([\d.]+) nats/byte", bench)]
    assert f"held-out loss of {losses[1]:.2f} against nanoGPT's {losses[0]:.2f} nats/byte" in text
    cached, plain = (float(re.search(rf"^\s*{kind}:\s+([\d.]+) images/s", bench, re.M).group(1))
                     for kind in ("cached", "uncached"))
    assert f"draws {cached:.0f} toy images/s with its KV cache, {plain:.0f} without" in text


def test_the_test_figures_are_the_recorded_ones():
    """The counts and times the Test section quotes are the summary lines of results/tests.txt."""
    record = open(os.path.join(ROOT, "results", "tests.txt")).read()
    fast, full = (re.search(rf"^\$ {re.escape(cmd)}[^\n]*\n(?:.*\n)*?(\d+) passed, (\d+) skipped.* in ([\d.]+)s", record,
                            re.M)
                  for cmd in ('python -m pytest -q tests -m "not slow"', "CI=true bash .ci/run"))
    line = re.search(r"^python -m pytest -q tests -m \"not slow\" .*$", README, re.M).group(0)
    assert f"{fast.group(1)} tests in {float(fast.group(3)):.0f} s" in line, line
    seconds, count = float(full.group(3)), int(full.group(1)) + int(full.group(2))
    line = re.search(r"^python -m pytest -q tests  .*$", README, re.M).group(0)
    assert f"all {count}, as CI runs them: {int(seconds // 60)} min {seconds % 60:.0f} s" in line, line


def test_the_world_model_figures_are_the_recorded_ones():
    """The prediction errors and the planning table the README quotes are plan.py's tables in results/nav/."""
    predict = open(os.path.join(ROOT, "results", "nav", "predict.md")).read()
    plan = open(os.path.join(ROOT, "results", "nav", "plan.md")).read()
    text = " ".join(README.split())

    def mse(ahead, predictor):
        return re.search(rf"^\| {ahead} \| {re.escape(predictor)}[^|]* \| ([^|]+) \|", predict, re.M).group(1).strip()
    model = [mse(k, "trained model") for k in (1, 4)]
    assert f"one action ahead {model[0]} against {mse(1, 'copy').split()[0]} for copying the last frame and " \
           f"{mse(1, 'mean frame').split()[0]} for the mean frame" in text
    assert f"four ahead {model[1]} against {mse(4, 'copy').split()[0]} and {mse(4, 'mean frame').split()[0]}" in text
    assert f"eight ahead {mse(8, 'trained model').split()[0]}, the mean frame's level" in text
    final = {row.split("|")[1].strip(): row.split("|")[4].strip() for row in plan.splitlines() if row.count("|") == 6}
    for planner, quoted in (("CEM, trained model", "CEM, trained model"), ("CEM, simulator (oracle)", "(the ceiling)"),
                            ("CEM's start (forward)", "(forward)")):
        assert re.search(rf"{re.escape(quoted)} \| {re.escape(final[planner])} \|", text), planner
    assert f"| random actions / no motion | {final['random actions']} / {final['no motion']} |" in text
    gap = re.search(r"^- CEM, simulator \(oracle\): ([\d.]+ \[[\d.]+, [\d.]+\])", plan, re.M).group(1)
    assert f"trails the simulator by {gap}" in text
    beaten = [-float(d) for d in re.findall(r"^- (?:CEM's start|random|no motion)[^:]*: (-?[\d.]+)", plan, re.M)]
    assert len(beaten) == 3 and f"beats every baseline by {min(beaten):.2f} or more" in text
    # the same config trained with seeds 1337 (plan.md), 1 and 2: the spread across runs beside the one over episodes
    from plumbing.stats import paired
    tables = [plan] + [open(os.path.join(ROOT, "results", "nav", f"plan_s{seed}.md")).read() for seed in (1, 2)]

    def across(pattern, sign=1):
        s = paired([sign * float(re.search(pattern, t, re.M).group(1)) for t in tables])
        return f"{s['mean']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"
    model = across(r"^\| CEM, trained model \| [^|]+\| [^|]+\| ([\d.]+) ")
    assert f"| CEM, trained model | {final['CEM, trained model']} | {model} |" in text
    assert f"({across(r'^- CEM.s start .forward.: (-?[0-9.]+)', -1)} ahead of forward across runs)" in text
    assert f"across runs by {across(r'^- CEM, simulator .oracle.: (-?[0-9.]+)')}" in text


def test_citations_name_the_paper_s_sections():
    """Granularity is Eq. 4 and Fig. 15 (Table 2 is the shared experts); the navigation layout of 4 context frames is
    §5.1 and Fig. 11 (App. F.1 is planning, the data-ratio study and the WASD keys). A line that cites the one for
    the other, without the right one beside it, is named."""
    wrong = []
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "**", "*.md"), recursive=True):
        if "/results/" in path or "/.git/" in path or path.endswith("test_readme.py"):
            continue
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            if ("ranularity" in line and "Table 2" in line and "Eq. 4" not in line) or \
                    ("context frame" in line and "App. F.1" in line and "§5.1" not in line):
                wrong.append(f"{os.path.relpath(path, ROOT)}:{n}")
    assert not wrong, wrong
