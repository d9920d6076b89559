"""The paper's ablations (Tables 3-5) with error bars: variants x training seeds as DVC
experiments, recorded run by run, and a table with intervals and a verdict per paper claim.

    python -m facemogle.evaluation.ablations queue --seeds 0 1 2 3 4 | sh   # dvc exp run --queue
    dvc queue start --jobs 1          # DVC runs them; dvc queue status / dvc exp show list them
    python -m facemogle.evaluation.ablations collect   # experiments -> metrics/ablations/*.json
    python -m facemogle.evaluation.ablations table [--out metrics/ablations/table.md] [--plot P]
    python -m facemogle.evaluation.ablations intervals metrics/eval/per_image   # one run
    python -m facemogle.evaluation.ablations coverage [--out metrics/ablations/coverage.json]

`queue` prints one `dvc exp run --queue -n <variant>-seed<k> -S ... evaluate@test` per variant
and training seed not recorded yet: the top-level `seed` is the training seed (initialisation,
batches, dropout and the per-id sampling noise follow it, so variant and main model with the
same seed are sampled from the same noise), and `gating` and `experts` make the variant; the
table reads the multimodal and mask2face modes (the claims are about mask conditioning), though
`evaluate` scores all four (its declared outputs). DVC runs the queue (`dvc queue start`), each
experiment in a copy of the workspace, and keeps each as a git ref with its params, `dvc.lock`
and git-tracked metrics.
`collect` reads those refs (git only: params and the `evaluate` stage's metrics and per-image
counts) and writes `metrics/ablations/<variant>-seed<k>.json`; `table` rebuilds everything from
those files; `intervals` gives the bootstrap intervals of one evaluated run from its per-image
files. A variant is compared with the main model by a paired t-test whose unit is the training
seed (one difference per seed), Holm-adjusted over the six variants per metric, and gives a
verdict only from MIN_SEEDS (5) seeds on; `coverage`
checks by simulation how often that interval and the bootstraps over seeds hold a known
difference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from facemogle.core.io import InputError, atomic_path, read_json, write_json, write_text
from facemogle.evaluation.forest_plot import forest_plot
from facemogle.evaluation.uncertainty import (
    SeedTest,
    coverage_study,
    holm,
    mean_over_seeds,
    metric_interval,
    paired_t_over_seeds,
    seed_verdict,
    smallest_resolvable,
)

RESULTS = Path("metrics/ablations")
TARGET = "evaluate@test"  # what an experiment reproduces: train, sample@test, evaluate@test
MODES: tuple[str, ...] = ("multimodal", "mask2face")
MAIN = "main"
VARIANTS: dict[str, dict[str, str]] = {
    MAIN: {"gating": "matrix", "experts": "global_local"},
    "gating-scalar": {"gating": "scalar", "experts": "global_local"},
    "gating-static": {"gating": "static", "experts": "global_local"},
    "gating-none": {"gating": "none", "experts": "global_local"},
    "experts-global": {"gating": "matrix", "experts": "global"},
    "experts-local": {"gating": "matrix", "experts": "local"},
    "experts-none": {"gating": "matrix", "experts": "none"},
    # Controls: the convex gate at the plain sum's scale; local experts with no global input.
    "gating-matrix-scaled": {"gating": "matrix_scaled", "experts": "global_local"},
    "experts-local-only": {"gating": "matrix", "experts": "local_only"},
}
# (column, mode, metric): mask following, text following; all higher-is-better.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mIoU mm", "multimodal", "mask_miou"),
    ("mIoU m2f", "mask2face", "mask_miou"),
    ("Attr mm", "multimodal", "attribute_acc"),
)
# A set-level metric with no per-image counts: mean ± std over seeds only (the paper's claims
# are in FID; this is the Frechet distance in the face parser's feature space, lower is better).
SEED_ONLY: tuple[str, str, str] = ("FD-parser mm ↓", "multimodal", "fd_parser")
# The paper's claims: (claim, the variants the main model must beat).
CLAIMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Global + local experts beat either alone and no experts (Table 3)",
     ("experts-global", "experts-local", "experts-none")),
    ("Matrix gating beats scalar and static gating (Tables 4-5)",
     ("gating-scalar", "gating-static")),
    ("Experts and gating are needed: removing the gate or the experts hurts (Table 5)",
     ("gating-none", "experts-none")),
)
PRIMARY = ("multimodal", "mask_miou")  # the metric a verdict rests on
MIN_SEEDS = 5  # fewer training seeds than this give no verdict, whatever the p-value
# The controls (not the paper's variants): judged by their own questions, not in the claims' family.
CONTROLS: tuple[str, ...] = ("gating-matrix-scaled", "experts-local-only")
# The paper's comparisons with the main model: one Holm family, all six whether run or not.
PAPER: tuple[str, ...] = tuple(v for v in VARIANTS if v != MAIN and v not in CONTROLS)
# What the controls ask: (question, variant, the variant it is compared with).
CONTROL_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("Does the matrix gate beat the plain sum once the scales match?",
     "gating-matrix-scaled", "gating-none"),
    ("Do local experts with no global information follow the mask as well as the main model?",
     "experts-local-only", MAIN),
    ("Does the gate's view of the global colour mask matter to local experts?",
     "experts-local-only", "experts-local"),
)


def result_path(variant: str, seed: int, results: Path = RESULTS) -> Path:
    return results / f"{variant}-seed{seed}.json"


def queue_commands(seeds: Sequence[int], results: Path = RESULTS,
                   variants: Mapping[str, Mapping[str, str]] = VARIANTS) -> list[str]:
    """One `dvc exp run --queue` per variant (its params, keys dotted below the top level)
    and training seed with no record in `results` yet, seed by seed (a DVC experiment is
    named `<variant>-seed<k>`)."""
    def command(variant: str, seed: int) -> str:
        sets = {"seed": seed, **variants[variant]}
        return shlex.join(["dvc", "exp", "run", "--queue", "-n", f"{variant}-seed{seed}",
                           *(a for k, v in sets.items() for a in ("-S", f"{k}={v}")), TARGET])

    return [command(v, s) for s in seeds for v in variants
            if not result_path(v, s, results).exists()]


EXPERIMENT = re.compile(r"^(?P<variant>[a-z0-9-]+)-seed(?P<seed>\d+)$")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def experiment_commit(repo: Path, name: str) -> str:
    """The commit of the DVC experiment `name` of `repo` (its git ref under `refs/exps`); a
    name that recurs under several baselines is refused."""
    refs = _git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    commits = [c for ref, c in (line.split() for line in refs.splitlines())
               if ref.rsplit("/", 1)[-1] == name]
    if not commits:
        raise InputError(f"no DVC experiment named {name!r} in {repo} (dvc exp list "
                         "--all-commits lists them)")
    if len(commits) > 1:
        raise InputError(f"{len(commits)} DVC experiments named {name!r} in {repo} (commits "
                         f"{', '.join(c[:7] for c in commits)}); give the run's record instead "
                         "(--records) or remove the others (dvc exp remove)")
    return commits[0]


def experiment_params(repo: Path, commit: str) -> str:
    """The text of `params.yaml` at an experiment's commit."""
    return _git(repo, "show", f"{commit}:params.yaml")


