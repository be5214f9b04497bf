//! Element types: which dtypes polymerge averages, copies after checking,
//! or copies as they are. How their bytes decode and encode is
//! [`crate::kernels`]'.

use safetensors::Dtype;

/// How polymerge treats a tensor of a given dtype when merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// F32, F16, BF16: averaged with f32 accumulation.
    Float,
    /// F64: averaged with f64 accumulation.
    Double,
    /// Integer and bool tensors: copied from the first input after checking
    /// that every input holds the same bytes.
    Exact,
    /// Everything else (F8 variants, sub-byte floats): copied from the first
    /// input with a warning.
    Opaque,
}

/// Classifies a dtype.
pub fn kind(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::BOOL
        | Dtype::U8
        | Dtype::I8
        | Dtype::I16
        | Dtype::U16
        | Dtype::I32
        | Dtype::U32
        | Dtype::I64
        | Dtype::U64 => Kind::Exact,
        _ => Kind::Opaque,
    }
}

/// True for the dtypes that are averaged (F64, F32, F16, BF16).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(kind(dtype), Kind::Float | Kind::Double)
}

/// Bytes per element, for whole-byte dtypes.
pub fn size_of(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

/// Parses a user-facing dtype name (`f32`, `f16`, `bf16`, `f64`).
pub fn parse_float(name: &str) -> Option<Dtype> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Some(Dtype::F32),
        "f16" | "float16" | "half" => Some(Dtype::F16),
        "bf16" | "bfloat16" => Some(Dtype::BF16),
        "f64" | "float64" | "double" => Some(Dtype::F64),
        _ => None,
    }
}
