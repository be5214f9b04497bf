#!/usr/bin/env python3
"""Check a polymerge `avg` output against an independent numpy computation.

Needs only numpy and safetensors (no torch):

    pip install safetensors numpy
    python3 scripts/interop_check.py --output OUT.safetensors \
        --inputs A.safetensors B.safetensors C.safetensors --weights 0.2,0.3,0.5

For every tensor of the first input:

* float tensors (F64/F32/F16/BF16): the expected value is

      acc = +0.0 (f32); for each input in order: acc = acc + float32(w_i) * float32(x_i)
      avg = acc / float32(sum(weights))        # sum() over Python floats
      result = round_to_nearest_even(avg, output dtype)

  i.e. exactly PyTorch's
  ``(sum(w_i * t_i.float() for ...) / sum(w)).to(dtype)``: f32 arithmetic
  with one rounding per operation, the python-float weight and divisor are
  first rounded to f32, the accumulator starts at +0.0 (so an average of
  -0.0's is +0.0), true division (not multiplication by a reciprocal).
  The output must match bit for bit (any NaN matches any NaN).
* other tensors (ints, bool): the output must be a byte-identical copy of
  the first input's tensor.

The output's float dtype must be the first input's dtype unless
``--out-dtype`` says otherwise.  Every input must have the same tensor names
and shapes, and the output must have exactly those names.

Files are read with ``safetensors.numpy.load_file``.  numpy has no bfloat16,
so for files that contain BF16 tensors the header is parsed here (json +
struct) and BF16 data is decoded from its uint16 bit patterns; the other
tensors of such files are read with ``safetensors.safe_open(framework="numpy")``.
The hand parser is cross-checked against the library for every non-BF16 tensor.

Exit status: 0 and ``interop ok: N tensors checked`` on success, 1 with a
message naming the tensor on a mismatch, 2 on usage / unreadable input.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
NP_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
    "BF16": np.uint16,  # raw bit patterns
}
BITS = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}


class CheckError(Exception):
    pass


class InputError(Exception):
    pass


class Tensor:
    """dtype: safetensors dtype string; data: numpy array (BF16 as uint16 bits)."""

    def __init__(self, dtype: str, shape: tuple, data: np.ndarray):
        self.dtype, self.shape, self.data = dtype, tuple(shape), data


def parse_safetensors(path: str) -> dict[str, Tensor]:
    """Minimal safetensors reader (json + struct), little-endian data."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise InputError(f"{path}: file too small for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise InputError(f"{path}: header length {n} exceeds file size {len(raw)}")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: header is not JSON: {e}") from None
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in NP_DTYPES:
            raise InputError(f"{path}: tensor {name!r}: unsupported dtype {dtype}")
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= len(data):
            raise InputError(f"{path}: tensor {name!r}: data offsets {start}..{end} out of range")
        shape = tuple(info["shape"])
        arr = np.frombuffer(data[start:end], dtype=np.dtype(NP_DTYPES[dtype]).newbyteorder("<"))
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise InputError(f"{path}: tensor {name!r}: {end - start} bytes do not fit shape {list(shape)}")
        out[name] = Tensor(dtype, shape, arr.reshape(shape).astype(NP_DTYPES[dtype]))
    return out


def load(path: str) -> dict[str, Tensor]:
    manual = parse_safetensors(path)
    if any(t.dtype == "BF16" for t in manual.values()):
        lib = {}
        with safe_open(path, framework="numpy") as f:
            for name, t in manual.items():
                if t.dtype != "BF16":
                    lib[name] = f.get_tensor(name)
    else:
        lib = load_file(path)
        if sorted(lib) != sorted(manual):
            raise InputError(f"{path}: tensor names differ between safetensors and the hand parser")
    for name, arr in lib.items():
        t = manual[name]
        if arr.shape != t.shape or arr.dtype != t.data.dtype or arr.tobytes() != t.data.tobytes():
            raise InputError(f"{path}: tensor {name!r}: hand parser disagrees with safetensors.numpy")
        manual[name] = Tensor(t.dtype, t.shape, arr)
    return manual