@contextlib.contextmanager
def fetched_output(repo: Path, commit: str, path: str, to: Path):
    """The output folder `path` (e.g. data/model) of the experiment at `commit`, copied from
    the DVC cache to `to` (replaced if there: fsspec copies a folder's contents only into a path
    that does not exist), removed afterwards."""
    from dvc.api import DVCFileSystem  # here: importing dvc costs a second, few callers need it

    shutil.rmtree(to, ignore_errors=True)
    try:
        DVCFileSystem(str(repo), rev=commit).get(path, str(to), recursive=True)
        yield to
    finally:
        shutil.rmtree(to, ignore_errors=True)


def experiments(repo: Path = Path("."),
                variants: Mapping[str, Mapping[str, str]] = VARIANTS) -> list[tuple[str, str]]:
    """(name, commit) of every DVC experiment in `repo` (the git refs `refs/exps/...`) whose
    name is `<variant>-seed<k>` of a variant in `variants`; one name may recur under several
    baseline commits."""
    refs = _git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    found = []
    for line in refs.splitlines():
        ref, commit = line.split()
        name = ref.rsplit("/", 1)[-1]
        match = EXPERIMENT.match(name)
        if match and match["variant"] in variants:
            found.append((name, commit))
    return found


def _param(params: Mapping, key: str):
    """The value of a dotted key (`base.quantization`) in a params tree, None if absent."""
    for part in key.split("."):
        params = params.get(part) if isinstance(params, Mapping) else None
    return params


