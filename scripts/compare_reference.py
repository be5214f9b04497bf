#!/usr/bin/env python3
"""Compare `polymerge align` with the numpy+scipy reference port
(fixtures/reference_weight_matching.py) on every shipped fixture pair.

    python3 scripts/compare_reference.py [--polymerge target/release/polymerge] \
        [--seed 0] [--f64] [--synthetic] [--json-out results.json]

For each pair A, B (transformer/ResNet permuted and noisy copies, the ViT user
spec, LLaMA's per-head spec, the MLP pairs, the basin pairs, the CNN):
  * the spec: `polymerge spec A` (or the fixture's user spec), given to both;
  * polymerge: `polymerge align A B -o TMP --json --save-perm TMP --seed S`;
  * reference: its `weight_matching` in process, f32 like the paper's code
    (--f64 for f64), its own group order (numpy default_rng(seed));
  * reference again with polymerge's group order (SplitMix64) and its tied
    per-head phase, which should follow polymerge's trajectory;
  * polymerge's permutations re-scored by the reference's objective;
  * recovery: for permuted / noisy copies, the fraction of units whose found
    permutation equals the fixture's known one (both tools).

--synthetic adds harder pairs built here (written to a temp dir, not
committed): for every transformer/ResNet family and the ViT, B = independent
Gaussian tensors with A's per-tensor mean and std ("unrelated"), and B = the
permuted copy + noise of 50% of each tensor's std ("permuted + 50% noise"), so
that heads and within-head groups really move during the descent; and the MLP
seed0/seed1 pair converted to bf16 and to f16 by torch.

Prints a Markdown table: objectives (polymerge, reference, relative
difference), sweeps, algorithm seconds (polymerge's JSON `seconds`; the
reference's in-process time; both noisy on a shared machine), recovery.
Exits 1 if, on a shipped pair, the objectives differ by more than --tolerance
(default 0.5%) or a permuted copy is not recovered exactly by either tool; or,
on any pair, the reference run with polymerge's group order ends more than
1e-6 (relative) away from polymerge, or polymerge's reported objective
disagrees with the re-scored one (rel. 1e-9).  On the synthetic pairs the two
independent group orders may end in different local optima of the same
objective: their difference is reported, not judged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
import reference_weight_matching as rwm  # noqa: E402

FX = ROOT / "fixtures"
FAMILIES = ("bert", "gpt2", "llama", "qwen2", "resnet_basic", "resnet_bottleneck")


def load_groups(path: Path, invert: bool = False) -> dict:
    groups = json.loads(path.read_text())["groups"]
    if invert:  # files saying "permuted = original[p]": recovery finds argsort(p)
        return {g: np.argsort(p).tolist() for g, p in groups.items()}
    return groups


def cases():
    """(label, A, B, user spec or None, expected perms or None)."""
    out = []
    for fam in FAMILIES:
        d = FX / "transformers" / fam
        exp = load_groups(d / "perm.json")
        out.append((f"{fam} permuted", d / "a", d / "permuted", None, exp))
        out.append((f"{fam} noisy (5%)", d / "a", d / "noisy", None, exp))
    d = FX / "transformers" / "vit_user_spec"
    exp = load_groups(d / "perm.json")
    out.append(("vit (user spec) permuted", d / "a", d / "permuted", d / "spec.json", exp))
    out.append(("vit (user spec) noisy (5%)", d / "a", d / "noisy", d / "spec.json", exp))
    d = FX / "transformers" / "llama"
    out.append(("llama per-head spec, permuted_per_head", d / "a", d / "permuted_per_head",
                d / "per_head_spec.json", load_groups(d / "perm_per_head.json")))
    m = FX / "mlp"
    out.append(("mlp seed0 vs seed0_permuted", m / "run_seed0.safetensors",
                m / "run_seed0_permuted.safetensors", None,
                load_groups(m / "run_seed0_permuted.perm.json", invert=True)))
    for a, b in (("seed0", "seed1"), ("seed0", "seed2"), ("seed1", "seed2"),
                 ("seed0", "seed0_finetune"), ("seed0", "seed0_noisy")):
        out.append((f"mlp {a} vs {b}", m / f"run_{a}.safetensors", m / f"run_{b}.safetensors",
                    None, None))
    out.append(("mlp traj step 20 vs 400", m / "traj" / "checkpoint-20.safetensors",
                m / "traj" / "checkpoint-400.safetensors", None, None))
    bz = FX / "basin"
    out.append(("basin W=64 seed0 vs seed1", m / "traj" / "checkpoint-400.safetensors",
                bz / "w64_seed1.safetensors", None, None))
    out.append(("basin seed0 vs seed1_aligned", m / "run_seed0.safetensors",
                bz / "run_seed1_aligned.safetensors", None, None))
    out.append(("basin long_wd step 20 vs 4000", bz / "long_wd" / "checkpoint-20.safetensors",
                bz / "long_wd" / "checkpoint-4000.safetensors", None, None))
    c = FX / "cnn"
    out.append(("cnn vs cnn_permuted", c / "cnn.safetensors", c / "cnn_permuted.safetensors", None,
                load_groups(c / "cnn_permuted.perm.json", invert=True)))
    return out


def synthetic_cases(tmp: Path, seed: int = 1234):
    """Harder pairs: unrelated Gaussian B, and permuted + 50% noise."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    out = []
    fams = [(f, FX / "transformers" / f, None) for f in FAMILIES]
    fams.append(("vit (user spec)", FX / "transformers" / "vit_user_spec",
                 FX / "transformers" / "vit_user_spec" / "spec.json"))
    for fam, d, spec in fams:
        ck = rwm.read_checkpoint(d / "a")
        a, perm = ck.floats(), rwm.read_checkpoint(d / "permuted").floats()
        ints = {k: v for k, v in ck.raw.items() if k not in a}   # e.g. num_batches_tracked
        unrelated = {k: (v.mean() + v.std() * rng.standard_normal(v.shape)).astype(np.float32)
                     for k, v in a.items()}
        noisy = {k: (v + 0.5 * v.std() * rng.standard_normal(v.shape)).astype(np.float32)
                 for k, v in perm.items()}
        for tag, sd in (("unrelated", unrelated), ("permuted + 50% noise", noisy)):
            p = tmp / f"{fam.split()[0]}_{tag.split()[0]}.safetensors"
            save_file({**sd, **ints}, str(p))
            exp = None if tag == "unrelated" else load_groups(d / "perm.json")
            out.append((f"{fam} {tag} (synthetic)", d / "a", p, spec, exp))
    # 16-bit inputs, converted by torch (round to nearest even): both tools
    # must read them as the same f32 values.
    import torch
    from safetensors.torch import load_file as tload, save_file as tsave

    m = FX / "mlp"
    for dt, tag in ((torch.bfloat16, "bf16"), (torch.float16, "f16")):
        pair = []
        for run in ("seed0", "seed1"):
            sd = tload(str(m / f"run_{run}.safetensors"))
            p = tmp / f"mlp_{run}_{tag}.safetensors"
            tsave({k: v.to(dt) for k, v in sd.items()}, str(p))
            pair.append(p)
        out.append((f"mlp seed0 vs seed1, {tag} (synthetic)", pair[0], pair[1], None, None))
    return out


