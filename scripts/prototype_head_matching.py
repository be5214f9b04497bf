#!/usr/bin/env python3
"""Prototype: data-free weight matching for attention models (issue 9).

Research script, not part of the tool (results and recommendation:
docs/head-matching-experiments.md).  For independently trained tiny GPT-2 and
LLaMA pairs (``fixtures/trained/<family>/seed{0,1,2}``) it runs variants of Git
Re-Basin weight matching built on the numpy + scipy reference port
(``fixtures/reference_weight_matching.py``; f32 similarity GEMMs, scipy LAP,
the same objective and acceptance rule) and measures for each the matching
objective Σ_t <A_t, π(B)_t>, the per-group churn, and the PyTorch loss along
(1-α)·A + α·π(B) on held-out text (data, windows and loss of
``fixtures/trained_common.py``: held-out Vim help files, 96 windows of 128
bytes, mean next-byte cross-entropy in nats):

    barrier = max_α [L(α) - ((1-α) L(A) + α L(B))],  α = 0, 0.1, ..., 1

Every permutation found is checked to keep B's function (loss of π(B) equals
B's to 1e-4).  The per-head spec is derived from ``polymerge spec A`` by
``split_per_head`` (within-head groups and query-head groups split into one
group per head, listed before their heads group).

Variants (``VARIANTS``):

  polymerge          ``polymerge align A B --seed S`` (the tool today; shared spec)
  baseline           the reference descent, shared spec (polymerge's algorithm)
  perhead            reference descent on the per-head spec with polymerge's
                     tied first phase
  nested             per-head spec; a heads group visit is a joint step: for
                     every head pair (h, h') a small weight matching of the
                     two heads' blocks over the within-head groups gives
                     N[h, h']; an outer LAP over N gives the head permutation,
                     the within-head permutations come with it (HeadStep)
  shared_nested      shared spec; heads from the nested scores, then the
                     shared within-head groups re-solved
  frob / cross       heads from within-head-invariant scores Σ_c ||C_c||_F² /
                     cross-member products Σ <G_Q, G_K> + <G_V, G_O>
  resfirst           nested, fixed order each sweep: residual, FFN, heads, rest
  anc, anc_raw       anchored initialisation (groups with members whose other
                     axes no group permutes: embeddings, LM head) from those
                     members only (Pearson-normalised rows / raw), then nested
  anc_prop           anc + a propagation sweep (groups whose other axes are
                     solved, breadth first; heads by joint steps), then nested
                     descent   <- recommended
  anc_prop_init      anc_prop with joint head steps in the propagation sweep only
  anc_plain          anc, then the plain per-head descent (no joint steps)
  anc_shared(_nested) anc on the shared spec (plain / nested heads)
  anc_freeze(_shared) anc, anchored groups never re-solved
  anc_cos, anc_matrices  anc with per-tensor weights 1/(|A_t||B_t|) / vectors dropped
  actmatch           diagnostic upper bound: activation matching on training
                     text (correlations of residual stream, FFN units,
                     per-head q/k/v/attention outputs; nested head assignment)
  act_then_descent   diagnostic: nested descent started from actmatch
  act_residual       diagnostic: residual from actmatch (frozen), rest nested
  --ortho            diagnostic: a variant followed by orthogonal within-head
                     alignment (V/O Procrustes; Q/K Procrustes or, with RoPE,
                     2-D rotations per frequency pair): beyond permutations

Run from the repository root (CPU only, one thread; minutes per step on a
shared 2-core machine):

    cargo build --release
    P="nice -n 15 python3 scripts/prototype_head_matching.py --trained fixtures/trained"
    $P --families gpt2,llama --variants polymerge,baseline,perhead,nested,anc,anc_prop,actmatch \
       --json-out target/hm/all.json                       # full 11-point paths, seed 0
    $P --variants "" --restarts 8 --restart-variants baseline,anc,anc_prop \
       --json-out target/hm/restarts.json                  # 8 group-order seeds, midpoint only
    $P --ortho --variants anc_prop,actmatch --json-out target/hm/ortho.json
    $P --recovery --variants polymerge,baseline,anc_prop --json-out target/hm/recovery.json
    $P --report target/hm/all.json,target/hm/restarts.json,target/hm/ortho.json,target/hm/recovery.json \
       --md-out target/hm/report.md                        # the tables of the doc

``--pairs 0-1,0-2,1-2`` picks pairs; ``--recovery`` also needs
fixtures/transformers (committed) and fixtures/trained/gpt2/seed0_permuted*.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))

import reference_weight_matching as rwm  # noqa: E402

CTX = 128
EVAL_WINDOWS = 96
ALPHAS = [round(i / 10, 1) for i in range(11)]
CORPUS_DIR = Path("/usr/share/vim/vim90/doc")
EPS = rwm.IMPROVEMENT_EPS


# =========================================================================== data / evaluation
def corpus_split() -> tuple[list[Path], list[Path]]:
    """Same split as fixtures/trained_common.py: file i is a test file when i % 10 == 5."""
    files = sorted(CORPUS_DIR.glob("*.txt"))
    if not files:
        raise SystemExit(f"no corpus in {CORPUS_DIR}")
    test = [f for i, f in enumerate(files) if i % 10 == 5]
    train = [f for i, f in enumerate(files) if i % 10 != 5]
    return train, test


def byte_stream(paths):
    import torch

    b = b"".join(p.read_bytes() for p in paths)
    return torch.from_numpy(np.frombuffer(b, dtype=np.uint8).astype(np.int64))


def windows(s, n: int):
    import torch

    offs = torch.linspace(0, len(s) - CTX - 1, n).long()
    return torch.stack([s[o: o + CTX] for o in offs.tolist()])


class LMEval:
    """One HF causal LM of a family; loss of numpy state dicts on held-out windows."""

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoConfig, GPT2LMHeadModel, LlamaForCausalLM

        torch.set_num_threads(1)
        cfg = AutoConfig.from_pretrained(str(model_dir))
        cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}[cfg.model_type]
        self.family = cfg.model_type
        self.cfg = cfg
        self.model = cls(cfg).eval()
        train, test = corpus_split()
        self.test = windows(byte_stream(test), EVAL_WINDOWS)
        self._train_stream = None
        self.train_paths = train

    def train_windows(self, n: int):
        if self._train_stream is None:
            self._train_stream = byte_stream(self.train_paths)
        return windows(self._train_stream, n)

    def load(self, params: dict) -> None:
        import torch

        sd = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in params.items()}
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise SystemExit(f"state dict mismatch: missing {missing[:3]} unexpected {unexpected[:3]}")
        if self.family == "gpt2":
            self.model.tie_weights()
        self.model.eval()

    def loss(self) -> float:
        import torch
        import torch.nn.functional as F

        tot, cnt = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.test), 32):
                w = self.test[i: i + 32]
                logits = self.model(input_ids=w).logits
                lg = logits[:, :-1].reshape(-1, logits.shape[-1])
                lab = w[:, 1:].reshape(-1)
                tot += float(F.cross_entropy(lg.float(), lab, reduction="sum"))
                cnt += lab.numel()
        return tot / cnt

    def path(self, pa: dict, pb: dict, ends=None) -> dict:
        """Loss along (1-α)A + αB; ``ends`` = (L(A), L(B)) when known."""
        losses = []
        for al in ALPHAS:
            if ends is not None and al in (0.0, 1.0):
                losses.append(ends[0] if al == 0.0 else ends[1])
                continue
            self.load({k: (1 - al) * pa[k] + al * pb[k] for k in pa})
            losses.append(self.loss())
        lin = [(1 - al) * losses[0] + al * losses[-1] for al in ALPHAS]
        ex = [l - li for l, li in zip(losses, lin)]
        return {"loss": [round(x, 5) for x in losses], "barrier": round(max(ex), 5),
                "midpoint": round(losses[5], 5), "loss_a": round(losses[0], 5), "loss_b": round(losses[-1], 5)}


# =========================================================================== spec structure
class ExplicitMember(rwm.Member):
    """A member given by an explicit [size, k] array of axis positions."""

    def __init__(self, tensor, axis, pos):
        super().__init__(tensor, axis)
        self.pos = np.asarray(pos)

    def positions(self, size):
        assert self.pos.shape[0] == size
        return self.pos

    def is_plain(self, axis_len, size):
        return False


class HeadLayout:
    """A top-level heads group H and the groups nested in it.

    ``children``: shared child groups (shared spec) in spec order; after
    ``split`` there are per-head copies ``<child>.<j>``.  ``local``: for each
    member of H, the child positions relative to the member's block of head
    0, so that the same local spec serves every head pair."""

    def __init__(self, spec: rwm.Spec, hi: int):
        self.spec = spec
        self.hi = hi
        self.H = spec.groups[hi]
        self.hpos = [m.positions(self.H.size) for m in self.H.members]  # per member [n_h, blk]
        self.children = []
        for gi, g in enumerate(spec.groups):
            if gi != hi and self._nested(g):
                self.children.append(gi)

    def _member_of(self, tensor, axis, pos) -> tuple[int, int] | None:
        """(index of H's member holding position pos, head index) or None."""
        for mi, m in enumerate(self.H.members):
            if m.tensor != tensor or m.axis != axis:
                continue
            P = self.hpos[mi]
            hit = np.nonzero(P == pos)
            if len(hit[0]):
                return mi, int(hit[0][0])
        return None

    def _nested(self, g: rwm.Group) -> bool:
        if g.kind not in ("qk_dims", "vo_dims", "heads"):
            return False
        for m in g.members:
            P = m.positions(g.size)
            if self._member_of(m.tensor, m.axis, int(P.flat[0])) is None:
                return False
            for pos in P.ravel():
                if self._member_of(m.tensor, m.axis, int(pos)) is None:
                    return False
        return True


def split_per_head(doc: dict) -> tuple[dict, dict]:
    """The per-head spec of a shared spec: every group nested in a heads group
    H (within-head dimensions, query heads inside a KV head) becomes one group
    per head of H, ``<name>.<j>``, listed before H (acting on B's stored
    positions, so it follows its head).  Returns (spec doc, {H name: {child
    name: [per-head names]}})."""
    spec = rwm.spec_from_json(doc)
    tops = [i for i, g in enumerate(spec.groups) if g.kind == "heads"]
    layouts = {}
    nested_in = {}
    for hi in tops:
        lay = HeadLayout(spec, hi)
        if lay.children:
            layouts[hi] = lay
            for c in lay.children:
                nested_in.setdefault(c, []).append(hi)
    # a heads group nested in another one (query_heads) is not a top level
    for c, hs in list(nested_in.items()):
        if c in layouts:
            del layouts[c]
    children_of = {}
    out_groups = []
    emitted = set()
    for hi, g in enumerate(spec.groups):
        if hi in emitted:
            continue
        if hi in layouts:
            lay = layouts[hi]
            n_h = lay.H.size
            children_of[g.name] = {}
            for ci in lay.children:
                c = spec.groups[ci]
                names = []
                for j in range(n_h):
                    members = []
                    for m in c.members:
                        if m.repeat % n_h:
                            raise SystemExit(f"{c.name}: repeat {m.repeat} not a multiple of {n_h} heads")
                        k = m.repeat // n_h
                        members.append({"tensor": m.tensor, "axis": m.axis,
                                        "start": m.start + j * k * c.size * m.block, "block": m.block, "repeat": k})
                    names.append(f"{c.name}.{j}")
                    out_groups.append({"name": f"{c.name}.{j}", "kind": c.kind, "size": c.size, "members": members})
                children_of[g.name][c.name] = names
                emitted.add(ci)
            out_groups.append(doc["groups"][hi])
            emitted.add(hi)
            continue
        if any(hi in lay.children for lay in layouts.values()):
            continue  # emitted with its heads group
        out_groups.append(doc["groups"][hi])
    return {"format": rwm.SPEC_FORMAT, "groups": out_groups}, children_of


# =========================================================================== descent machinery
class Problem:
    """A (spec, A, B) matching problem with cached shapes; f32 like the port."""

    def __init__(self, spec: rwm.Spec, pa: dict, pb: dict):
        self.spec = spec
        self.a = {k: v.astype(np.float32, copy=False) for k, v in pa.items() if np.issubdtype(v.dtype, np.floating)}
        self.b = {k: pb[k].astype(np.float32, copy=False) for k in self.a}
        self.shapes = {k: v.shape for k, v in self.a.items()}
        self.names = spec.names
        self.index = {n: i for i, n in enumerate(self.names)}

    def identity(self) -> dict:
        return {g.name: np.arange(g.size) for g in self.spec.groups}

    def objective(self, perms) -> float:
        return rwm.objective(self.a, rwm.apply_permutation(self.spec, perms, self.b))

    def S(self, gi, perms):
        return rwm.similarity(self.spec, gi, self.a, self.b, perms, self.shapes, np.float32)

    def plain_step(self, gi, perms) -> bool:
        """The reference's step: LAP on S, take it when it raises the objective."""
        g = self.spec.groups[gi]
        S = self.S(gi, perms).astype(np.float64)
        _, ci = linear_sum_assignment(S, maximize=True)
        n = g.size
        old = S[np.arange(n), perms[g.name]].sum()
        new = S[np.arange(n), ci].sum()
        if new > old + EPS * max(1.0, abs(old)):
            perms[g.name] = ci.astype(np.int64)
            return True
        return False


def lap(M):
    _, c = linear_sum_assignment(M, maximize=True)
    return c


class HeadStep:
    """Joint steps for one top-level heads group of the per-head spec.

    For head pair (h, h'): the local problem is A's blocks of head h against
    B's blocks of head h' (B with every group but H and its per-head children
    applied), with the within-head groups as its groups (explicit local
    positions, identical for every pair).  Its best objective (a few sweeps
    of the plain descent, started from identity and, for the current pair,
    from the current permutations) is N[h, h']."""

    def __init__(self, prob: Problem, hname: str, children: dict):
        self.prob = prob
        self.hname = hname
        self.hi = prob.index[hname]
        self.H = prob.spec.groups[self.hi]
        self.n = self.H.size
        self.child_names = list(children)            # shared names, spec order of the per-head copies
        self.per_head = children                     # shared name -> [per-head names]
        self.hpos = [m.positions(self.n) for m in self.H.members]
        # members of H: unique (tensor, axis) blocks
        # local spec from head 0's per-head children
        groups = []
        for c in self.child_names:
            g0 = prob.spec.groups[prob.index[self.per_head[c][0]]]
            mem = []
            for m in g0.members:
                P = m.positions(g0.size)
                mi = self._holder(m.tensor, m.axis, P, head=0)
                rel = self._relative(mi, P, head=0)
                mem.append(ExplicitMember(f"m{mi}", m.axis, rel))
                # the same relative layout must hold for every head
                for j in range(1, self.n):
                    gj = prob.spec.groups[prob.index[self.per_head[c][j]]]
                    mj = [x for x in gj.members if x.tensor == m.tensor and x.axis == m.axis and
                          self._holder(x.tensor, x.axis, x.positions(gj.size), head=j) == mi]
                    assert any(np.array_equal(self._relative(mi, x.positions(gj.size), head=j), rel) for x in mj)
            groups.append(rwm.Group(c, g0.size, mem, g0.kind))
        self.local_spec = rwm.Spec(groups)
        # groups touching H's axes: only H and its children allowed
        own = {self.hi} | {prob.index[n] for c in self.child_names for n in self.per_head[c]}
        keys = {(m.tensor, m.axis) for m in self.H.members}
        for gi, g in enumerate(prob.spec.groups):
            if gi not in own:
                assert not any((m.tensor, m.axis) in keys for m in g.members), (g.name, hname)
        self.own = own

    def _holder(self, tensor, axis, P, head):
        for mi, m in enumerate(self.H.members):
            if m.tensor == tensor and m.axis == axis and np.isin(P, self.hpos[mi][head]).all():
                return mi
        raise AssertionError(f"{tensor} axis {axis}: child positions outside the heads blocks")

    def _relative(self, mi, P, head):
        blk = self.hpos[mi][head]
        lookup = {int(p): i for i, p in enumerate(blk)}
        return np.vectorize(lambda p: lookup[int(p)])(P)

    def local_tensors(self, perms):
        """A and B' blocks per head: dicts m{mi} -> array per head."""
        prob = self.prob
        maps = rwm.compose({}, prob.spec, perms, prob.shapes,
                           [i for i in range(len(prob.spec.groups)) if i not in self.own])
        la, lb = [], []
        for h in range(self.n):
            da, db = {}, {}
            for mi, m in enumerate(self.H.members):
                wb = rwm.permuted(maps, m.tensor, prob.b[m.tensor], except_axis=m.axis)
                da[f"m{mi}"] = np.take(prob.a[m.tensor], self.hpos[mi][h], axis=m.axis)
                db[f"m{mi}"] = np.take(wb, self.hpos[mi][h], axis=m.axis)
            la.append(da)
            lb.append(db)
        return la, lb

    def current_local(self, perms, hb):
        """Local perms of B's head hb under the current per-head groups."""
        return {c: perms[self.per_head[c][hb]].copy() for c in self.child_names}

    def local_solve(self, a, b, init, max_iter=20):
        shapes = {k: v.shape for k, v in a.items()}
        perms = {g.name: np.arange(g.size) for g in self.local_spec.groups} if init is None else dict(init)
        perms, *_ = rwm._descend(self.local_spec, a, b, shapes, perms, 0, max_iter, "numpy", np.float32)
        obj = rwm.objective(a, rwm.apply_permutation(self.local_spec, perms, b))
        return obj, perms

    def nested_scores(self, perms, local_restarts=0, rng=None):
        la, lb = self.local_tensors(perms)
        cur = perms[self.hname]
        N = np.zeros((self.n, self.n))
        sol = {}
        for h in range(self.n):
            for hb in range(self.n):
                inits = [None]
                if cur[h] == hb:
                    inits.append(self.current_local(perms, hb))
                for _ in range(local_restarts):
                    inits.append({g.name: rng.permutation(g.size) for g in self.local_spec.groups})
                best = None
                for ini in inits:
                    o, p = self.local_solve(la[h], lb[hb], ini)
                    if best is None or o > best[0]:
                        best = (o, p)
                N[h, hb], sol[(h, hb)] = best
        return N, sol

    def invariant_scores(self, perms, kind):
        """Within-head-permutation-invariant head scores (no inner assignment)."""
        la, lb = self.local_tensors(perms)
        N = np.zeros((self.n, self.n))
        covered = {}
        for g in self.local_spec.groups:
            for m in g.members:
                covered.setdefault((m.tensor, m.axis), []).append(m.positions(g.size).ravel())
        for h in range(self.n):
            for hb in range(self.n):
                a, b = la[h], lb[hb]
                tot = 0.0
                for g in self.local_spec.groups:
                    grams = []
                    for m in g.members:
                        P = m.positions(g.size)
                        ua = np.moveaxis(np.take(a[m.tensor], P.ravel(), axis=m.axis), m.axis, 0).reshape(g.size, -1)
                        ub = np.moveaxis(np.take(b[m.tensor], P.ravel(), axis=m.axis), m.axis, 0).reshape(g.size, -1)
                        grams.append((ua.astype(np.float64) @ ub.T.astype(np.float64), a[m.tensor].ndim))
                    if g.kind == "heads":  # query heads inside a KV head: nested LAP on the head blocks
                        C = sum(G for G, _ in grams)
                        tot += C[np.arange(g.size), lap(C)].sum()
                        continue
                    if kind == "frob":
                        C = sum(G for G, _ in grams)
                        tot += float((C * C).sum())
                    elif kind == "cross":
                        W = [G for G, nd in grams if nd >= 2]
                        for i in range(len(W)):
                            for j in range(i + 1, len(W)):
                                tot += float((W[i] * W[j]).sum())
                    else:
                        raise ValueError(kind)
                # positions no within-head group covers (RoPE Q/K, ...): direct
                for key, arr in a.items():
                    ax = int(key[1:])
                    axis = self.H.members[ax].axis
                    cov = covered.get((key, axis))
                    keep = np.ones(arr.shape[axis], bool)
                    if cov is not None:
                        keep[np.concatenate(cov)] = False
                    if keep.any():
                        tot += float(np.vdot(np.compress(keep, arr, axis), np.compress(keep, b[key], axis)))
                N[h, hb] = tot
        return N

    def apply_assignment(self, perms, sigma, sol):
        new = {k: v.copy() for k, v in perms.items()}
        new[self.hname] = np.asarray(sigma, dtype=np.int64)
        for h in range(self.n):
            hb = int(sigma[h])
            for c in self.child_names:
                new[self.per_head[c][hb]] = np.asarray(sol[(h, hb)][c], dtype=np.int64)
        return new

    def joint_step(self, perms, score="nested", local_restarts=0, rng=None) -> tuple[dict, bool]:
        """One nested joint step; returns (perms, accepted)."""
        prob = self.prob
        old = prob.objective(perms)
        if score == "nested":
            N, sol = self.nested_scores(perms, local_restarts, rng)
            sigma = lap(N)
            new = self.apply_assignment(perms, sigma, sol)
        else:
            N = self.invariant_scores(perms, score)
            sigma = lap(N)
            new = {k: v.copy() for k, v in perms.items()}
            new[self.hname] = np.asarray(sigma, dtype=np.int64)
            # within-head groups of the moved heads: solve them given the heads
            la, lb = self.local_tensors(new)
            for h in range(self.n):
                hb = int(sigma[h])
                _, p = self.local_solve(la[h], lb[hb], None)
                for c in self.child_names:
                    new[self.per_head[c][hb]] = p[c]
        val = prob.objective(new)
        if val > old + EPS * max(1.0, abs(old)):
            return new, True
        return perms, False


def descend(prob: Problem, perms: dict, rng, max_iter=100, head_steps=None, score="nested",
            fixed_order=None, local_restarts=0) -> dict:
    """Coordinate descent over the groups of ``prob``; heads groups listed in
    ``head_steps`` take joint steps.  Group order: ``fixed_order`` (a list of
    group indices, every sweep) or a fresh ``rng.permutation`` per sweep."""
    head_steps = head_steps or {}
    names = prob.names
    sweeps, converged = 0, False
    updates = {n: 0 for n in names}
    while sweeps < max_iter:
        sweeps += 1
        improved = False
        order = fixed_order if fixed_order is not None else [int(i) for i in rng.permutation(len(names))]
        for gi in order:
            name = names[gi]
            if name in head_steps:
                perms, acc = head_steps[name].joint_step(perms, score, local_restarts, rng)
            else:
                acc = prob.plain_step(gi, perms)
            if acc:
                updates[name] += 1
                improved = True
        if not improved:
            converged = True
            break
    return {"perms": perms, "sweeps": sweeps, "converged": converged, "updates": updates}


def group_axes(spec: rwm.Spec) -> dict:
    """(tensor, axis) -> set of group indices acting on it."""
    out = {}
    for gi, g in enumerate(spec.groups):
        for m in g.members:
            out.setdefault((m.tensor, m.axis), set()).add(gi)
    return out


def informative_members(prob: Problem, gi: int, known: set) -> list:
    """Members of group gi whose other axes are fixed: untouched by every
    group, or touched only by groups in ``known`` (already solved)."""
    ga = group_axes(prob.spec)
    out = []
    for m in prob.spec.groups[gi].members:
        nd = len(prob.shapes[m.tensor])
        if nd < 2:
            continue  # a vector has no other axis to anchor it
        others = set()
        for ax in range(nd):
            if ax != m.axis:
                others |= ga.get((m.tensor, ax), set())
        if others <= known:
            out.append(m)
    return out


def anchored_S(prob: Problem, gi: int, perms: dict, members: list, normalize: bool) -> np.ndarray:
    """S of group gi from the given members only; ``normalize``: each unit's
    row (unit axis first, the rest flattened) centred and scaled to unit
    norm per member, so S is a sum of Pearson correlations."""
    g = prob.spec.groups[gi]
    maps = rwm.axis_maps(prob.spec, perms, prob.shapes, skip=gi)
    S = np.zeros((g.size, g.size))
    for m in members:
        assert m.start == 0 and m.block == 1 and m.repeat == 1, "anchored members are plain in these specs"
        wa = np.moveaxis(prob.a[m.tensor], m.axis, 0).reshape(g.size, -1).astype(np.float64)
        wb = rwm.permuted(maps, m.tensor, prob.b[m.tensor], except_axis=m.axis)
        wb = np.moveaxis(wb, m.axis, 0).reshape(g.size, -1).astype(np.float64)
        if normalize:
            wa = wa - wa.mean(1, keepdims=True)
            wb = wb - wb.mean(1, keepdims=True)
            wa /= np.linalg.norm(wa, axis=1, keepdims=True) + 1e-12
            wb /= np.linalg.norm(wb, axis=1, keepdims=True) + 1e-12
        S += wa @ wb.T
    return S


def anchored_init(prob: Problem, perms: dict, normalize: bool, head_steps=None, propagate=False) -> tuple[dict, list]:
    """Solve the groups that have anchored members (other axes fixed in both
    models: token/position embeddings, the LM head) from those members only.
    ``propagate``: then keep visiting, breadth first, groups whose members
    become informative once their neighbours are solved (heads groups by a
    joint nested step), before the ordinary descent starts."""
    known, order = set(), []
    pending = list(range(len(prob.spec.groups)))
    children = set()
    for hs in (head_steps or {}).values():
        children |= hs.own - {hs.hi}
    first = True
    while pending:
        cand = [(gi, informative_members(prob, gi, known)) for gi in pending if gi not in children]
        cand = [(gi, ms) for gi, ms in cand if ms]
        if not cand:
            break
        for gi, ms in cand:
            name = prob.names[gi]
            if head_steps and name in head_steps:
                perms, _ = head_steps[name].joint_step(perms, "nested")
                for c in head_steps[name].own - {gi}:
                    known.add(c)
                    pending.remove(c)
            elif first:
                perms[name] = lap(anchored_S(prob, gi, perms, ms, normalize)).astype(np.int64)
            else:
                prob.plain_step(gi, perms)
            known.add(gi)
            pending.remove(gi)
            order.append(name)
        first = False
        if not propagate:
            break
    return perms, order


def shared_to_per_head(perms_shared: dict, children_of: dict) -> dict:
    out = dict(perms_shared)
    for H, ch in children_of.items():
        for c, names in ch.items():
            for n in names:
                out[n] = perms_shared[c].copy()
            out.pop(c, None)
    return out


# =========================================================================== activation matching
def activations(ev: LMEval, params: dict, n_windows: int) -> dict:
    """Hidden activations of one model on training windows (numpy [tokens, units])."""
    import torch

    ev.load(params)
    m = ev.model
    acts = {}
    hooks = []

    def save(name, inp=True):
        def f(mod, args, out):
            x = args[0] if inp else out
            acts.setdefault(name, []).append(x.detach().reshape(-1, x.shape[-1]).float().numpy())
        return f

    if ev.family == "gpt2":
        for i, blk in enumerate(m.transformer.h):
            hooks.append(blk.attn.c_attn.register_forward_hook(save(f"{i}.qkv", inp=False)))
            hooks.append(blk.attn.c_proj.register_forward_hook(save(f"{i}.attn_out")))
            hooks.append(blk.mlp.c_proj.register_forward_hook(save(f"{i}.ffn")))
    else:
        for i, blk in enumerate(m.model.layers):
            at = blk.self_attn
            hooks.append(at.q_proj.register_forward_hook(save(f"{i}.q", inp=False)))
            hooks.append(at.k_proj.register_forward_hook(save(f"{i}.k", inp=False)))
            hooks.append(at.v_proj.register_forward_hook(save(f"{i}.v", inp=False)))
            hooks.append(at.o_proj.register_forward_hook(save(f"{i}.attn_out")))
            hooks.append(blk.mlp.down_proj.register_forward_hook(save(f"{i}.ffn")))
    w = ev.train_windows(n_windows)
    with torch.no_grad():
        for i in range(0, len(w), 16):
            out = m(input_ids=w[i: i + 16], output_hidden_states=True)
            for j, hs in enumerate(out.hidden_states):
                acts.setdefault(f"res{j}", []).append(hs.reshape(-1, hs.shape[-1]).float().numpy())
    for h in hooks:
        h.remove()
    return {k: np.concatenate(v) for k, v in acts.items()}


def corr(xa, xb):
    za = (xa - xa.mean(0)) / (xa.std(0) + 1e-8)
    zb = (xb - xb.mean(0)) / (xb.std(0) + 1e-8)
    return (za.T.astype(np.float64) @ zb.astype(np.float64)) / len(za)


def lapval(C):
    c = lap(C)
    return float(C[np.arange(len(c)), c].sum()), c


def activation_matching(ev: LMEval, pa: dict, pb: dict, ph_doc: dict, n_windows: int) -> dict:
    """Perms of the per-head spec from activation correlations (upper bound)."""
    cfg = ev.cfg
    acA, acB = activations(ev, pa, n_windows), activations(ev, pb, n_windows)
    perms = {}
    res = [k for k in acA if k.startswith("res")]
    perms["residual"] = lap(sum(corr(acA[k], acB[k]) for k in res))
    if ev.family == "gpt2":
        L, nh, d = cfg.n_layer, cfg.n_head, cfg.n_embd
        dh = d // nh
        for i in range(L):
            perms[f"layers.{i}.ffn"] = lap(corr(acA[f"{i}.ffn"], acB[f"{i}.ffn"]))
            qa, qb = acA[f"{i}.qkv"], acB[f"{i}.qkv"]
            oa, ob = acA[f"{i}.attn_out"], acB[f"{i}.attn_out"]
            N = np.zeros((nh, nh))
            sol = {}
            for h in range(nh):
                for hb in range(nh):
                    sa, sb = slice(h * dh, (h + 1) * dh), slice(hb * dh, (hb + 1) * dh)
                    Cqk = corr(qa[:, sa], qb[:, sb]) + corr(qa[:, d:][:, sa], qb[:, d:][:, sb])
                    Cvo = corr(qa[:, 2 * d:][:, sa], qb[:, 2 * d:][:, sb]) + corr(oa[:, sa], ob[:, sb])
                    v1, p1 = lapval(Cqk)
                    v2, p2 = lapval(Cvo)
                    N[h, hb] = v1 + v2
                    sol[(h, hb)] = (p1, p2)
            sig = lap(N)
            perms[f"layers.{i}.heads"] = sig
            for h in range(nh):
                hb = int(sig[h])
                perms[f"layers.{i}.qk_dims.{hb}"], perms[f"layers.{i}.vo_dims.{hb}"] = sol[(h, hb)]
    else:
        L, nq, nkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
        dh = cfg.hidden_size // nq
        r = nq // nkv
        for i in range(L):
            perms[f"layers.{i}.ffn"] = lap(corr(acA[f"{i}.ffn"], acB[f"{i}.ffn"]))
            q, k, v, o = (acA[f"{i}.{x}"] for x in "q k v attn_out".split())
            qB, kB, vB, oB = (acB[f"{i}.{x}"] for x in "q k v attn_out".split())
            N = np.zeros((nkv, nkv))
            sol = {}
            for g in range(nkv):
                for gb in range(nkv):
                    kd = np.trace(corr(k[:, g * dh:(g + 1) * dh], kB[:, gb * dh:(gb + 1) * dh]))
                    Cv = corr(v[:, g * dh:(g + 1) * dh], vB[:, gb * dh:(gb + 1) * dh])
                    best = None
                    for tau in itertools.permutations(range(r)):
                        tot = kd
                        Cvo = Cv.copy()
                        for a_ in range(r):
                            qa_ = (g * r + a_) * dh
                            qb_ = (gb * r + tau[a_]) * dh
                            tot += np.trace(corr(q[:, qa_:qa_ + dh], qB[:, qb_:qb_ + dh]))
                            Cvo += corr(o[:, qa_:qa_ + dh], oB[:, qb_:qb_ + dh])
                        vv, pv = lapval(Cvo)
                        tot += vv
                        if best is None or tot > best[0]:
                            best = (tot, np.array(tau), pv)
                    N[g, gb] = best[0]
                    sol[(g, gb)] = best[1:]
            sig = lap(N)
            perms[f"layers.{i}.heads"] = sig
            for g in range(nkv):
                gb = int(sig[g])
                perms[f"layers.{i}.query_heads.{gb}"], perms[f"layers.{i}.vo_dims.{gb}"] = sol[(g, gb)]
    names = {g["name"] for g in ph_doc["groups"]}
    assert set(perms) == names, (set(perms) ^ names)
    return {k: np.asarray(v, dtype=np.int64) for k, v in perms.items()}


# =========================================================================== beyond permutations (diagnostic)
def orthogonal_heads(ev: LMEval, pa: dict, pb_aligned: dict) -> dict:
    """B (already permuted onto A) with every head's within-head basis turned
    towards A's by an exact continuous symmetry of attention:

    * V/O: an orthogonal R per head (KV head for GQA), v -> v R, O -> Rᵀ O,
      R from the SVD of M = V_Aᵀ V_B + O_A O_Bᵀ (orthogonal Procrustes);
    * Q/K without RoPE (GPT-2): an orthogonal R per head on q and k alike;
    * Q/K with RoPE (LLaMA): a 2-D rotation per frequency pair (dims j and
      j + dh/2) and KV head, the same for the KV head's queries (rotations
      commute with RoPE's).

    Not a permutation: a diagnostic of how much of the barrier is left to
    within-head bases that permutations cannot express."""
    cfg = ev.cfg
    b = {k: v.astype(np.float64).copy() for k, v in pb_aligned.items()}
    a = {k: v.astype(np.float64) for k, v in pa.items()}

    def procrustes(M):  # argmax_R tr(R M), R orthogonal
        U, _, Vt = np.linalg.svd(M)
        return Vt.T @ U.T

    if ev.family == "gpt2":
        d, nh = cfg.n_embd, cfg.n_head
        dh = d // nh
        for i in range(cfg.n_layer):
            W, Bb, O = f"transformer.h.{i}.attn.c_attn.weight", f"transformer.h.{i}.attn.c_attn.bias", f"transformer.h.{i}.attn.c_proj.weight"
            for h in range(nh):
                cq = slice(h * dh, (h + 1) * dh)
                ck = slice(d + h * dh, d + (h + 1) * dh)
                cv = slice(2 * d + h * dh, 2 * d + (h + 1) * dh)
                rows = slice(h * dh, (h + 1) * dh)

                def stack(p, cols_list):
                    return np.concatenate([np.concatenate([p[W][:, c], p[Bb][None, c]]) for c in cols_list])
                R = procrustes(stack(a, [cq, ck]).T @ stack(b, [cq, ck]))
                for c in (cq, ck):
                    b[W][:, c] = b[W][:, c] @ R
                    b[Bb][c] = b[Bb][c] @ R
                M = stack(a, [cv]).T @ stack(b, [cv]) + a[O][rows] @ b[O][rows].T
                R = procrustes(M)
                b[W][:, cv] = b[W][:, cv] @ R
                b[Bb][cv] = b[Bb][cv] @ R
                b[O][rows] = R.T @ b[O][rows]
    else:
        nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        dh = cfg.hidden_size // nq
        r = nq // nkv
        half = dh // 2
        for i in range(cfg.num_hidden_layers):
            pre = f"model.layers.{i}.self_attn."
            Q, K, V, O = (pre + x + "_proj.weight" for x in "qkvo")
            for g in range(nkv):
                krows = np.arange(g * dh, (g + 1) * dh)
                qrows = [np.arange((g * r + t) * dh, (g * r + t + 1) * dh) for t in range(r)]
                for j in range(half):
                    M = np.zeros((2, 2))
                    for T, rw in [(K, krows)] + [(Q, q) for q in qrows]:
                        pair = rw[[j, j + half]]
                        M += b[T][pair] @ a[T][pair].T
                    phi = np.arctan2(M[0, 1] - M[1, 0], M[0, 0] + M[1, 1])
                    c, s_ = np.cos(phi), np.sin(phi)
                    Rp = np.array([[c, -s_], [s_, c]])
                    for T, rw in [(K, krows)] + [(Q, q) for q in qrows]:
                        pair = rw[[j, j + half]]
                        b[T][pair] = Rp @ b[T][pair]
                M = b[V][krows] @ a[V][krows].T
                for q in qrows:
                    M += b[O][:, q].T @ a[O][:, q]
                R = procrustes(M)
                b[V][krows] = R @ b[V][krows]
                for q in qrows:
                    b[O][:, q] = b[O][:, q] @ R.T
    return {k: v.astype(np.float32) for k, v in b.items()}


# =========================================================================== variants
class Pair:
    """Everything one (A, B) pair needs: params, both specs, problems, evaluator."""

    def __init__(self, a_dir: Path, b_dir: Path, pid: str, pm: str, ev: LMEval | None, work: Path, spec_key: str):
        self.id = pid
        self.a_dir, self.b_dir = Path(a_dir), Path(b_dir)
        ca, cb = rwm.read_checkpoint(self.a_dir), rwm.read_checkpoint(self.b_dir)
        self.pa = {k: np.array(v, dtype=np.float32) for k, v in ca.floats().items()}
        self.pb = {k: np.array(v, dtype=np.float32) for k, v in cb.floats().items()}
        self.pm, self.ev, self.work = pm, ev, work
        spec_file = work / f"{spec_key}.spec.json"
        if not spec_file.exists():
            out = subprocess.run([pm, "spec", str(self.a_dir)], capture_output=True, text=True, check=True).stdout
            spec_file.write_text(out)
        self.spec_file = spec_file
        self.shared_doc = json.loads(spec_file.read_text())
        self.ph_doc, self.children_of = split_per_head(self.shared_doc)
        (work / f"{spec_key}.per_head_spec.json").write_text(json.dumps(self.ph_doc, indent=1))
        self.shared = Problem(rwm.spec_from_json(self.shared_doc), self.pa, self.pb)
        self.ph = Problem(rwm.spec_from_json(self.ph_doc), self.pa, self.pb)
        if ev is not None:
            self.loss_a = self._loss(self.pa)
            self.loss_b = self._loss(self.pb)

    def _loss(self, p):
        self.ev.load(p)
        return self.ev.loss()

    def weighted(self, how: str) -> Problem:
        """The per-head problem with every tensor's term scaled: ``cos``:
        1/(‖A_t‖‖B_t‖) (each tensor counts as a cosine); ``matrices``: vectors
        (norms, biases) left out (weight 0)."""
        w = {}
        for k, a in self.pa.items():
            if how == "cos":
                w[k] = 1.0 / (np.linalg.norm(a) * np.linalg.norm(self.pb[k]) + 1e-30)
            elif how == "matrices":
                w[k] = 1.0 if a.ndim >= 2 else 0.0
            else:
                raise ValueError(how)
        return Problem(self.ph.spec, {k: a * np.float32(w[k]) for k, a in self.pa.items()}, self.pb)

    def head_steps(self, prob=None):
        prob = prob or self.ph
        return {H: HeadStep(prob, H, ch) for H, ch in self.children_of.items()}

    def measure(self, perms_ph: dict, with_path=True) -> dict:
        """Objective, churn, barrier of B permuted by per-head-spec perms."""
        ph = self.ph
        bal = rwm.apply_permutation(ph.spec, perms_ph, self.pb)
        out = {"objective": round(ph.objective(perms_ph), 4)}
        churn = {g: float(np.mean(p != np.arange(len(p)))) for g, p in perms_ph.items()}
        out["churn"] = {g: round(c, 4) for g, c in churn.items()}
        heads = [g for g in self.children_of]
        out["heads_churn"] = [round(churn[g], 3) for g in heads]
        if with_path == "mid":
            # restart experiment: the midpoint only (one evaluation)
            mid = self._loss({k: 0.5 * self.pa[k] + 0.5 * bal[k] for k in self.pa})
            out["midpoint"] = round(mid, 5)
            out["mid_excess"] = round(mid - 0.5 * (self.loss_a + self.loss_b), 5)
        elif with_path:
            lb = self._loss(bal)
            out["loss_b_aligned_minus_b"] = round(lb - self.loss_b, 7)
            if abs(lb - self.loss_b) > 1e-4:
                raise SystemExit(f"{self.id}: aligned B computes another function (loss {lb} vs {self.loss_b})")
            path = self.ev.path(self.pa, bal, ends=(self.loss_a, self.loss_b))
            out.update({k: path[k] for k in ("barrier", "midpoint")})
            out["loss_path"] = path["loss"]
        return out


def v_polymerge(P: Pair, seed=0):
    out, perm = P.work / "pm_aligned.safetensors", P.work / "pm.perm.json"
    cmd = [P.pm, "align", str(P.a_dir), str(P.b_dir), "-o", str(out), "--save-perm", str(perm),
           "--json", "--force", "-q", "--seed", str(seed)]
    j = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    perms = {g: np.array(p, dtype=np.int64) for g, p in json.loads(perm.read_text())["groups"].items()}
    return shared_to_per_head(perms, P.children_of), {"sweeps": j["sweeps"], "pm_objective": j["objective_after"]}


def v_baseline(P: Pair, seed=0):
    r = descend(P.shared, P.shared.identity(), np.random.default_rng(seed))
    return shared_to_per_head(r["perms"], P.children_of), {"sweeps": r["sweeps"]}


def v_perhead(P: Pair, seed=0):
    r = rwm.weight_matching(P.pa, P.pb, P.ph.spec, seed=seed, tie_per_head=True)
    return r["perms"], {"sweeps": r["sweeps"]}


def v_perhead_untied(P: Pair, seed=0):
    r = descend(P.ph, P.ph.identity(), np.random.default_rng(seed))
    return r["perms"], {"sweeps": r["sweeps"]}


def v_nested(P: Pair, seed=0, init=None, score="nested", fixed_order=None):
    rng = np.random.default_rng(seed)
    perms = P.ph.identity() if init is None else init
    r = descend(P.ph, perms, rng, head_steps=P.head_steps(), score=score, fixed_order=fixed_order)
    return r["perms"], {"sweeps": r["sweeps"], "head_updates": {H: r["updates"][H] for H in P.children_of}}


def v_frob(P: Pair, seed=0):
    return v_nested(P, seed, score="frob")


def v_cross(P: Pair, seed=0):
    return v_nested(P, seed, score="cross")


def v_nested_init(P: Pair, seed=0):
    """Residual step, one nested joint step per heads group, then the plain per-head descent."""
    prob = P.ph
    perms = prob.identity()
    prob.plain_step(prob.index["residual"], perms)
    for H, hs in P.head_steps().items():
        perms, _ = hs.joint_step(perms, "nested")
    r = descend(prob, perms, np.random.default_rng(seed))
    return r["perms"], {"sweeps": r["sweeps"]}


def v_resfirst(P: Pair, seed=0):
    """Fixed order every sweep: residual, FFN groups, heads (joint), then within-head groups."""
    names = P.ph.names
    kind = {g.name: g.kind for g in P.ph.spec.groups}
    rank = {"residual": 0, "ffn": 1}
    heads = set(P.children_of)
    order = sorted(range(len(names)), key=lambda i: (rank.get(kind[names[i]], 2 if names[i] in heads else 3), i))
    return v_nested(P, seed, fixed_order=order)


def v_shared_nested(P: Pair, seed=0, init=None):
    """Shared spec; a heads visit: σ from the nested scores (per-head local
    problems), then the shared within-head groups re-solved given σ; taken
    when the objective rises."""
    rng = np.random.default_rng(seed)
    sh = P.shared
    steps = P.head_steps()
    perms = sh.identity() if init is None else init
    names = sh.names
    sweeps = 0
    head_updates = {H: 0 for H in P.children_of}
    while sweeps < 100:
        sweeps += 1
        improved = False
        for gi in [int(i) for i in rng.permutation(len(names))]:
            name = names[gi]
            if name in steps:
                hs = steps[name]
                ph_perms = shared_to_per_head(perms, P.children_of)
                N, _ = hs.nested_scores(ph_perms)
                sigma = lap(N)
                cand = {k: v.copy() for k, v in perms.items()}
                cand[name] = np.asarray(sigma, dtype=np.int64)
                for _ in range(10):
                    ch = False
                    for c in P.children_of[name]:
                        ch |= sh.plain_step(sh.index[c], cand)
                    if not ch:
                        break
                old, new = sh.objective(perms), sh.objective(cand)
                if new > old + EPS * max(1.0, abs(old)):
                    perms = cand
                    improved = True
                    head_updates[name] += 1
            elif sh.plain_step(gi, perms):
                improved = True
        if not improved:
            break
    return shared_to_per_head(perms, P.children_of), {"sweeps": sweeps, "head_updates": head_updates}


def v_actmatch(P: Pair, seed=0, n_windows=128):
    return activation_matching(P.ev, P.pa, P.pb, P.ph_doc, n_windows), {"train_windows": n_windows}


def v_act_then_descent(P: Pair, seed=0):
    """Diagnostic: the nested weight-matching descent started from the
    activation-matching permutations (is act's point a better optimum of the
    weight-matching objective, and does the descent keep its barrier?)."""
    act, _ = v_actmatch(P)
    r = descend(P.ph, act, np.random.default_rng(seed), head_steps=P.head_steps())
    return r["perms"], {"sweeps": r["sweeps"]}


def v_act_residual(P: Pair, seed=0):
    """Diagnostic: residual from activation matching, frozen; every other
    group by the nested weight-matching descent from the identity."""
    act, _ = v_actmatch(P)
    perms = P.ph.identity()
    perms["residual"] = act["residual"]
    rng = np.random.default_rng(seed)
    free = [i for i, n in enumerate(P.ph.names) if n != "residual"]
    for _ in range(100):
        r = descend(P.ph, perms, rng, head_steps=P.head_steps(), max_iter=1,
                    fixed_order=[free[i] for i in rng.permutation(len(free))])
        perms = r["perms"]
        if r["converged"]:
            break
    return perms, {}


def v_anchored(P: Pair, seed=0, normalize=True, nested=True, shared=False, propagate=False, freeze=False,
               nested_after_init=True):
    """Anchored initialisation, then the descent (nested joint head steps or
    plain); ``freeze``: the anchored groups are never re-solved."""
    prob = P.shared if shared else P.ph
    hs = (P.head_steps() if nested else None) if not shared else None
    perms, order = anchored_init(prob, prob.identity(), normalize, hs, propagate)
    if freeze:
        assert not (shared and nested)
        rng = np.random.default_rng(seed)
        free = [i for i, n in enumerate(prob.names) if n not in order]
        sweeps = 0
        while True:  # a fresh random order of the free groups per sweep
            sweeps += 1
            r = descend(prob, perms, rng, head_steps=hs, max_iter=1, fixed_order=[free[i] for i in rng.permutation(len(free))])
            perms = r["perms"]
            if r["converged"] or sweeps >= 100:
                break
        perms = shared_to_per_head(perms, P.children_of) if shared else perms
        return perms, {"sweeps": sweeps, "init_order": order}
    if shared and nested:
        perms_ph, info = v_shared_nested(P, seed, init=perms)
        info["init_order"] = order
        return perms_ph, info
    r = descend(prob, perms, np.random.default_rng(seed), head_steps=hs if nested_after_init else None)
    perms = shared_to_per_head(r["perms"], P.children_of) if shared else r["perms"]
    return perms, {"sweeps": r["sweeps"], "init_order": order}


def v_weighted(P: Pair, seed=0, how="cos", anchored=True):
    prob = P.weighted(how)
    hs = P.head_steps(prob)
    perms = prob.identity()
    if anchored:
        perms, _ = anchored_init(prob, perms, True, hs)
    r = descend(prob, perms, np.random.default_rng(seed), head_steps=hs)
    return r["perms"], {"sweeps": r["sweeps"]}


VARIANTS = {
    "anc_freeze": lambda P, seed=0: v_anchored(P, seed, freeze=True),
    "anc_freeze_shared": lambda P, seed=0: v_anchored(P, seed, nested=False, shared=True, freeze=True),
    "anc_cos": lambda P, seed=0: v_weighted(P, seed, "cos"),
    "anc_matrices": lambda P, seed=0: v_weighted(P, seed, "matrices"),
    "cos": lambda P, seed=0: v_weighted(P, seed, "cos", anchored=False),
    "anc_raw": lambda P, seed=0: v_anchored(P, seed, normalize=False),
    "anc": lambda P, seed=0: v_anchored(P, seed),
    "anc_prop": lambda P, seed=0: v_anchored(P, seed, propagate=True),
    "anc_prop_init": lambda P, seed=0: v_anchored(P, seed, propagate=True, nested_after_init=False),
    "anc_prop_raw": lambda P, seed=0: v_anchored(P, seed, normalize=False, propagate=True),
    "anc_plain": lambda P, seed=0: v_anchored(P, seed, nested=False),
    "anc_shared": lambda P, seed=0: v_anchored(P, seed, nested=False, shared=True),
    "anc_shared_nested": lambda P, seed=0: v_anchored(P, seed, nested=True, shared=True),
    "polymerge": v_polymerge,
    "baseline": v_baseline,
    "perhead": v_perhead,
    "perhead_untied": v_perhead_untied,
    "nested": v_nested,
    "nested_init": v_nested_init,
    "shared_nested": v_shared_nested,
    "frob": v_frob,
    "cross": v_cross,
    "resfirst": v_resfirst,
    "actmatch": v_actmatch,
    "act_then_descent": v_act_then_descent,
    "act_residual": v_act_residual,
}


def restarts(P: Pair, n: int, variant: str) -> list[dict]:
    """n descents of one variant with seeds 0..n-1 (the seed sets the group
    order of every sweep); every one measured, so that objective and barrier
    can be compared run by run."""
    runs = []
    for s in range(n):
        t = time.perf_counter()
        perms, info = VARIANTS[variant](P, seed=s)
        sec = time.perf_counter() - t
        m = P.measure(perms, with_path="mid")
        m.update(info)
        m["seed"] = s
        m["seconds"] = round(sec, 2)
        runs.append(m)
    return runs


def recovery(a_dir: Path, b_dir: Path, key: str, pm: str, work: Path, variants: list[str], seeds: int,
             truth: Path | None = None) -> dict:
    """B = A permuted (or permuted + noise): for each variant and seed, the
    objective, the largest |A - π(B)| and whether π(B) equals A exactly
    (noisy copies: equals B under the true permutation ``truth``, a
    polymerge-perm/1 file of the shared spec)."""
    P = Pair(a_dir, b_dir, f"{key}", pm, None, work, "rec_" + key.replace("/", "_"))
    ref = P.pa
    if truth is not None:
        tp = {g: np.asarray(p, dtype=np.int64) for g, p in json.loads(Path(truth).read_text())["groups"].items()}
        ref = rwm.apply_permutation(P.shared.spec, tp, P.pb)
    out = {}
    for v in variants:
        rows = []
        for s in range(seeds):
            perms, info = VARIANTS[v](P, seed=s)
            bal = rwm.apply_permutation(P.ph.spec, perms, P.pb)
            diff = max(float(np.abs(P.pa[k].astype(np.float64) - bal[k]).max()) for k in P.pa)
            exact = all(np.array_equal(ref[k], bal[k]) for k in P.pa)
            rows.append({"seed": s, "objective": round(P.ph.objective(perms), 4), "max_abs_diff": diff,
                         "recovered": bool(exact)})
        out[v] = rows
        objs = [r["objective"] for r in rows]
        print(f"  {key:36s} {v:18s} objective {min(objs):.2f}..{max(objs):.2f}  recovered "
              f"{sum(r['recovered'] for r in rows)}/{len(rows)}; max|A-π(B)| per seed: "
              + " ".join(f"{r['max_abs_diff']:.2g}" for r in rows), flush=True)
    return out


def residual_breakdown(P: Pair) -> dict:
    """At the identity: the residual group's similarity matrix split by the
    kind of member (anchored: other axes permuted by no group; vector: 1-D;
    attention / ffn: other axis in a heads / FFN group), each part's spread
    after double centring (row and column means removed; what a LAP sees)."""
    prob = P.ph
    gi = prob.index["residual"]
    g = prob.spec.groups[gi]
    ga = group_axes(prob.spec)
    parts = {}
    for m in g.members:
        wa = np.moveaxis(prob.a[m.tensor], m.axis, 0).reshape(g.size, -1).astype(np.float64)
        wb = np.moveaxis(prob.b[m.tensor], m.axis, 0).reshape(g.size, -1).astype(np.float64)
        nd = prob.a[m.tensor].ndim
        kinds = {prob.spec.groups[o].kind for ax in range(nd) if ax != m.axis for o in ga.get((m.tensor, ax), ())}
        key = "vector" if nd == 1 else "anchored" if not kinds else "ffn" if "ffn" in kinds else "attention"
        parts[key] = parts.get(key, 0) + wa @ wb.T
    out = {}
    for k, S in parts.items():
        D = S - S.mean(0, keepdims=True) - S.mean(1, keepdims=True) + S.mean()
        out[k] = round(float(D.std()), 4)
    return out


# =========================================================================== report
ORDER = ["polymerge", "baseline", "perhead", "nested", "shared_nested", "frob", "cross", "resfirst",
         "anc_raw", "anc", "anc_prop_raw", "anc_prop", "anc_prop_init", "anc_plain", "anc_shared", "anc_shared_nested",
         "anc_freeze", "anc_freeze_shared", "anc_cos", "anc_matrices", "actmatch", "act_then_descent", "act_residual",
         "anc_prop+ortho", "actmatch+ortho"]


def report(paths: list[Path]) -> str:
    """Markdown tables from the JSON files of earlier runs (merged)."""
    pairs, restarts_, recovery_ = {}, {}, {}
    for p in paths:
        d = json.loads(Path(p).read_text())
        for pid, r in d.get("pairs", {}).items():
            q = pairs.setdefault(pid, {"variants": {}})
            q.setdefault("naive", r.get("naive"))
            q["variants"].update(r.get("variants", {}))
        for pid, r in d.get("restarts", {}).items():
            restarts_.setdefault(pid, {}).update(r)
        recovery_.update(d.get("recovery", {}))
    out = []
    # 1. every variant, group-order seed 0, full path
    out.append("### Every variant, group-order seed 0 (11-point path, held-out loss)\n")
    out.append("| pair | variant | objective | naive barrier | aligned barrier | % of naive | midpoint loss | heads churn % (layer 0/1/2) |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|")
    for pid, r in pairs.items():
        n = r["naive"]
        out.append(f"| {pid} | naive | {n['objective']:.1f} | {n['barrier']:.3f} | – | 100% | {n['midpoint']:.3f} | – |")
        for v in ORDER:
            m = r["variants"].get(v)
            if m is None:
                continue
            hc = fmt_churn(m["heads_churn"]) if m.get("heads_churn") else "(rotated)"
            out.append(f"| {pid} | {v} | {m['objective']:.1f} | {n['barrier']:.3f} | {m['barrier']:.3f} | "
                       f"{100 * m['barrier'] / n['barrier']:.0f}% | {m['midpoint']:.3f} | {hc} |")
    # 2. summary: mean % of naive per family
    out.append("\n### Summary: aligned barrier as % of naive, mean over the three pairs of a family\n")
    out.append("Seed 0: the 11-point barrier of the run above. 8 seeds: the midpoint excess "
               "L(½) − (L(A)+L(B))/2 (one evaluation per run; in 138 of the 150 seed-0 paths the barrier sits at α = ½, "
               "in the others the midpoint excess is at most 11% below it) "
               "of eight descents with group-order seeds 0–7, as % of the naive one: their mean, and the run "
               "with the highest objective among the 8 (what `--restarts 8` would return).\n")
    out.append("| variant | GPT-2 seed 0 | GPT-2 8 seeds: mean (min–max) | GPT-2 best-objective of 8 | LLaMA seed 0 | LLaMA 8 seeds: mean (min–max) | LLaMA best-objective of 8 |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for v in ORDER:
        cells = [v]
        for fam in ("gpt2", "llama"):
            pids = [p for p in pairs if p.startswith(fam + "/")]
            b = [100 * pairs[p]["variants"][v]["barrier"] / pairs[p]["naive"]["barrier"] for p in pids if v in pairs[p]["variants"]]
            cells.append(f"{np.mean(b):.0f}%" if len(b) == len(pids) and b else "–")
            means, mins, maxs, bests = [], [], [], []
            for p in pids:
                runs = restarts_.get(p, {}).get(v)
                if not runs:
                    continue
                nm = pairs[p]["naive"]
                nex = nm["midpoint"] - 0.5 * (nm["loss_path"][0] + nm["loss_path"][-1])
                e = np.array([x["mid_excess"] for x in runs]) / nex * 100
                o = np.array([x["objective"] for x in runs])
                means.append(e.mean()); mins.append(e.min()); maxs.append(e.max()); bests.append(e[np.argmax(o)])
            if len(means) == len(pids) and means:
                cells.append(f"{np.mean(means):.0f}% ({np.mean(mins):.0f}–{np.mean(maxs):.0f})")
                cells.append(f"{np.mean(bests):.0f}%")
            else:
                cells += ["–", "–"]
        out.append("| " + " | ".join(cells) + " |")
    # 3. objective vs barrier across restarts
    out.append("\n### Does a higher objective mean a lower barrier? (8 descents per pair and variant)\n")
    out.append("Spearman rank correlation between objective and midpoint excess over the 8 runs "
               "(negative = a higher objective goes with a lower barrier); '=' when all runs reached one objective.\n")
    vs = [v for v in ORDER if any(v in restarts_.get(p, {}) for p in pairs)]
    out.append("| pair | " + " | ".join(vs) + " |")
    out.append("|---|" + "---:|" * len(vs))
    from scipy.stats import spearmanr
    for p in pairs:
        cells = []
        for v in vs:
            runs = restarts_.get(p, {}).get(v)
            if not runs:
                cells.append("–")
                continue
            o = [x["objective"] for x in runs]
            e = [x["mid_excess"] for x in runs]
            cells.append("=" if max(o) - min(o) < 1e-6 else f"{spearmanr(o, e).correlation:+.2f}")
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    # 4. recovery
    if recovery_:
        out.append("\n### Permuted copies: exact recovery at group-order seeds 0–9\n")
        out.append("B = A with a random permutation in every group (`permuted`, `*_permuted`), with independent "
                   "per-head permutations (`*per_head`), or permuted + 5% noise (`noisy`). Cell: seeds (0–9) whose π(B) "
                   "equals A exactly (noisy: equals B under the true permutation). `fixtures/transformers/*` are "
                   "random-init models; `trained_gpt2/*` is the trained GPT-2 seed 0.\n")
        vs = [v for v in ORDER if any(v in r for r in recovery_.values())]
        out.append("| case | " + " | ".join(vs) + " |")
        out.append("|---|" + "---:|" * len(vs))
        for case, r in recovery_.items():
            cells = []
            for v in vs:
                rows = r.get(v)
                if not rows:
                    cells.append("–")
                else:
                    cells.append(f"{sum(x['recovered'] for x in rows)}/{len(rows)}")
            out.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# =========================================================================== main
def fmt_churn(hc):
    return "/".join(f"{int(round(100 * c))}" for c in hc)


def markdown(results: dict) -> str:
    lines = ["| pair | variant | objective | naive barrier | aligned barrier | % of naive | midpoint loss | heads churn % (per layer) | s |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for pid, r in results["pairs"].items():
        nb = r["naive"]["barrier"]
        lines.append(f"| {pid} | naive | {r['naive']['objective']:.1f} | {nb:.3f} | – | 100% | {r['naive']['midpoint']:.3f} | – | – |")
        for v, m in r["variants"].items():
            lines.append(f"| {pid} | {v} | {m['objective']:.1f} | {nb:.3f} | {m['barrier']:.3f} | "
                         f"{100 * m['barrier'] / nb:.0f}% | {m['midpoint']:.3f} | {fmt_churn(m['heads_churn'])} | {m['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trained", type=Path, default=ROOT / "fixtures" / "trained")
    ap.add_argument("--families", default="gpt2,llama")
    ap.add_argument("--pairs", default="0-1,0-2,1-2")
    ap.add_argument("--variants", default="polymerge,baseline,perhead,nested,anc,anc_prop,actmatch")
    ap.add_argument("--restarts", type=int, default=0, help="restart experiment: N descents per pair and restart variant (seeds 0..N-1), midpoint only")
    ap.add_argument("--restart-variants", default="anc,baseline", help="variants of the restart experiment")
    ap.add_argument("--polymerge", default=str(ROOT / "target" / "release" / "polymerge"))
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "head_matching")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--md-out", type=Path)
    ap.add_argument("--recovery", action="store_true",
                    help="exact-recovery check on permuted copies (fixtures/transformers, trained GPT-2 seed0_permuted*)")
    ap.add_argument("--residual-breakdown", action="store_true",
                    help="diagnostic: the residual group's similarity at the identity split by member kind")
    ap.add_argument("--ortho", action="store_true",
                    help="diagnostic: the given variants followed by orthogonal within-head alignment (not a permutation)")
    ap.add_argument("--recovery-only", help="substrings of recovery cases to run")
    ap.add_argument("--report", help="comma-separated JSON files of earlier runs: print (and --md-out) the tables, run nothing")
    args = ap.parse_args()
    if args.report:
        md = report([Path(x) for x in args.report.split(",")])
        print(md)
        if args.md_out:
            args.md_out.write_text(md)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(sys.argv), "trained": str(args.trained), "pairs": {}, "restarts": {}}
    if args.json_out and args.json_out.exists():
        results = json.loads(args.json_out.read_text())
        results.setdefault("restarts", {})
    variants = [v for v in args.variants.split(",") if v]
    if args.residual_breakdown:
        for fam in args.families.split(","):
            fam_dir = args.trained / fam
            for pr in args.pairs.split(","):
                i, j = (int(x) for x in pr.split("-"))
                P = Pair(fam_dir / f"seed{i}", fam_dir / f"seed{j}", f"{fam}/seed{i}~seed{j}", args.polymerge, None, args.work, fam)
                b = residual_breakdown(P)
                results["pairs"].setdefault(P.id, {"variants": {}})["residual_breakdown"] = b
                print(f"{P.id}: residual similarity at the identity, spread after double centring: {b}", flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=1, default=_np))
        return 0
    if args.ortho:
        for fam in args.families.split(","):
            fam_dir = args.trained / fam
            ev = LMEval(fam_dir / "seed0")
            for pr in args.pairs.split(","):
                i, j = (int(x) for x in pr.split("-"))
                P = Pair(fam_dir / f"seed{i}", fam_dir / f"seed{j}", f"{fam}/seed{i}~seed{j}", args.polymerge, ev, args.work, fam)
                r = results["pairs"].setdefault(P.id, {"variants": {}})
                if "naive" not in r:
                    r["naive"] = P.measure(P.ph.identity())
                for v in variants:
                    perms, _ = VARIANTS[v](P)
                    bal = rwm.apply_permutation(P.ph.spec, perms, P.pb)
                    bo = orthogonal_heads(ev, P.pa, bal)
                    lb = P._loss(bo)
                    if abs(lb - P.loss_b) > 1e-3:
                        raise SystemExit(f"{P.id}: rotated B computes another function ({lb} vs {P.loss_b})")
                    path = ev.path(P.pa, bo, ends=(P.loss_a, P.loss_b))
                    m = {"barrier": path["barrier"], "midpoint": path["midpoint"], "loss_path": path["loss"],
                         "objective": round(rwm.objective(P.ph.a, bo), 4), "heads_churn": [], "seconds": 0.0,
                         "loss_b_rotated_minus_b": round(lb - P.loss_b, 7)}
                    r["variants"][v + "+ortho"] = m
                    print(f"{P.id} {v}+ortho: objective {m['objective']:.1f} barrier {m['barrier']:.4f} "
                          f"({100 * m['barrier'] / r['naive']['barrier']:.0f}%)", flush=True)
                    if args.json_out:
                        args.json_out.write_text(json.dumps(results, indent=1, default=_np))
        return 0
    if args.recovery:
        rec = results.setdefault("recovery", {})
        TF = ROOT / "fixtures/transformers"
        cases = [(TF / f"{f}/a", TF / f"{f}/{c}", f"{f}/{c}", TF / f"{f}/perm.json" if c == "noisy" else None)
                 for f in ("bert", "gpt2", "llama", "qwen2") for c in ("permuted", "noisy")]
        cases.append((TF / "llama/a", TF / "llama/permuted_per_head", "llama/permuted_per_head", None))
        cases += [(args.trained / "gpt2/seed0", args.trained / f"gpt2/{c}", f"trained_gpt2/{c}", None)
                  for c in ("seed0_permuted", "seed0_permuted_per_head")]
        only = args.recovery_only.split(",") if args.recovery_only else None
        for a, b, key, truth in cases:
            if only and not any(o in key for o in only):
                continue
            rec.setdefault(key, {}).update(recovery(a, b, key, args.polymerge, args.work, variants, 10, truth))
            if args.json_out:
                args.json_out.write_text(json.dumps(results, indent=1, default=_np))
        return 0
    for fam in args.families.split(","):
        fam_dir = args.trained / fam
        ev = LMEval(fam_dir / "seed0")
        for pr in args.pairs.split(","):
            i, j = (int(x) for x in pr.split("-"))
            P = Pair(fam_dir / f"seed{i}", fam_dir / f"seed{j}", f"{fam}/seed{i}~seed{j}", args.polymerge, ev, args.work, fam)
            r = results["pairs"].setdefault(P.id, {"variants": {}})
            r["sha256"] = {d.name: rwm_sha(d) for d in (P.a_dir, P.b_dir)}
            if "naive" not in r:
                r["naive"] = P.measure(P.ph.identity())
            print(f"{P.id}: L(A) {P.loss_a:.4f} L(B) {P.loss_b:.4f} naive barrier {r['naive']['barrier']:.4f} "
                  f"midpoint {r['naive']['midpoint']:.4f} objective {r['naive']['objective']:.1f}", flush=True)
            for v in variants:
                t = time.perf_counter()
                perms, info = VARIANTS[v](P)
                sec = time.perf_counter() - t
                m = P.measure(perms)
                m.update(info)
                m["seconds"] = round(sec, 2)
                r["variants"][v] = m
                print(f"  {v:14s} obj {m['objective']:9.2f} barrier {m['barrier']:.4f} "
                      f"({100 * m['barrier'] / r['naive']['barrier']:.0f}%) mid {m['midpoint']:.4f} "
                      f"heads churn {fmt_churn(m['heads_churn'])} {sec:.1f}s {info}", flush=True)
                if args.json_out:
                    args.json_out.write_text(json.dumps(results, indent=1, default=_np))
            if args.restarts:
                rs = results["restarts"].setdefault(P.id, {})
                for fn in args.restart_variants.split(","):
                    rs[fn] = restarts(P, args.restarts, fn)
                    for m in rs[fn]:
                        print(f"  restart {fn} seed {m['seed']}: obj {m['objective']:.2f} mid excess {m['mid_excess']:.4f} "
                              f"heads churn {fmt_churn(m['heads_churn'])}", flush=True)
            if args.json_out:
                args.json_out.write_text(json.dumps(results, indent=1, default=_np))
    md = markdown(results)
    print(md)
    if args.md_out:
        args.md_out.write_text(md)
    return 0


def rwm_sha(d: Path) -> str:
    import hashlib

    return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()[:16]


def _np(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


if __name__ == "__main__":
    sys.exit(main())
