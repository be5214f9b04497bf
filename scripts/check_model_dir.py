#!/usr/bin/env python3
"""Checks that a merged model directory loads with transformers and keeps a
sentence-transformers layout (issue 13, item 4). Run by hand, not in CI:

    /work/venv/bin/python scripts/check_model_dir.py --polymerge target/release/polymerge

Builds two tiny BERT sentence-transformers-style directories with
transformers (different seeds; `save_pretrained`, plus `modules.json`,
`1_Pooling/config.json`, `2_Normalize/` and a trainer's `optimizer.pt`),
merges them with `polymerge avg A B -o merged/`, loads `merged/` with
`transformers.AutoModel`, pools as `merged/1_Pooling/config.json` says, and
compares the embeddings with those of a model holding the PyTorch average
(`(a.float() + b.float()) / 2`) of the two state dicts. Exits 1 on any
mismatch.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertConfig, BertModel


def build(path, seed):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = BertModel(config, add_pooling_layer=False)
    model.save_pretrained(path)  # model.safetensors + config.json
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
            f,
        )
    os.makedirs(os.path.join(path, "1_Pooling"))
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, f)
    os.makedirs(os.path.join(path, "2_Normalize"))
    torch.save({"state": {}}, os.path.join(path, "optimizer.pt"))


def embed(model, model_dir, ids, mask):
    with open(os.path.join(model_dir, "1_Pooling", "config.json")) as f:
        pooling = json.load(f)
    assert pooling["pooling_mode_mean_tokens"], pooling
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1)
    if os.path.isdir(os.path.join(model_dir, "2_Normalize")):
        e = torch.nn.functional.normalize(e, dim=-1)
    return e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--polymerge", default="target/release/polymerge")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b, merged = (os.path.join(tmp, n) for n in ("a", "b", "merged"))
        build(a, 0)
        build(b, 1)
        subprocess.run(
            [args.polymerge, "avg", a, b, "-o", merged, "--no-basin-check", "-q"], check=True
        )
        listing = sorted(
            os.path.relpath(os.path.join(r, n), merged)
            for r, ds, fs in os.walk(merged)
            for n in ds + fs
        )
        print("merged directory:", " ".join(listing))
        for need in ("1_Pooling/config.json", "2_Normalize", "modules.json", "config.json"):
            assert need in listing, f"missing {need}"
        assert "optimizer.pt" not in listing, "training state was copied"

        sa, sb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
        avg = {k: ((sa[k].float() + sb[k].float()) / 2).to(sa[k].dtype) for k in sa}
        sm = load_file(os.path.join(merged, "model.safetensors"))
        exact = all(torch.equal(avg[k], sm[k]) for k in avg)
        print(f"tensors: {len(sm)}, bit-identical to the torch average: {exact}")

        ref = BertModel.from_pretrained(a, add_pooling_layer=False)
        ref.load_state_dict(avg)
        ref.eval()
        got = AutoModel.from_pretrained(merged, add_pooling_layer=False)
        got.eval()
        torch.manual_seed(2)
        ids = torch.randint(0, 64, (4, 12))
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        mask[3, 3:] = 0
        e_ref = embed(ref, a, ids, mask)
        e_got = embed(got, merged, ids, mask)
        diff = (e_ref - e_got).abs().max().item()
        print(f"embeddings {tuple(e_got.shape)}: max |merged - torch average| = {diff:.3e}")
        ok = exact and diff == 0.0
        print("OK" if ok else "MISMATCH")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