def recovered(found: dict, expected: dict | None):
    """Fraction of units placed as in ``expected`` (over all its groups)."""
    if expected is None:
        return None
    hit = sum(int(np.sum(np.asarray(found[g]) == np.asarray(p))) for g, p in expected.items())
    return hit / sum(len(p) for p in expected.values())


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr}")
    return p.stdout


def compare(exe, label, a, b, user_spec, expected, args, tmp: Path):
    spec_path = user_spec
    if spec_path is None:
        spec_path = tmp / "spec.json"
        spec_path.write_text(run([exe, "spec", str(a)]))
    spec = rwm.load_spec(spec_path)

    perm_path, out_path = tmp / "pm.perm.json", tmp / "pm.safetensors"
    cmd = [exe, "align", str(a), str(b), "-o", str(out_path), "--force", "--json",
           "--save-perm", str(perm_path), "--seed", str(args.seed)]
    if user_spec is not None:
        cmd += ["--spec", str(user_spec)]
    pm = json.loads(run(cmd))
    pm_perms = json.loads(perm_path.read_text())["groups"]

    pa = rwm.read_checkpoint(a).floats()
    pb = rwm.read_checkpoint(b).floats()
    prec = "f64" if args.f64 else "f32"
    ref = rwm.weight_matching(pa, pb, spec, seed=args.seed, precision=prec)
    same = rwm.weight_matching(pa, pb, spec, seed=args.seed, precision=prec, order="polymerge",
                               tie_per_head=True)
    # polymerge's permutations, scored by the reference's objective (f64 of the f32 values)
    pa32 = {k: v.astype(np.float32) for k, v in pa.items()}
    pb32 = {k: v.astype(np.float32) for k, v in pb.items()}
    rescored = rwm.objective(pa32, rwm.apply_permutation(spec, pm_perms, pb32))

    obj_pm, obj_ref = pm["objective_after"], ref["objective_after"]
    def rel(p):
        return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name

    row = {
        "pair": label, "a": rel(a), "b": rel(b),
        "groups": len(spec.groups),
        "objective_before": pm["objective_before"],
        "objective_polymerge": obj_pm, "objective_reference": obj_ref,
        "rel_diff": (obj_pm - obj_ref) / abs(obj_ref),
        "objective_reference_polymerge_order": same["objective_after"],
        "rel_diff_polymerge_order": (obj_pm - same["objective_after"]) / abs(same["objective_after"]),
        "same_perms_polymerge_order": all(np.array_equal(same["perms"][g], pm_perms[g])
                                          for g in pm_perms),
        "same_perms_reference": all(np.array_equal(ref["perms"][g], pm_perms[g]) for g in pm_perms),
        "rescored_rel_diff": (obj_pm - rescored) / abs(rescored),
        "sweeps_polymerge": pm["sweeps"], "sweeps_reference": ref["sweeps"],
        "sweeps_reference_polymerge_order": same["sweeps"],
        "seconds_polymerge": pm["seconds"], "seconds_reference": ref["seconds"],
        "recovered_polymerge": recovered(pm_perms, expected),
        "recovered_reference": recovered({g: p.tolist() for g, p in ref["perms"].items()}, expected),
        "precision": prec, "seed": args.seed,
    }
    return row


def pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--polymerge", default=str(ROOT / "target" / "release" / "polymerge"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--f64", action="store_true", help="reference in f64 (default f32, like the paper)")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--only", help="only pairs whose label contains this text")
    ap.add_argument("--synthetic", action="store_true",
                    help="also unrelated / heavily noised pairs built from the transformer fixtures")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if not Path(args.polymerge).exists():
        raise SystemExit(f"no polymerge binary at {args.polymerge} (cargo build --release)")

    rows, problems = [], []
    with tempfile.TemporaryDirectory(prefix="compare_reference_") as tmp:
        todo = cases() + (synthetic_cases(Path(tmp)) if args.synthetic else [])
        for label, a, b, spec, exp in todo:
            if args.only and args.only not in label:
                continue
            r = compare(args.polymerge, label, a, b, spec, exp, args, Path(tmp))
            rows.append(r)
            print(f"{label}: polymerge {r['objective_polymerge']:.6f}, reference "
                  f"{r['objective_reference']:.6f}", file=sys.stderr, flush=True)
            synthetic = "(synthetic)" in label
            if abs(r["rel_diff"]) > args.tolerance and not synthetic:
                problems.append(f"{label}: objectives differ by {r['rel_diff']:+.2e}")
            if abs(r["rel_diff_polymerge_order"]) > 1e-6:
                problems.append(f"{label}: with polymerge's group order the objectives differ "
                                f"by {r['rel_diff_polymerge_order']:+.2e}")
            if abs(r["rescored_rel_diff"]) > 1e-9:
                problems.append(f"{label}: polymerge reports {r['objective_polymerge']!r}, its "
                                f"perms re-score to {r['objective_polymerge'] - r['rescored_rel_diff'] * abs(r['objective_polymerge']):.12g}")
            if "permuted" in label and exp is not None and not synthetic:
                for tool in ("polymerge", "reference"):
                    if r[f"recovered_{tool}"] != 1.0:
                        problems.append(f"{label}: {tool} recovered {pct(r[f'recovered_{tool}'])}")

    prec = "f64" if args.f64 else "f32"
    print(f"reference: fixtures/reference_weight_matching.py ({prec}), seed {args.seed}; "
          "seconds = algorithm time (polymerge's JSON `seconds`, the reference in process), "
          "noisy on a shared machine\n")
    print("| pair | groups | objective before | polymerge | reference | rel. diff | "
          "reference, polymerge's order (rel. diff, same perms, sweeps) | sweeps pm / ref | "
          "seconds pm / ref | recovered pm / ref |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['groups']} | {r['objective_before']:.6f} | "
              f"{r['objective_polymerge']:.6f} | {r['objective_reference']:.6f} | "
              f"{r['rel_diff']:+.1e} | {r['objective_reference_polymerge_order']:.6f} "
              f"({r['rel_diff_polymerge_order']:+.1e}, {'yes' if r['same_perms_polymerge_order'] else 'no'}, "
              f"{r['sweeps_reference_polymerge_order']}) | "
              f"{r['sweeps_polymerge']} / {r['sweeps_reference']} | "
              f"{r['seconds_polymerge']:.3f} / {r['seconds_reference']:.3f} | "
              f"{pct(r['recovered_polymerge'])} / {pct(r['recovered_reference'])} |")
    shipped = [abs(r["rel_diff"]) for r in rows if "(synthetic)" not in r["pair"]]
    synth = [abs(r["rel_diff"]) for r in rows if "(synthetic)" in r["pair"]]
    same = [abs(r["rel_diff_polymerge_order"]) for r in rows]
    print(f"\nlargest |rel. diff|: shipped pairs {max(shipped, default=0):.2e} (tolerance "
          f"{args.tolerance:.1e})"
          + (f", synthetic pairs {max(synth):.2e} (independent orders, not judged)" if synth else "")
          + f"; with polymerge's order {max(same, default=0):.2e}; "
          f"polymerge's objective re-scored by the reference: max |rel. diff| "
          f"{max((abs(r['rescored_rel_diff']) for r in rows), default=0):.1e}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
