//! Permutation specs: which axis of which tensor each permutation group acts
//! on (Git Re-Basin's `axes_to_perm`, Ainsworth et al. 2022), in a JSON
//! format users can read, edit and pass back with `--spec`.
//!
//! A group of `size` units acts on each of its members, an axis of a tensor.
//! Along that axis a member covers `repeat × size × block` positions starting
//! at `start`; unit `u` of repetition `r` owns positions
//! `start + ((r·size + u)·block) .. +block`. So:
//! - plain hidden units: `block = 1, repeat = 1` (rows of `fc1.weight`);
//! - attention heads: `block = head_dim` (whole heads move);
//! - dimensions inside every head: `size = head_dim, repeat = n_heads`;
//! - a fused QKV axis: three members with `start = 0, d, 2d`;
//! - the flatten of a conv's channels into a Linear: `block = H·W`.
//!
//! Applying group permutation `p` means: the output's unit `u` is the input's
//! unit `p[u]` (`W1' = W1[p, :]`, `W2' = W2[:, p]`). Maps of groups that act
//! on the same axis are composed in spec order (`M = m_1 ∘ m_2 ∘ …`, output
//! position → stored position): an earlier group acts on the stored
//! positions, a later one moves the result. Nested groups (heads and
//! within-head dimensions shared by all heads) commute; a per-head group
//! listed before the head group follows its head (weight matching relabels
//! such groups, see `alignment`).

pub mod families;
pub mod infer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, PermError, Result, SpecError, UsageError};
use crate::permute::{GroupPerms, ModelPermutation, TensorPermutation, is_permutation};

/// Largest similarity matrix (bytes) weight matching builds for a group
/// whose tensors hold far fewer values than the matrix (see
/// [`PermutationSpec::validate`]): 256 MiB.
pub const MAX_SIMILARITY_BYTES: usize = 256 << 20;
/// Most pairs of groups that may share tensors (Σ over tensors of the
/// square of the number of groups acting on it).
pub const MAX_GROUP_PAIRS: usize = 1 << 24;

/// The `format` tag of spec files this version reads and writes.
pub const SPEC_FORMAT: &str = "polymerge-spec/1";
/// The `format` tag of permutation files (`--save-perm`, `--perm`).
pub const PERM_FORMAT: &str = "polymerge-perm/1";

fn one() -> usize {
    1
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// One (tensor, axis) a group acts on, with its block layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AxisMember {
    pub tensor: String,
    pub axis: usize,
    /// First axis position covered (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start: usize,
    /// Consecutive positions per unit (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub block: usize,
    /// How many times the `size × block` pattern repeats (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeat: usize,
    /// A buffer (BatchNorm `running_mean`/`running_var`), not a weight:
    /// permuted with its group but left out of the matching objective and
    /// of the similarity matrices (running statistics are large, positive
    /// and alike across runs, so they would dominate what weight matching
    /// maximises without saying which units compute the same function).
    #[serde(default, skip_serializing_if = "is_false")]
    pub buffer: bool,
}

impl AxisMember {
    /// A plain member: unit `u` is axis position `u`.
    pub fn plain(tensor: impl Into<String>, axis: usize) -> Self {
        Self {
            tensor: tensor.into(),
            axis,
            start: 0,
            block: 1,
            repeat: 1,
            buffer: false,
        }
    }

    /// Axis positions covered for a group of `size` units.
    pub fn span(&self, size: usize) -> usize {
        self.repeat * size * self.block
    }

    /// Axis position of `(repetition r, unit u, offset i in block)`.
    pub fn position(&self, size: usize, r: usize, u: usize, i: usize) -> usize {
        self.start + (r * size + u) * self.block + i
    }
}

/// A permutation group: `size` units that may be reordered together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermGroup {
    pub name: String,
    pub size: usize,
    /// What kind of symmetry this is (`hidden`, `ffn`, `heads`,
    /// `head_dims`, `residual`, `channels` …), used by `--groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub members: Vec<AxisMember>,
}