def _leaves(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a params tree."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def varied_keys(variants: Mapping[str, Mapping[str, str]]) -> set[str]:
    """The params a study varies: the training seed and every key a variant sets."""
    return {"seed", *(k for settings in variants.values() for k in settings)}


def settings_differences(params: Mapping, reference: Mapping, ignore: set[str]
                         ) -> dict[str, tuple]:
    """Dotted key -> (value in `params`, value in `reference`) of every leaf outside `ignore`
    where two params trees differ (None where a tree lacks the key)."""
    a, b = _leaves(params), _leaves(reference)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)}


def _describe(differences: Mapping[str, tuple], names: tuple[str, str]) -> str:
    return "; ".join(f"{k} {x!r} ({names[1]}: {y!r})" for k, (x, y) in differences.items())


def experiment_record(repo: Path, name: str, commit: str,
                      variants: Mapping[str, Mapping[str, str]] = VARIANTS,
                      modes: Sequence[str] = MODES, params: Mapping | None = None) -> dict:
    """The record of experiment `name` at `commit`: its variant and seed (checked against its
    params, read from the commit unless given), all its params, the `evaluate` stage's metrics
    and per-image counts of every mode in `modes`."""
    match = EXPERIMENT.match(name)
    variant, seed = match["variant"], int(match["seed"])
    if params is None:
        params = yaml.safe_load(experiment_params(repo, commit))
    wanted = {"seed": seed, **variants[variant]}
    found = {k: _param(params, k) for k in wanted}
    if found != wanted:
        raise InputError(f"experiment {name} ({commit[:7]}): its params {found} are not those "
                         f"its name stands for, {wanted}")

    def metrics(path: str) -> dict:
        return json.loads(_git(repo, "show", f"{commit}:metrics/eval/{path}"))

    return {"variant": variant, "seed": seed, **variants[variant],
            "experiment": name, "commit": commit, "params": params,
            "metrics": {m: {k: v for k, v in metrics(f"{m}.json").items()
                            if isinstance(v, float)} for m in modes},
            "per_image": {m: metrics(f"per_image/{m}.json") for m in modes}}