def to_f32(t: Tensor) -> np.ndarray:
    if t.dtype == "BF16":
        return (t.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return t.data.astype(np.float32)  # exact for F16; round-to-nearest-even for F64


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even f32 -> bf16, as uint16 bits (NaN -> quiet NaN)."""
    # (np.ascontiguousarray would turn 0-d arrays into 1-d ones)
    u = np.array(x, dtype=np.float32, order="C").view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(x)
    return np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), rounded).astype(np.uint16)


def from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round f32 values to `dtype` (round-to-nearest-even); returns the raw bits."""
    if dtype == "BF16":
        return f32_to_bf16_bits(x)
    target = NP_DTYPES[dtype]
    y = np.array(x.astype(target), order="C")
    return y.view(BITS[y.dtype.itemsize])


def out_bits(t: Tensor) -> np.ndarray:
    d = np.array(t.data, order="C")
    return d if t.dtype == "BF16" else d.view(BITS[d.dtype.itemsize])


def is_nan_bits(b: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return np.isnan((b.astype(np.uint32) << np.uint32(16)).view(np.float32))
    return np.isnan(b.view(NP_DTYPES[dtype]))


def describe_bits(b, dtype: str) -> str:
    width = {"F64": 16, "F32": 8, "F16": 4, "BF16": 4}[dtype]
    arr = np.array([b], dtype=BITS[width // 2])
    if dtype == "BF16":
        val = float((arr.astype(np.uint32) << np.uint32(16)).view(np.float32)[0])
    else:
        val = float(arr.view(NP_DTYPES[dtype])[0])
    return f"0x{int(b):0{width}x} ({val!r})"


def check(output: str, inputs: list[str], weights: list[float], out_dtype: str | None) -> int:
    ins = [load(p) for p in inputs]
    out = load(output)
    ref = ins[0]
    for p, t in zip(inputs[1:], ins[1:]):
        if sorted(t) != sorted(ref):
            diff = sorted(set(t) ^ set(ref))
            raise InputError(f"{p}: tensor names differ from {inputs[0]} (e.g. {diff[0]!r})")
        for name in ref:
            if t[name].shape != ref[name].shape:
                raise InputError(f"{p}: tensor {name!r} has shape {list(t[name].shape)}, "
                                 f"{inputs[0]} has {list(ref[name].shape)}")
    for name in sorted(set(out) - set(ref)):
        raise CheckError(f"tensor {name!r}: in the output but not in the inputs")

    w32 = [np.float32(w) for w in weights]
    denom = np.float32(sum(weights))  # Python float sum, then rounded to f32
    checked = 0
    for name in sorted(ref):
        if name not in out:
            raise CheckError(f"tensor {name!r}: missing from the output")
        r, o = ref[name], out[name]
        if o.shape != r.shape:
            raise CheckError(f"tensor {name!r}: output shape {list(o.shape)}, expected {list(r.shape)}")
        if r.dtype not in FLOAT_DTYPES:
            if o.dtype != r.dtype or o.data.tobytes() != r.data.tobytes():
                raise CheckError(f"tensor {name!r}: {r.dtype} tensor is not a copy of the first input "
                                 f"(output dtype {o.dtype})")
            checked += 1
            continue
        for p, t in zip(inputs, ins):
            if t[name].dtype not in FLOAT_DTYPES:
                raise InputError(f"{p}: tensor {name!r} is {t[name].dtype}, first input has {r.dtype}")
        want_dtype = out_dtype or r.dtype
        if o.dtype != want_dtype:
            raise CheckError(f"tensor {name!r}: output dtype {o.dtype}, expected {want_dtype}")

        acc = np.zeros(r.shape, dtype=np.float32)  # +0.0, like Python's sum() start value 0
        for w, t in zip(w32, ins):
            acc = np.asarray(acc + np.asarray(w * to_f32(t[name]), dtype=np.float32), dtype=np.float32)
        avg = np.asarray(acc / denom, dtype=np.float32)
        want = from_f32(avg, want_dtype)
        got = out_bits(o)
        bad = (got != want) & ~(is_nan_bits(got, want_dtype) & is_nan_bits(want, want_dtype))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
            raise CheckError(
                f"tensor {name!r}: {int(bad.sum())} of {bad.size} elements differ; first at index "
                f"{list(idx)}: got {describe_bits(got[idx], want_dtype)}, "
                f"expected {describe_bits(want[idx], want_dtype)}")
        checked += 1
    return checked


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="polymerge output .safetensors")
    ap.add_argument("--inputs", required=True, nargs="+", help="input .safetensors files, in merge order")
    ap.add_argument("--weights", help="comma-separated weights (default: 1.0 each)")
    ap.add_argument("--out-dtype", choices=FLOAT_DTYPES,
                    help="dtype of the output's float tensors (default: the first input's)")
    args = ap.parse_args(argv)
    if args.weights is None:
        weights = [1.0] * len(args.inputs)
    else:
        try:
            weights = [float(x) for x in args.weights.split(",")]
        except ValueError:
            ap.error(f"--weights: not a comma-separated list of numbers: {args.weights!r}")
    if len(weights) != len(args.inputs):
        ap.error(f"{len(weights)} weights for {len(args.inputs)} inputs")
    if sum(weights) == 0:
        ap.error("weights sum to zero")
    try:
        with np.errstate(all="ignore"):  # overflow to inf is a legitimate result
            n = check(args.output, args.inputs, weights, args.out_dtype)
    except CheckError as e:
        print(f"interop FAILED: {e}", file=sys.stderr)
        return 1
    except (InputError, OSError) as e:
        print(f"interop error: {e}", file=sys.stderr)
        return 2
    print(f"interop ok: {n} tensors checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