/// A whole permutation spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermutationSpec {
    pub format: String,
    /// The architecture the spec was inferred for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    pub groups: Vec<PermGroup>,
    /// Caveats of an inferred spec a user should read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl PermutationSpec {
    /// An empty spec.
    pub fn new(architecture: Option<String>, groups: Vec<PermGroup>) -> Self {
        Self {
            format: SPEC_FORMAT.into(),
            architecture,
            groups,
            notes: Vec::new(),
        }
    }

    /// Tensors that are members only as buffers ([`AxisMember::buffer`]):
    /// they are permuted but do not count in the matching objective.
    pub fn buffer_tensors(&self) -> HashSet<&str> {
        let members = || self.groups.iter().flat_map(|g| &g.members);
        let weights: HashSet<&str> = members()
            .filter(|m| !m.buffer)
            .map(|m| m.tensor.as_str())
            .collect();
        members()
            .filter(|m| m.buffer && !weights.contains(m.tensor.as_str()))
            .map(|m| m.tensor.as_str())
            .collect()
    }

    /// Marks the members on BatchNorm running statistics
    /// ([`infer::RUNNING_STATS`]) as buffers.
    pub fn mark_running_stats(&mut self) {
        for m in self.groups.iter_mut().flat_map(|g| &mut g.members) {
            if infer::is_running_stat(&m.tensor) {
                m.buffer = true;
            }
        }
    }

    /// The identity permutation of every group.
    pub fn identity(&self) -> GroupPerms {
        GroupPerms::identity(self.groups.iter().map(|g| g.size))
    }

    /// Reads a spec file.
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |source: SpecError| Error::Spec {
            path: Some(path.to_path_buf()),
            source: Box::new(source),
        };
        let text = crate::read_side_file(path)?;
        let spec: PermutationSpec =
            serde_json::from_str(&text).map_err(|e| fail(SpecError::Json(e)))?;
        if spec.format != SPEC_FORMAT {
            return Err(fail(SpecError::UnknownFormat(spec.format)));
        }
        Ok(spec)
    }

    /// Keeps only the groups whose kind (or name) is in `kinds`.
    pub fn select(&mut self, kinds: &[String]) -> Result<()> {
        let known: HashSet<&str> = self
            .groups
            .iter()
            .filter_map(|g| g.kind.as_deref())
            .collect();
        for k in kinds {
            if !known.contains(k.as_str()) && !self.groups.iter().any(|g| &g.name == k) {
                let mut names: Vec<String> = known.into_iter().map(str::to_string).collect();
                names.sort();
                return Err(Error::spec(SpecError::NoSuchKind {
                    kind: k.clone(),
                    known: names,
                }));
            }
        }
        self.groups.retain(|g| {
            kinds
                .iter()
                .any(|k| g.kind.as_deref() == Some(k.as_str()) || &g.name == k)
        });
        Ok(())
    }

    /// Checks the spec against a checkpoint: every tensor exists and is a
    /// float tensor, axes are in range, each member's span fits its axis.
    pub fn validate(&self, ckpt: &Checkpoint) -> Result<()> {
        let fail = |e: SpecError| Err(Error::spec(e));
        let mut names = HashSet::new();
        for g in &self.groups {
            let group = || g.name.clone();
            let mut values = 0usize;
            if !names.insert(g.name.as_str()) {
                return fail(SpecError::Duplicate(group()));
            }
            if g.size == 0 {
                return fail(SpecError::ZeroSize(group()));
            }
            if g.members.is_empty() {
                return fail(SpecError::NoMembers(group()));
            }
            for m in &g.members {
                let tensor = || m.tensor.clone();
                let Some(t) = ckpt.get(&m.tensor) else {
                    return fail(SpecError::UnknownTensor {
                        group: group(),
                        tensor: tensor(),
                        checkpoint: ckpt.source().to_path_buf(),
                    });
                };
                if !dtype::is_float(t.dtype) {
                    return fail(SpecError::NotFloat {
                        group: group(),
                        tensor: tensor(),
                        dtype: t.dtype,
                    });
                }
                if m.axis >= t.shape.len() {
                    return fail(SpecError::Axis {
                        group: group(),
                        tensor: tensor(),
                        axes: t.shape.len(),
                        axis: m.axis,
                    });
                }
                if m.block == 0 || m.repeat == 0 {
                    return fail(SpecError::Block {
                        group: group(),
                        tensor: tensor(),
                    });
                }
                let len = t.shape[m.axis];
                // Numbers come from a file: checked arithmetic, so that a
                // huge start, block or repeat is an error, not a wrap.
                let need = m
                    .repeat
                    .checked_mul(g.size)
                    .and_then(|n| n.checked_mul(m.block))
                    .and_then(|n| n.checked_add(m.start));
                match need {
                    Some(need) if need <= len => {}
                    _ => {
                        return fail(SpecError::Span {
                            group: group(),
                            size: g.size,
                            tensor: tensor(),
                            axis: m.axis,
                            len,
                            start: m.start,
                            block: m.block,
                            repeat: m.repeat,
                            need: need.map_or("more than 2^64".into(), |n| n.to_string()),
                        });
                    }
                }
                // An axis of a tensor without elements (shape [2^40, 0])
                // holds no units to match, whatever its length says.
                if t.numel() == 0 {
                    return fail(SpecError::Empty {
                        group: group(),
                        tensor: tensor(),
                        shape: t.shape.clone(),
                    });
                }
                values = values.saturating_add(t.numel());
            }
            // Weight matching holds an n × n f64 similarity matrix per
            // group: refuse one that dwarfs the weights it is computed from
            // (real groups hold at least about n² values: n × d_in rows).
            let matrix = g.size.saturating_mul(g.size);
            if matrix.saturating_mul(8) > MAX_SIMILARITY_BYTES && matrix / 16 > values {
                return fail(SpecError::Degenerate {
                    group: group(),
                    reason: format!(
                        "{} units need a {}×{} similarity matrix ({} MiB) but the group's tensors hold only {} values",
                        g.size,
                        g.size,
                        g.size,
                        matrix.saturating_mul(8) >> 20,
                        values
                    ),
                });
            }
        }
        // Groups sharing a tensor are each other's neighbours in weight
        // matching (a list per group): thousands of groups on one tensor
        // make that quadratic.
        let mut touching: HashMap<&str, HashSet<usize>> = HashMap::new();
        for (gi, g) in self.groups.iter().enumerate() {
            for m in &g.members {
                touching.entry(m.tensor.as_str()).or_default().insert(gi);
            }
        }
        let pairs: usize = touching
            .values()
            .map(|s| s.len().saturating_mul(s.len()))
            .fold(0, usize::saturating_add);
        if pairs > MAX_GROUP_PAIRS
            && let Some((tensor, set)) = touching.iter().max_by_key(|(_, s)| s.len())
        {
            return fail(SpecError::Degenerate {
                group: self.groups[*set.iter().min().unwrap_or(&0)].name.clone(),
                reason: format!(
                    "{} groups act on tensor `{tensor}` ({} pairs of groups share tensors, more than {MAX_GROUP_PAIRS}); merge groups that move the same units",
                    set.len(),
                    pairs
                ),
            });
        }
        Ok(())
    }

    /// Builds per-tensor index maps from one permutation per group.
    /// `skip` leaves one group out (identity), as weight matching needs.
    pub fn model_permutation(
        &self,
        shape_of: &dyn Fn(&str) -> Result<Vec<usize>>,
        perms: &GroupPerms,
        skip: Option<usize>,
    ) -> Result<ModelPermutation> {
        let mut out: HashMap<String, TensorPermutation> = HashMap::new();
        for (gi, g) in self.groups.iter().enumerate() {
            if Some(gi) == skip {
                continue;
            }
            let p = &perms[gi];
            for m in &g.members {
                let shape = shape_of(&m.tensor)?;
                let tp = out
                    .entry(m.tensor.clone())
                    .or_insert_with(|| TensorPermutation {
                        axes: vec![None; shape.len()],
                    });
                let len = shape[m.axis];
                let map = tp.axes[m.axis].get_or_insert_with(|| (0..len).collect());
                // new_map[pos] = old_map[m_g(pos)]
                let old = map.clone();
                for r in 0..m.repeat {
                    for (u, &pu) in p.iter().enumerate() {
                        for i in 0..m.block {
                            map[m.position(g.size, r, u, i)] = old[m.position(g.size, r, pu, i)];
                        }
                    }
                }
            }
        }
        Ok(ModelPermutation { tensors: out })
    }
}