def collect(repo: Path = Path("."), results: Path = RESULTS,
            variants: Mapping[str, Mapping[str, str]] = VARIANTS,
            modes: Sequence[str] = MODES) -> list[Path]:
    """Write the record of every experiment of `repo` named for a variant of `variants` that
    `results` lacks and that ran on the settings of the workspace's `params.yaml` (outside the
    keys the study varies). An experiment of other settings (an earlier default) or whose
    params are not those its name stands for is skipped, with the reason on stderr (one line
    per way the settings differ); two experiments of one name on the workspace's settings are
    an error."""
    workspace = yaml.safe_load((repo / "params.yaml").read_text())
    ignore = varied_keys(variants)
    chosen: dict[str, tuple[str, dict]] = {}
    other: dict[str, list[str]] = {}  # how the settings differ -> experiments so
    for name, commit in experiments(repo, variants):
        params = yaml.safe_load(experiment_params(repo, commit))
        if differences := settings_differences(params, workspace, ignore):
            other.setdefault(_describe(differences, ("", "params.yaml")), []).append(
                f"{name} ({commit[:7]})")
            continue
        if name in chosen:
            raise InputError(f"two experiments named {name} ran on the settings of params.yaml "
                             f"({chosen[name][0][:7]}, {commit[:7]}); remove one (dvc exp remove)")
        chosen[name] = (commit, params)
    for differences, names in other.items():
        print(f"skipped {len(names)} experiment(s) of other settings than params.yaml, "
              f"{differences}: {', '.join(names)}", file=sys.stderr)
    written = []
    for name, (commit, params) in chosen.items():
        match = EXPERIMENT.match(name)
        path = result_path(match["variant"], int(match["seed"]), results)
        if path.exists():
            continue
        try:
            record = experiment_record(repo, name, commit, variants, modes, params)
        except InputError as error:
            print(f"skipped {error}", file=sys.stderr)
            continue
        write_json(path, record)
        written.append(path)
    return written


def load_results(results: Path = RESULTS, variants: Mapping[str, Mapping[str, str]] = VARIANTS
                 ) -> dict[str, dict[int, dict]]:
    """variant -> training seed -> record, from every `<variant>-seed<k>.json`; variants in
    the order of `variants` (the main model first). The records must share their settings
    outside the keys the study varies, so that a table never compares runs of two defaults."""
    found: dict[str, dict[int, dict]] = {}
    first: tuple[Path, dict] | None = None
    for path in sorted(results.glob("*-seed*.json")):
        record = read_json(path)
        if record.get("variant") not in variants:
            raise InputError(f"{path}: unknown variant {record.get('variant')!r}; "
                             f"expected one of {list(variants)}")
        if not isinstance(record.get("params"), Mapping):
            raise InputError(f"{path}: no 'params' (the experiment's params.yaml); collect it "
                             "again from its experiment")
        if first is None:
            first = (path, record["params"])
        elif differences := settings_differences(record["params"], first[1],
                                                 varied_keys(variants)):
            raise InputError(f"{path}: trained on other settings than {first[0].name}: "
                             f"{_describe(differences, (path.name, first[0].name))}; a study's "
                             "folder holds the runs of one setting")
        found.setdefault(record["variant"], {})[int(record["seed"])] = record
    return {v: found[v] for v in variants if v in found}


def settings_line(found: Mapping[str, Mapping[int, dict]], params: Path = Path("params.yaml"),
                  variants: Mapping[str, Mapping[str, str]] = VARIANTS) -> str:
    """Where the records' shared settings stand against `params` (the workspace's)."""
    record = next((r for records in found.values() for r in records.values()), None)
    if record is None or not params.exists():
        return "Settings: no records, or no params.yaml to compare them with."
    differences = settings_differences(record["params"], yaml.safe_load(params.read_text()),
                                       varied_keys(variants))
    if not differences:
        return (f"Settings: every run was trained on {params}'s settings, but for the keys the "
                "study varies.")
    return (f"Settings: the runs share settings that differ from {params}'s in "
            f"{_describe(differences, ('runs', str(params)))}.")


def _fmt(interval) -> str:
    return f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _runs(records: Mapping[int, dict], mode: str) -> list[dict]:
    return [records[s]["per_image"][mode] for s in sorted(records)]


def seed_tests(found: Mapping[str, Mapping[int, dict]], mode: str = PRIMARY[0],
               metric: str = PRIMARY[1]) -> dict[str, SeedTest]:
    """Per variant with seeds in common with the main model: the paired t-test over those
    seeds of metric(variant) - metric(main), each seed's difference on all test images (aligned
    by id), with its 95% t-interval and p-value."""
    main = found.get(MAIN, {})
    out = {}
    for variant, records in found.items():
        shared = sorted(set(records) & set(main))
        if variant != MAIN and shared:
            out[variant] = paired_t_over_seeds(
                [(records[s]["per_image"][mode], main[s]["per_image"][mode]) for s in shared],
                metric)
    return out


