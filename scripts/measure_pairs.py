#!/usr/bin/env python3
"""PyTorch-measured loss barriers of the labelled trained pairs (issue 9).

    python3 scripts/measure_pairs.py                                   # PyTorch only: naive barriers + labels
    python3 scripts/measure_pairs.py --polymerge target/release/polymerge   # + align, aligned barriers, basin verdicts
    python3 scripts/measure_pairs.py --polymerge target/release/polymerge --freeze-aligned --bn-experiment --write
    python3 scripts/measure_pairs.py --polymerge ... --only gpt2       # families or pair ids (substring match)

For every pair (A, B) of the list below (fixtures/trained/ from
`fixtures/generate_trained.py` and the MLP runs of fixtures/mlp, fixtures/basin):

* the loss and accuracy along (1−α)·A + α·B, α = 0, 0.1, …, 1 on held-out
  data (digits test split; the held-out Vim help files for the language
  models), the **barrier** max_α [L(α) − ((1−α)L(A) + αL(B))] and the
  midpoint loss L(0.5); for BatchNorm nets once with the averaged stored
  running statistics and once with statistics re-estimated on the training
  split (`torch.optim.swa_utils.update_bn`);
* a **label** derived only from the measured barrier (rule below);
* with `--polymerge PATH`: `polymerge align A B -o … --save-perm … --json`
  (objective before/after, per-group churn), the barrier of (A, B aligned),
  whether the aligned copy computes B's function (PyTorch, max |Δ logits|),
  and `polymerge basin A B` / `polymerge basin A B_aligned` (verdict and
  exit code).

Pairs of kind `aligned` are (A, B permuted by a committed perm file,
`fixtures/trained/aligned/<id>.perm.json`, written by an earlier polymerge):
fixed files whose label does not change when polymerge's matcher does. They
are materialised with `polymerge permute` (so they need `--polymerge`) and
checked to compute B's function. `--freeze-aligned` rewrites those perm
files from the current polymerge's alignment.

Label rule (barrier b in nats, L̄ = (L(A) + L(B)) / 2, BN nets: with
re-estimated statistics):

    connected     b ≤ max(0.02, 0.05·L̄)
    disconnected  b ≥ max(0.05, 0.20·L̄)   (the midpoint is clearly worse than the ends)
    uncertain     otherwise

Split: a pair is `holdout` when one of its files is a seed-2 run or the
second member of a variant (`ft_b`, `noisy_0.1`, the later trajectory
snapshot, GPT-2's per-head permuted copy, BERT's permuted copy, the MLP
long-run pairs); everything else is `tune`. Thresholds of a verdict are to
be tuned on `tune` and reported on `holdout`.

Outputs (with `--write`): fixtures/trained/pairs.json (the labelled set with
every measurement), fixtures/trained/pairs.md (the table),
fixtures/trained/bn_experiment.json (with `--bn-experiment`). Without
`--write` they go to --work (default target/measure_pairs/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))

import trained_common as tc  # noqa: E402

ALPHAS = [round(i / 10, 1) for i in range(11)]
T = "fixtures/trained"
MLP = "fixtures/mlp"
BAS = "fixtures/basin"

RULE = {
    "connected": "barrier <= max(0.02, 0.05 * mean endpoint loss)",
    "disconnected": "barrier >= max(0.05, 0.20 * mean endpoint loss)",
    "uncertain": "otherwise",
    "barrier": "max over alpha in {0, 0.1, ..., 1} of L(alpha) - ((1-alpha) L(A) + alpha L(B)), held-out loss in nats; BN nets: BN statistics re-estimated on the training split",
}
HOLDOUT_MARKERS = ("seed2", "ft_b", "noisy_0.1", "step250", "epoch5", "permuted_per_head", "bert/seed0_permuted", "long_wd")


def label(barrier: float, la: float, lb: float) -> str:
    m = (la + lb) / 2
    if barrier <= max(0.02, 0.05 * m):
        return "connected"
    if barrier >= max(0.05, 0.20 * m):
        return "disconnected"
    return "uncertain"


def split_of(a: str, b: str) -> str:
    s = a + " " + b
    return "holdout" if any(k in s for k in HOLDOUT_MARKERS) else "tune"


# ------------------------------------------------------------------ the pairs
def pair(pid, family, kind, a, b, how, spec=None, align_spec=None, truth=None):
    return {"id": pid, "family": family, "kind": kind, "a": a, "b": b, "how": how,
            "spec": spec, "align_spec": align_spec or spec, "truth_perm": truth, "split": split_of(a, b)}


def define_pairs() -> list[dict]:
    P = []
    seeds = [(0, 1), (0, 2), (1, 2)]
    for fam in ("gpt2", "llama", "bert", "resnet", "resnet_wide"):
        spec = None  # BERT's cls.predictions head is inferred (was fixtures/trained/bert/spec.json)
        for i, j in seeds:
            P.append(pair(f"{fam}/seed{i}~seed{j}", fam, "independent", f"{T}/{fam}/seed{i}", f"{T}/{fam}/seed{j}",
                          f"independent runs, seeds {i} and {j}", spec))
    for fam, snaps in (("gpt2", ("step50", "step250")), ("resnet", ("epoch1", "epoch5"))):
        P.append(pair(f"{fam}/seed0~ft_a", fam, "fine-tune", f"{T}/{fam}/seed0", f"{T}/{fam}/seed0_ft_a", "base vs its fine-tune on data subset a"))
        P.append(pair(f"{fam}/seed0~ft_b", fam, "fine-tune", f"{T}/{fam}/seed0", f"{T}/{fam}/seed0_ft_b", "base vs its fine-tune on data subset b"))
        P.append(pair(f"{fam}/ft_a~ft_b", fam, "fine-tune", f"{T}/{fam}/seed0_ft_a", f"{T}/{fam}/seed0_ft_b", "two fine-tunes of one base on different data subsets"))
        for s in snaps:
            P.append(pair(f"{fam}/seed0_{s}~seed0", fam, "trajectory", f"{T}/{fam}/seed0_{s}", f"{T}/{fam}/seed0", f"one run: snapshot {s} vs the end"))
        for n in ("0.01", "0.1"):
            P.append(pair(f"{fam}/seed0~noisy_{n}", fam, "noisy", f"{T}/{fam}/seed0", f"{T}/{fam}/seed0_noisy_{n}", f"seed 0 vs seed 0 + {n}·std noise"))
    P.append(pair("gpt2/seed0~permuted", "gpt2", "permuted", f"{T}/gpt2/seed0", f"{T}/gpt2/seed0_permuted",
                  "seed 0 vs itself permuted in every inferred group", truth=f"{T}/gpt2/seed0_permuted.perm.json"))
    P.append(pair("gpt2/seed0~permuted_per_head", "gpt2", "permuted", f"{T}/gpt2/seed0", f"{T}/gpt2/seed0_permuted_per_head",
                  "seed 0 vs itself permuted with independent per-head groups (align with the per-head user spec)",
                  align_spec=f"{T}/gpt2/seed0_permuted_per_head_spec.json", truth=f"{T}/gpt2/seed0_permuted_per_head.perm.json"))
    P.append(pair("bert/seed0~permuted", "bert", "permuted", f"{T}/bert/seed0", f"{T}/bert/seed0_permuted",
                  "seed 0 vs itself permuted in every group", truth=f"{T}/bert/seed0_permuted.perm.json"))
    # MLP runs of fixtures/mlp and fixtures/basin (generate_mlp.py, generate_basin.py)
    for i, j in seeds:
        P.append(pair(f"mlp/seed{i}~seed{j}", "mlp", "independent", f"{MLP}/run_seed{i}.safetensors", f"{MLP}/run_seed{j}.safetensors",
                      f"independent W=512 runs, seeds {i} and {j}"))
    P.append(pair("mlp/w64_seed0~seed1", "mlp", "independent", f"{MLP}/traj/checkpoint-400.safetensors", f"{BAS}/w64_seed1.safetensors",
                  "independent W=64 runs, seeds 0 and 1"))
    P.append(pair("mlp/seed0~finetune", "mlp", "fine-tune", f"{MLP}/run_seed0.safetensors", f"{MLP}/run_seed0_finetune.safetensors",
                  "seed 0 vs 5 more epochs on half the data"))
    P.append(pair("mlp/seed0~noisy", "mlp", "noisy", f"{MLP}/run_seed0.safetensors", f"{MLP}/run_seed0_noisy.safetensors", "seed 0 vs 1% noise"))
    P.append(pair("mlp/seed0~permuted", "mlp", "permuted", f"{MLP}/run_seed0.safetensors", f"{MLP}/run_seed0_permuted.safetensors",
                  "seed 0 vs itself permuted", truth=f"{MLP}/run_seed0_permuted.perm.json"))
    P.append(pair("mlp/traj_step20~step400", "mlp", "trajectory", f"{MLP}/traj/checkpoint-20.safetensors", f"{MLP}/traj/checkpoint-400.safetensors",
                  "W=64 run, epoch 1 vs 20"))
    P.append(pair("mlp/long_wd_step20~step4000", "mlp", "trajectory", f"{BAS}/long_wd/checkpoint-20.safetensors",
                  f"{BAS}/long_wd/checkpoint-4000.safetensors", "long run, epoch 1 vs 200 (wd 5e-3)"))
    P.append(pair("mlp/long_wd_step40~step4000", "mlp", "trajectory", f"{BAS}/long_wd/checkpoint-40.safetensors",
                  f"{BAS}/long_wd/checkpoint-4000.safetensors", "long run, epoch 2 vs 200 (wd 5e-3)"))
    # Frozen aligned pairs: every independent pair with B permuted by a committed perm file.
    for p in [p for p in P if p["kind"] == "independent"]:
        q = dict(p)
        q["id"] = p["id"] + " aligned"
        q["kind"] = "aligned"
        q["perm"] = f"{T}/aligned/{p['id'].replace('/', '__').replace('~', '__')}.perm.json"
        q["how"] = p["how"] + ", B permuted onto A by the committed perm file (an earlier polymerge align)"
        q["truth_perm"] = None
        P.append(q)
    return P


# ------------------------------------------------------------------ measuring
class Measurer:
    def __init__(self):
        self.cache: dict[tuple, tc.Evaluator] = {}

    def evaluator(self, family: str, a: Path) -> tc.Evaluator:
        if family == "mlp":
            key = (family, tuple(tc.load_sd(a)["fc1.weight"].shape))
        elif family in ("resnet", "resnet_wide"):
            key = (family,)
        else:
            key = (family,)
        if key not in self.cache:
            fam = "resnet" if family.startswith("resnet") else family
            self.cache[key] = tc.Evaluator(fam, a)
        return self.cache[key]

    def path(self, family: str, a: Path, sda: dict, sdb: dict, bn: str = "stored") -> dict:
        ev = self.evaluator(family, a)
        loss, acc = [], []
        for al in ALPHAS:
            ev.load(tc.mix(sda, sdb, al))
            if bn == "reestimated":
                ev.reestimate_bn()
            l, c = ev.evaluate()
            loss.append(l)
            acc.append(c)
        lin = [(1 - al) * loss[0] + al * loss[-1] for al in ALPHAS]
        ex = [l - li for l, li in zip(loss, lin)]
        k = int(np.argmax(ex))
        return {
            "alphas": ALPHAS,
            "loss": [round(x, 6) for x in loss],
            "acc": [round(x, 6) for x in acc],
            "loss_a": round(loss[0], 6),
            "loss_b": round(loss[-1], 6),
            "midpoint_loss": round(loss[5], 6),
            "midpoint_acc": round(acc[5], 6),
            "barrier": round(max(ex), 6),
            "barrier_alpha": ALPHAS[k],
            "midpoint_excess_over_worse_end": round(loss[5] - max(loss[0], loss[-1]), 6),
            "label": label(max(ex), loss[0], loss[-1]),
        }

    def measure(self, family: str, a: Path, sda: dict, sdb: dict) -> dict:
        """{'stored': path, ['reestimated': path], 'label', 'barrier', ...}"""
        out = {"stored": self.path(family, a, sda, sdb)}
        if family.startswith("resnet"):
            out["reestimated"] = self.path(family, a, sda, sdb, bn="reestimated")
        main = out.get("reestimated", out["stored"])
        for k in ("barrier", "midpoint_loss", "loss_a", "loss_b", "label"):
            out[k] = main[k]
        return out

    def same_function(self, family: str, a: Path, sd1: dict, sd2: dict) -> float:
        """max |Δ logits| between two state dicts on the held-out data."""
        ev = self.evaluator(family, a)
        outs = []
        for sd in (sd1, sd2):
            ev.load(sd)
            with torch.no_grad():
                if family in ("mlp",) or family.startswith("resnet"):
                    outs.append(ev.model(ev.x))
                else:
                    outs.append(ev.model(input_ids=ev.windows[:32]).logits)
        return float((outs[0] - outs[1]).abs().max())


# ------------------------------------------------------------------ polymerge
def run(cmd: list[str], ok=(0,)) -> tuple[int, str, str]:
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True)
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(map(str, cmd))} -> exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return p.returncode, p.stdout, p.stderr


def pm_version(pm: str) -> str:
    _, out, _ = run([pm, "--version"])
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return f"{out.strip()} (worktree HEAD {commit})"


def align(pm: str, a: str, b: str, out: Path, perm: Path, spec: str | None, seed: int | None = None) -> dict:
    cmd = [pm, "align", a, b, "-o", out, "--save-perm", perm, "--json", "--force", "-q"]
    if spec:
        cmd += ["--spec", spec]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    t = time.time()
    _, so, _ = run(cmd)
    j = json.loads(so)
    groups = {g["name"]: round(g["churn"], 6) for g in j.get("groups", [])}
    return {
        "command": " ".join(map(str, ["polymerge", "align", a, b, "-o", "…", "--save-perm", "…", "--json"] + (["--spec", spec] if spec else []))),
        "objective_before": j.get("objective_before"),
        "objective_after": j.get("objective_after"),
        "sweeps": j.get("sweeps"),
        "converged": j.get("converged"),
        "wall_s": round(time.time() - t, 2),
        "churn": groups,
        "max_heads_churn": max([v for k, v in groups.items() if k.split(".")[-1] in ("heads", "query_heads")], default=None),
    }


def basin(pm: str, a: str, b: str, spec: str | None) -> dict:
    cmd = [pm, "basin", a, b, "--json"]
    if spec:
        cmd += ["--spec", spec]
    rc, so, se = run(cmd, ok=(0, 3, 4))
    j = json.loads(so)
    return {"verdict": j["verdict"], "exit_code": rc, "data_free_verdict": j.get("data_free_verdict"),
            "reason": (j.get("reasons") or [""])[0]}


def permute(pm: str, b: str, perm: str, out: Path, spec: str | None) -> None:
    cmd = [pm, "permute", b, "--perm", perm, "-o", out, "--force", "-q"]
    run(cmd)


# ------------------------------------------------------------------ BN experiment
def objective_split(sda: dict, sdb_aligned: dict, spec: dict) -> dict:
    """The matching objective Σ_t ⟨A_t, B_t⟩ over every float tensor (as
    polymerge reports it), split into BN running means, running variances,
    the other tensors the spec's groups permute ("weights"), and tensors no
    group touches ("unpermuted", e.g. `fc.bias`)."""
    in_spec = {m["tensor"] for g in spec["groups"] for m in g["members"]}
    parts = {"weights": 0.0, "running_mean": 0.0, "running_var": 0.0, "unpermuted": 0.0}
    for n, a in sda.items():
        if not a.is_floating_point():
            continue
        v = float((a.double() * sdb_aligned[n].double()).sum())
        if n.endswith("running_mean"):
            parts["running_mean"] += v
        elif n.endswith("running_var"):
            parts["running_var"] += v
        else:
            parts["weights" if n in in_spec else "unpermuted"] += v
    parts["total"] = sum(parts.values())
    return {k: round(v, 4) for k, v in parts.items()}


def bn_experiment(pm: str, meas: Measurer, work: Path, only=None) -> dict:
    res = {}
    for fam in ("resnet", "resnet_wide"):
        for i, j in ((0, 1), (0, 2), (1, 2)):
            a, b = f"{T}/{fam}/seed{i}", f"{T}/{fam}/seed{j}"
            key = f"{fam}/seed{i}~seed{j}"
            if only and not any(o in key for o in only):
                continue
            print(f"bn experiment {key}", flush=True)
            sda, sdb = tc.load_sd(ROOT / a), tc.load_sd(ROOT / b)
            _, so, _ = run([pm, "spec", a])
            full = json.loads(so)
            r = {"naive": meas.measure(fam, ROOT / a, sda, sdb),
                 "objective_naive": objective_split(sda, sdb, full)}
            # 1. running statistics in the objective (polymerge before issue 9):
            #    the inferred spec with its buffer flags removed
            old = json.loads(json.dumps(full))
            for g in old["groups"]:
                for m in g["members"]:
                    m.pop("buffer", None)
            sp = work / f"bn_{fam}_stats_in_objective_spec.json"
            sp.write_text(json.dumps(old, indent=1))
            out1, perm1 = work / f"bn_{fam}_{i}{j}_full.safetensors", work / f"bn_{fam}_{i}{j}_full.perm.json"
            r["align_full"] = align(pm, a, b, out1, perm1, str(sp))
            sd1 = tc.load_sd(out1)
            r["align_full"]["same_function_max_abs_delta"] = meas.same_function(fam, ROOT / a, sdb, sd1)
            r["align_full"]["objective_split"] = objective_split(sda, sd1, full)
            r["align_full"]["path"] = meas.measure(fam, ROOT / a, sda, sd1)
            # 2. polymerge's inferred spec: running statistics are buffers
            #    (permuted with their channels, left out of the objective)
            assert any(m.get("buffer") for g in full["groups"] for m in g["members"]), "spec without buffers"
            out2, perm2 = work / f"bn_{fam}_{i}{j}_wonly.safetensors", work / f"bn_{fam}_{i}{j}_wonly.perm.json"
            r["align_weights_only"] = align(pm, a, b, out2, perm2, None)
            sd2 = tc.load_sd(out2)
            r["align_weights_only"]["same_function_max_abs_delta"] = meas.same_function(fam, ROOT / a, sdb, sd2)
            r["align_weights_only"]["objective_split"] = objective_split(sda, sd2, full)
            r["align_weights_only"]["path"] = meas.measure(fam, ROOT / a, sda, sd2)
            res[key] = r
    return res


def bn_markdown(res: dict) -> str:
    lines = ["| pair | alignment | barrier, stored (averaged) BN stats | barrier, re-estimated BN stats | midpoint loss stored / re-est. | objective: weights | running_mean | running_var | total |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for k, r in res.items():
        rows = [("naive", r["naive"], r["objective_naive"])]
        rows.append(("aligned, running stats in the objective (before issue 9)", r["align_full"]["path"], r["align_full"]["objective_split"]))
        rows.append(("aligned, running stats as buffers (polymerge default)", r["align_weights_only"]["path"], r["align_weights_only"]["objective_split"]))
        for name, p, o in rows:
            lines.append(f"| {k} | {name} | {p['stored']['barrier']:.3f} | {p['reestimated']['barrier']:.3f} | "
                         f"{p['stored']['midpoint_loss']:.3f} / {p['reestimated']['midpoint_loss']:.3f} | "
                         f"{o['weights']:.1f} | {o['running_mean']:.1f} | {o['running_var']:.1f} | {o['total']:.1f} |")
    return "\n".join(lines) + "\n"


BN_BEGIN, BN_END = "<!-- bn-readme:begin -->", "<!-- bn-readme:end -->"


def bn_readme(res: dict) -> str:
    """The README's BatchNorm table: per pair the held-out barrier naive and
    aligned (polymerge's default, running statistics as buffers; and as
    before issue 9, statistics in the objective), with the stored (averaged)
    running statistics and with statistics re-estimated on training data."""
    lines = ["| pair | naive: stored / re-estimated stats | aligned (stats as buffers): stored / re-estimated | "
             "aligned, stats in the objective: stored / re-estimated |", "|---|---:|---:|---:|"]
    for k, r in res.items():
        cell = lambda p: f"{p['stored']['barrier']:.2f} / {p['reestimated']['barrier']:.2f}"
        lines.append(f"| {k} | {cell(r['naive'])} | {cell(r['align_weights_only']['path'])} | "
                     f"{cell(r['align_full']['path'])} |")
    return "\n".join(lines) + "\n"


def write_bn_readme(res: dict) -> None:
    readme = ROOT / "README.md"
    body = readme.read_text()
    i, k = body.index(BN_BEGIN), body.index(BN_END)
    readme.write_text(body[: i + len(BN_BEGIN)] + "\n\n" + bn_readme(res) + "\n" + body[k:])


# ------------------------------------------------------------------ main
def fmt(x, d=3):
    return "–" if x is None else f"{x:.{d}f}"


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| pair | kind | split | L(A) | L(B) | L(½) | naive barrier | label | aligned barrier | aligned label | "
            "objective before → after | max heads churn | basin naive (exit) | basin aligned (exit) |")
    out = [f"Measured by `scripts/measure_pairs.py` ({meta['polymerge'] or 'no polymerge'}). Losses: held-out, nats; "
           "BN nets: BN statistics re-estimated (stored-statistics numbers in pairs.json).", "", head,
           "|" + "---|" * 14]
    for r in rows:
        n = r.get("naive") or {}
        al = r.get("aligned") or {}
        ap = al.get("path") or {}
        bn = r.get("basin") or {}
        vb = lambda k: f"{bn[k]['verdict']} ({bn[k]['exit_code']})" if k in bn else "–"
        obj = f"{al['objective_before']:.4g} → {al['objective_after']:.4g}" if al.get("objective_after") is not None else "–"
        out.append(
            f"| {r['id']} | {r['kind']} | {r['split']} | {fmt(n.get('loss_a'))} | {fmt(n.get('loss_b'))} | {fmt(n.get('midpoint_loss'))} | "
            f"{fmt(n.get('barrier'))} | {n.get('label', r.get('skipped', '–'))} | {fmt(ap.get('barrier'))} | {ap.get('label', '–')} | "
            f"{obj} | {fmt(al.get('max_heads_churn'), 2)} | {vb('naive')} | {vb('aligned')} |")
    perm_rows = [r for r in rows if (r.get("aligned") or {}).get("seed_sweep")]
    if perm_rows:
        out += ["", "Permuted copies (B = A permuted; the true alignment reaches objective Σ‖A_t‖² and reproduces A exactly):", "",
                "| pair | objective of the truth | objective found, seeds 0–9 | seeds that recover A exactly | max abs diff to A (seed 0) |",
                "|---|---:|---|---:|---:|"]
        for r in perm_rows:
            al = r["aligned"]
            objs = ", ".join(f"{s['objective_after']:.1f}" for s in al["seed_sweep"])
            ok = sum(s["recovered"] for s in al["seed_sweep"])
            out.append(f"| {r['id']} | {al['objective_truth']:.1f} | {objs} | {ok}/10 | {al['seed_sweep'][0]['max_abs_diff_to_a']:.3g} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--polymerge", help="path of the polymerge binary: also align and run the basin check")
    ap.add_argument("--only", action="append", help="substring of pair ids to measure (repeatable)")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "measure_pairs")
    ap.add_argument("--write", action="store_true", help="write pairs.json / pairs.md / bn_experiment.json into fixtures/trained/")
    ap.add_argument("--freeze-aligned", action="store_true", help="rewrite fixtures/trained/aligned/*.perm.json from this polymerge's alignment")
    ap.add_argument("--bn-experiment", action="store_true")
    ap.add_argument("--trained", help="measure another generator output directory instead of fixtures/trained (e.g. a --smoke run)")
    args = ap.parse_args()
    global T
    if args.trained:
        T = str(Path(args.trained).resolve())
    torch.set_num_threads(1)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    outdir = ROOT / T if args.write else work
    if args.write and args.trained:
        sys.exit("--write writes fixtures/trained only: drop --trained")
    pm = str(Path(args.polymerge).resolve()) if args.polymerge else None

    man = json.loads((ROOT / T / "MANIFEST.json").read_text())
    changed = tc.check_corpus(man["corpus"]["sha256"])
    if changed:
        print(f"warning: corpus files differ from MANIFEST.json ({', '.join(changed[:5])}…): language-model losses are not comparable",
              file=sys.stderr)
    meta = {"generator": "scripts/measure_pairs.py", "polymerge": pm_version(pm) if pm else None,
            "torch": torch.__version__, "rule": RULE, "alphas": ALPHAS, "holdout_markers": list(HOLDOUT_MARKERS),
            "corpus_changed": changed}
    pairs = define_pairs()
    if args.only:
        pairs = [p for p in pairs if any(o in p["id"] for o in args.only)]
    meas = Measurer()
    rows = []
    t0 = time.time()
    for p in pairs:
        fam = p["family"]
        a, b = ROOT / p["a"], ROOT / p["b"]
        row = {k: v for k, v in p.items() if v is not None}
        print(f"{p['id']} …", flush=True)
        sda, sdb = tc.load_sd(a), tc.load_sd(b)
        tag = p["id"].replace("/", "__").replace("~", "__").replace(" ", "_")
        if p["kind"] == "aligned":
            if pm is None:
                row["skipped"] = "needs --polymerge (to apply the perm file)"
                rows.append(row)
                continue
            perm = ROOT / p["perm"]
            if args.freeze_aligned:
                perm.parent.mkdir(parents=True, exist_ok=True)
                src = work / f"{tag.removesuffix('_aligned')}.perm.json"
                if not src.exists():
                    align(pm, p["a"], p["b"], work / "tmp_freeze.safetensors", src, p["align_spec"])
                shutil.copyfile(src, perm)
            if not perm.exists():
                row["skipped"] = f"{p['perm']} missing (run with --freeze-aligned)"
                rows.append(row)
                continue
            bal = work / f"{tag}.safetensors"
            permute(pm, p["b"], p["perm"], bal, p["spec"])
            sdb_al = tc.load_sd(bal)
            row["same_function_max_abs_delta"] = meas.same_function(fam, a, sdb, sdb_al)
            row["naive"] = meas.measure(fam, a, sda, sdb_al)
            row["perm_sha256"] = tc.sha256_file(perm)
            row["basin"] = {"naive": basin(pm, p["a"], str(bal), p["spec"])}
            rows.append(row)
            continue
        row["naive"] = meas.measure(fam, a, sda, sdb)
        if pm:
            bal = work / f"{tag}.safetensors"
            perm = work / f"{tag}.perm.json"
            al = align(pm, p["a"], p["b"], bal, perm, p["align_spec"])
            sdb_al = tc.load_sd(bal)
            al["same_function_max_abs_delta"] = meas.same_function(fam, a, sdb, sdb_al)
            al["max_abs_diff_to_a"] = max(float((sda[k].double() - sdb_al[k].double()).abs().max()) for k in sda if sda[k].is_floating_point())
            al["path"] = meas.measure(fam, a, sda, sdb_al)
            if p.get("truth_perm"):
                # B is A permuted: the best objective is Σ_t ‖A_t‖² (polymerge's
                # objective counts every float tensor, permuted or not).
                al["objective_truth"] = float(sum((v.double() ** 2).sum() for v in sda.values() if v.is_floating_point()))
                al["recovered"] = al["max_abs_diff_to_a"] == 0.0
                sweep = []
                for sd_seed in range(10):
                    o = work / "seed_sweep.safetensors"
                    r = align(pm, p["a"], p["b"], o, work / "seed_sweep.perm.json", p["align_spec"], sd_seed)
                    sdo = tc.load_sd(o)
                    diff = max(float((sda[k].double() - sdo[k].double()).abs().max()) for k in sda if sda[k].is_floating_point())
                    sweep.append({"seed": sd_seed, "objective_after": r["objective_after"], "max_abs_diff_to_a": diff,
                                  "recovered": diff == 0.0})
                al["seed_sweep"] = sweep
            row["aligned"] = al
            row["basin"] = {"naive": basin(pm, p["a"], p["b"], p["spec"]),
                            "aligned": basin(pm, p["a"], str(bal), p["spec"])}
        rows.append(row)
        n = row["naive"]
        msg = f"  L(A) {n['loss_a']:.3f} L(B) {n['loss_b']:.3f} mid {n['midpoint_loss']:.3f} barrier {n['barrier']:.3f} -> {n['label']}"
        if "aligned" in row:
            msg += f"; aligned barrier {row['aligned']['path']['barrier']:.3f} -> {row['aligned']['path']['label']}; basin {row['basin']['naive']['verdict']}/{row['basin']['aligned']['verdict']}"
        print(msg, flush=True)
    meta["seconds"] = round(time.time() - t0, 1)
    if args.only and (outdir / "pairs.json").exists():
        # A partial run keeps the other pairs' earlier measurements (in list order).
        old = {r["id"]: r for r in json.loads((outdir / "pairs.json").read_text())["pairs"]}
        new = {r["id"]: r for r in rows}
        rows = [new.get(p["id"]) or old[p["id"]] for p in define_pairs() if p["id"] in new or p["id"] in old]
        meta["partial_runs"] = True
    doc = {**meta, "pairs": rows}
    (outdir / "pairs.json").write_text(json.dumps(doc, indent=1) + "\n")
    (outdir / "pairs.md").write_text(markdown(rows, meta))
    if args.bn_experiment:
        if pm is None:
            sys.exit("--bn-experiment needs --polymerge")
        res = bn_experiment(pm, meas, work, args.only)
        bn_path = outdir / "bn_experiment.json"
        if args.only and bn_path.exists():
            res = {**json.loads(bn_path.read_text())["pairs"], **res}
        (outdir / "bn_experiment.json").write_text(json.dumps({"polymerge": meta["polymerge"], "pairs": res}, indent=1) + "\n")
        (outdir / "bn_experiment.md").write_text(bn_markdown(res))
        if args.write:
            write_bn_readme(res)
        print(bn_markdown(res))
    print(markdown(rows, meta))
    print(f"wrote {outdir}/pairs.json, pairs.md ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