/// Where the permutation spec of a run comes from.
#[derive(Clone, Debug, Default)]
pub enum SpecSource {
    /// Inferred from the first checkpoint's tensor names ([`infer::infer`]).
    #[default]
    Infer,
    /// A spec file ([`PermutationSpec::load`]).
    File(PathBuf),
    /// A spec already in memory.
    Given(PermutationSpec),
}

/// The spec of `source` for `ckpts` (inferred from the first one), reduced
/// to the groups whose kind or name is in `groups`, and validated against
/// every checkpoint.
pub fn resolve(
    source: &SpecSource,
    groups: Option<&[String]>,
    ckpts: &[&Checkpoint],
) -> Result<PermutationSpec> {
    let first = ckpts.first().ok_or(UsageError::NoCheckpoint)?;
    let mut spec = match source {
        SpecSource::Infer => infer::infer(first)?,
        SpecSource::File(p) => PermutationSpec::load(p)?,
        SpecSource::Given(s) => s.clone(),
    };
    if let Some(g) = groups {
        spec.select(g)?;
    }
    for c in ckpts {
        spec.validate(c).map_err(|e| Error::SpecCheck {
            path: c.source().to_path_buf(),
            source: Box::new(e),
        })?;
    }
    Ok(spec)
}

/// Saved permutations: one per group, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PermFile {
    pub format: String,
    pub groups: BTreeMap<String, Vec<usize>>,
    /// The spec the permutations belong to (so `permute` needs no `--spec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PermutationSpec>,
}