def family_holm(tests: Mapping[str, SeedTest], family: Sequence[str]) -> dict[str, float]:
    """Holm-adjusted p-values over every member of `family`, run or not: a member with no test
    or fewer than MIN_SEEDS seeds counts with p = 1. Holm's adjusted p-values only fall as any
    input falls, so these bound what the complete family will give, and a verdict reached now
    stands whatever the missing runs show."""
    pvalues = {v: tests[v].p if v in tests and tests[v].seeds >= MIN_SEEDS else 1.0
               for v in family}
    return holm(pvalues)


def holm_verdicts(tests: Mapping[str, SeedTest], family: Sequence[str] = PAPER
                  ) -> dict[str, tuple[float, str]]:
    """Per variant of `tests` (one metric) its Holm-adjusted p-value and verdict against the main
    model: "better", "worse" or "not resolved", Holm over `family` (`family_holm`); a variant
    outside it (a control) gets (nan, "control"), as what it asks is answered by
    `control_answers`."""
    paper = {v: t for v, t in tests.items() if v in family}
    adjusted = family_holm(tests, family)
    return {v: (adjusted[v], seed_verdict(paper[v], adjusted[v]))
            if v in paper else (float("nan"), "control") for v in tests}


def _p_cell(p: float) -> str:
    return "-" if np.isnan(p) else f"{p:.3f}"


def _t_interval(test: SeedTest) -> str:
    """`[+low, +high]`, or why there is none (a single seed has no spread to scale by)."""
    if not np.isfinite(test.low):
        return "[no interval from one seed]"
    return f"[{test.low:+.3f}, {test.high:+.3f}]"


def _fmt_test(test: SeedTest) -> str:
    """`+mean (+d0, +d1, ...) [+low, +high]`: the per-seed differences and the t-interval."""
    seeds = ", ".join(f"{d:+.3f}" for d in test.per_seed)
    return f"{test.value:+.3f} ({seeds}) {_t_interval(test)}"


def _verdict_cell(word: str, seeds: int) -> str:
    if word == "control":
        return f"control, questions below (n={seeds} seeds)"
    short = f"; a verdict needs {MIN_SEEDS}" if seeds < MIN_SEEDS else ""
    return f"{'variant ' if word != 'not resolved' else ''}{word} (n={seeds} seeds{short})"


def ablation_table(found: Mapping[str, Mapping[int, dict]],
                   keys: Sequence[str] = ("gating", "experts"),
                   family: Sequence[str] = PAPER) -> str:
    """Markdown: per variant its params `keys` (as its records hold them) and seeds, per column
    the mean over seeds with its 95% interval (seeds and test images resampled; descriptive)
    and the seeds' standard deviation, and the paired test against the main model on the
    primary metric: the per-seed differences, their mean with its t-interval over seeds, the
    Holm-adjusted p-value and the verdict."""
    headers = ["variant", *keys, "seeds"] + [c for c, _, _ in COLUMNS] + [
        f"{SEED_ONLY[0]} (seeds)", "vs main: mIoU mm difference (per seed) [95% t-interval]",
        "Holm p", "verdict"]
    lines = ["| " + " | ".join(headers) + " |",
             "|---|" + "---|" * len(keys) + "---:|" + "---|" * (len(headers) - len(keys) - 2)]
    tests = seed_tests(found)
    judged = holm_verdicts(tests, family)
    for variant, records in found.items():
        first = records[min(records)]
        cells = [variant, *(str(first.get(k, "-")) for k in keys),
                 ",".join(str(s) for s in sorted(records))]
        for _, mode, metric in COLUMNS:
            per_seed = [records[s]["metrics"][mode].get(metric) for s in sorted(records)]
            spread = f" ± {np.std(per_seed, ddof=1):.3f}" if len(per_seed) > 1 else ""
            cells.append(_fmt(mean_over_seeds(_runs(records, mode), metric)) + spread)
        _, mode, metric = SEED_ONLY
        per_seed = [records[s]["metrics"][mode].get(metric) for s in sorted(records)]
        cells.append("-" if None in per_seed else f"{np.mean(per_seed):.4f}" + (
            f" ± {np.std(per_seed, ddof=1):.4f}" if len(per_seed) > 1 else ""))
        if variant in tests:
            p, word = judged[variant]
            cells += [_fmt_test(tests[variant]), _p_cell(p),
                      _verdict_cell(word, tests[variant].seeds)]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def other_columns_table(found: Mapping[str, Mapping[int, dict]],
                        family: Sequence[str] = PAPER) -> str:
    """Markdown: per variant, for each column beyond the primary one, the paired difference to
    the main model (mean of the per-seed differences, 95% t-interval) and its Holm-adjusted
    p-value over the variants of that column."""
    columns = [(name, mode, metric) for name, mode, metric in COLUMNS
               if (mode, metric) != PRIMARY]
    tests = {name: seed_tests(found, mode, metric) for name, mode, metric in columns}
    judged = {name: holm_verdicts(t, family) for name, t in tests.items()}
    lines = ["| variant | " + " | ".join(f"{name}: difference [95% t-interval], Holm p"
                                          for name, _, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for variant in [v for v in found if any(v in t for t in tests.values())]:
        cells = [f"{tests[n][variant].value:+.3f} {_t_interval(tests[n][variant])}, "
                 f"{_p_cell(judged[n][variant][0])}"
                 if variant in tests[n] else "-" for n, _, _ in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def claim_verdicts(found: Mapping[str, Mapping[int, dict]]) -> list[str]:
    """One line per paper claim: reproduced (the main model beats every variant named, Holm-
    adjusted paired t-test over seeds), contradicted (some variant beats it), or not resolved
    with the seeds at hand; each line names the number of seeds and comparisons."""
    mode, metric = PRIMARY
    tests = seed_tests(found)
    judged = holm_verdicts(tests)
    family = len(PAPER)
    flipped = {"better": "worse", "worse": "better"}
    out = []
    for claim, variants in CLAIMS:
        # main vs variant: the opposite of the variant's verdict against main
        outcomes = {v: flipped.get(judged[v][1], judged[v][1]) for v in variants if v in judged}
        seeds = "/".join(str(n) for n in sorted({tests[v].seeds for v in outcomes})) or "0"
        if any(o == "worse" for o in outcomes.values()):
            word = "contradicted"  # one variant beating main is enough, whatever is missing
        elif len(outcomes) < len(variants):
            word = "not resolved (runs missing)"
        elif all(o == "better" for o in outcomes.values()):
            word = "reproduced"
        else:
            word = f"not resolved with {seeds} seeds"
        detail = ", ".join(f"main vs {v}: {o} (Holm p {judged[v][0]:.3f})"
                           for v, o in outcomes.items())
        out.append(f"- {claim}: **{word}** ({detail or 'no paired runs'}; {metric} {mode}, "
                   f"paired t-test over n={seeds} training seeds, Holm over {family} "
                   f"comparisons)")
    return out


def control_answers(found: Mapping[str, Mapping[int, dict]]) -> list[str]:
    """One line per question of CONTROL_QUESTIONS whose two variants share training seeds: the
    paired t-test over those seeds of variant - reference on the primary metric, Holm over all
    the questions (`family_holm`: an unanswered one counts with p = 1)."""
    mode, metric = PRIMARY
    tests = {}
    for question, variant, reference in CONTROL_QUESTIONS:
        a, b = found.get(variant, {}), found.get(reference, {})
        shared = sorted(set(a) & set(b))
        if shared:
            tests[question] = paired_t_over_seeds(
                [(a[s]["per_image"][mode], b[s]["per_image"][mode]) for s in shared], metric)
    adjusted = family_holm(tests, [q for q, _, _ in CONTROL_QUESTIONS])
    words = {q: _verdict_cell(seed_verdict(t, adjusted[q]), t.seeds)
             for q, t in tests.items()}
    return [f"- {q} {v} - {r}: {_fmt_test(tests[q])}, Holm p {adjusted[q]:.3f} over "
            f"{len(CONTROL_QUESTIONS)} questions: {words[q]}"
            for q, v, r in CONTROL_QUESTIONS if q in tests]


def resolution(found: Mapping[str, Mapping[int, dict]], family: Sequence[str] = PAPER) -> str:
    """How large a difference the seeds can resolve: the pooled standard deviation of the
    per-seed differences on the primary metric, and the smallest mean difference a 95%
    t-interval (and Holm's first step) can declare non-zero with the seeds at hand, 5 and 10."""
    mode, metric = PRIMARY
    tests = [t for t in seed_tests(found).values() if t.seeds > 1]
    if not tests:
        return "Resolution: no variant shares two training seeds with the main model."
    dof = sum(t.seeds - 1 for t in tests)
    sd = float(np.sqrt(sum((t.seeds - 1) * np.var(t.per_seed, ddof=1) for t in tests) / dof))
    have = max(t.seeds for t in tests)
    steps = ", ".join(f"{smallest_resolvable(sd, n):.3f} with {n} seeds ("
                      f"{smallest_resolvable(sd, n, comparisons=len(family)):.3f} at Holm's "
                      f"first step)" for n in sorted({have, 5, 10}))
    return (f"Resolution ({metric} {mode}): the per-seed differences to the main model scatter "
            f"with a pooled standard deviation of {sd:.4f} ({len(tests)} variants, {dof} "
            f"degrees of freedom), so a 95% t-interval excludes 0 only for a mean difference "
            f"beyond t(0.975, n - 1) x SD / sqrt(n): {steps}.")


def difference_plot(found: Mapping[str, Mapping[int, dict]]) -> Image.Image:
    """Forest plot: per column of the table, each variant's paired difference to the main
    model (mean of the per-seed differences, a dot; each seed, a tick) with its 95% t-interval
    over seeds, coloured by the Holm-adjusted verdict; left of the zero line is worse than main."""
    panels = [(name, seed_tests(found, mode, metric)) for name, mode, metric in COLUMNS]
    variants = [v for v in found if any(v in t for _, t in panels)]
    if not variants:
        raise InputError("no variant shares a training seed with the main model: nothing to plot")
    seeds = "/".join(str(n) for n in sorted({t.seeds for _, d in panels for t in d.values()}))
    return forest_plot(
        [(f"{name}: variant - main", tests, {v: word for v, (_, word) in
                                             holm_verdicts(tests).items()})
         for name, tests in panels], variants,
        [f"dot: mean of the per-seed differences (ticks: each seed), bar: 95% t-interval over "
         f"n={seeds} training seeds",
         "green: variant better, red: variant worse (paired t-test, Holm over the paper's six "
         "comparisons); grey: not resolved or a control"])


def report(found: Mapping[str, Mapping[int, dict]]) -> str:
    walls = [r["wall_s"] for records in found.values() for r in records.values()
             if r.get("wall_s") is not None]  # runs from DVC experiments record no wall time
    runs = sum(len(records) for records in found.values())
    timing = (f"{len(walls)} runs, {np.mean(walls) / 60:.1f} min each on average "
              f"({min(walls) / 60:.1f} to {max(walls) / 60:.1f}), {sum(walls) / 3600:.1f} h of "
              f"run time in all (queues side by side take less wall-clock time)"
              if walls else "no run timed")
    if runs > len(walls):
        timing += f"; {runs - len(walls)} from DVC experiments, which record no wall time"
    return "\n".join(["# Ablations with error bars", "", settings_line(found), "",
                      ablation_table(found),
                      *claim_verdicts(found), "",
                      f"The controls ({PRIMARY[1]} {PRIMARY[0]}, paired t-test over the training "
                      "seeds the two variants share):", "", *control_answers(found), "",
                      resolution(found), "",
                      "The other columns, paired t-test over training seeds (Holm over the "
                      "paper's six comparisons of each column):", "", other_columns_table(found),
                      f"Runs: {timing}.", ""])


def intervals(per_image_dir: Path) -> str:
    """Markdown: per mode (`<mode>.json` in `per_image_dir`, as `evaluate` writes them) the
    metrics with their 95% bootstrap interval over the test images."""
    files = sorted(Path(per_image_dir).glob("*.json"))
    if not files:
        raise InputError(f"{per_image_dir}: no per-image files (<mode>.json) found")
    lines = ["| mode | images | mIoU | Attr |", "|---|---:|---|---|"]
    for path in files:
        per_image = read_json(path)
        if "skipped" in per_image:  # evaluated without a face parser: no counts to resample
            lines.append(f"| {path.stem} | {len(per_image['ids'])} | skipped: "
                         f"{per_image['skipped']} | - |")
            continue
        cells = [_fmt(metric_interval(per_image, metric)) if metric != "attribute_acc"
                 or "attributes" in per_image else "-" for metric in ("mask_miou",
                                                                      "attribute_acc")]
        lines.append(f"| {path.stem} | {len(per_image['ids'])} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder of the run records that queue, collect and table use "
                             f"(default {RESULTS}); a grid on another default or base gets its "
                             "own folder, so that queue does not skip runs recorded for the old "
                             "one and table reads only this folder (collect records every "
                             "ablation experiment of the repository into it)")
    sub = parser.add_subparsers(dest="command", required=True)
    queue_cmd = sub.add_parser("queue", help="print the dvc exp run --queue line of every "
                               "variant x seed not recorded yet")
    queue_cmd.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    sub.add_parser("collect", help="record the ablation experiments of this repository")
    table_cmd = sub.add_parser("table", help="the table and verdicts from the recorded runs")
    table_cmd.add_argument("--out", default=None, help="write it here (default: print)")
    table_cmd.add_argument("--plot", default=None, help="and the difference plot (PNG) here")
    intervals_cmd = sub.add_parser("intervals", help="bootstrap intervals of one evaluated run")
    intervals_cmd.add_argument("per_image_dir", type=Path, help="e.g. metrics/eval/per_image")
    coverage_cmd = sub.add_parser("coverage", help="coverage of the intervals, by simulation")
    coverage_cmd.add_argument("--out", default=str(RESULTS / "coverage.json"))
    coverage_cmd.add_argument("--experiments", type=int, default=2000,
                              help="simulated experiments per scenario and seed count")
    coverage_cmd.add_argument("--resamples", type=int, default=200,
                              help="draws of each bootstrap per experiment")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "intervals":
        print(intervals(args.per_image_dir), end="")
        return 0
    if args.command == "coverage":
        write_json(args.out, coverage_study(args.experiments, resamples=args.resamples))
        print(f"wrote {args.out}")
        return 0
    if args.command == "table":
        found = load_results(args.results)
        text = report(found)
        if args.plot:
            with atomic_path(args.plot) as tmp:
                difference_plot(found).save(tmp, format="PNG")
        if args.out:
            write_text(args.out, text)
        else:
            print(text, end="")
        return 0
    if args.command == "queue":
        print("\n".join(queue_commands(args.seeds, args.results)))
        return 0
    for path in collect(results=args.results):
        print(f"wrote {path}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