impl PermFile {
    /// Reads a permutation file.
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |source: PermError| Error::Perm {
            path: path.to_path_buf(),
            source,
        };
        let text = crate::read_side_file(path)?;
        let f: PermFile = serde_json::from_str(&text).map_err(|e| fail(PermError::Json(e)))?;
        if f.format != PERM_FORMAT {
            return Err(fail(PermError::UnknownFormat(f.format)));
        }
        Ok(f)
    }

    /// Orders the saved permutations as `spec`'s groups, checking sizes.
    /// Groups of the spec missing from the file stay identity.
    pub fn perms_for(&self, spec: &PermutationSpec, path: &Path) -> Result<GroupPerms> {
        let fail = |source: PermError| Error::Perm {
            path: path.to_path_buf(),
            source,
        };
        for name in self.groups.keys() {
            if !spec.groups.iter().any(|g| &g.name == name) {
                return Err(fail(PermError::UnknownGroup(name.clone())));
            }
        }
        spec.groups
            .iter()
            .map(|g| match self.groups.get(&g.name) {
                None => Ok((0..g.size).collect()),
                Some(p) if p.len() != g.size => Err(fail(PermError::Size {
                    group: g.name.clone(),
                    entries: p.len(),
                    units: g.size,
                })),
                Some(p) if !is_permutation(p) => Err(fail(PermError::NotPermutation {
                    group: g.name.clone(),
                    size: g.size,
                })),
                Some(p) => Ok(p.clone()),
            })
            .collect::<Result<Vec<_>>>()
            .map(GroupPerms::new)
    }
}
