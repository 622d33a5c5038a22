#!/usr/bin/env python3
"""`vlal extract` images/s next to PyTorch on the same machine, in one run.

Builds a random-weight CLIP ViT-B/32 (transformers' default CLIPConfig) with save_pretrained,
writes N generated JPEGs, then times
  * PyTorch: PIL decode + CLIP preprocessing (bicubic shortest side 224, centre crop, CLIP
    mean/std) + CLIPModel.get_image_features, batch 32, on all cores, sequential;
  * PyTorch forward only (pre-made pixel tensors);
  * `vlal extract --student <that checkpoint>` on the same folder (decode on rayon overlapped
    with the candle forward pass), from the images/s it logs.
It also checks that both give the same embeddings (cosine per image).

Usage: python3 bench/extract_bench.py --bin target/debug/vlal [--images 256] [--work target/bench-extract]
Needs python3 with torch, transformers, safetensors, pillow.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def preprocess(path, size=224):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = round((nw - size) / 2), round((nh - size) / 2)
    img = img.crop((left, top, left + size, top + size))
    a = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug/vlal")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--work", default="target/bench-extract")
    a = ap.parse_args()

    from transformers import CLIPConfig, CLIPModel

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    work = os.path.abspath(a.work)
    ckpt = os.path.join(work, "clip-vit-b32-random")
    if not os.path.exists(os.path.join(ckpt, "model.safetensors")):
        torch.manual_seed(0)
        CLIPModel(CLIPConfig()).eval().save_pretrained(ckpt, safe_serialization=True)
    model = CLIPModel.from_pretrained(ckpt).eval()

    images = os.path.join(work, "images")
    files = []
    if not os.path.exists(images):
        rng = np.random.default_rng(0)
        for i in range(a.images):
            d = os.path.join(images, "train" if i % 4 else "test", f"class{i % 2}")
            os.makedirs(d, exist_ok=True)
            w, h = 320 + (i % 7) * 16, 240 + (i % 5) * 16
            base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
            img.save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
    for root, _, fs in os.walk(images):
        files += [os.path.join(root, f) for f in fs if f.endswith(".jpg")]
    files.sort()
    n = len(files)

    # PyTorch, end to end (decode + preprocess + forward), and forward only
    with torch.inference_mode():
        model.get_image_features(pixel_values=torch.zeros(2, 3, 224, 224))  # warm-up
        t0 = time.perf_counter()
        torch_emb = {}
        pixels = []
        for b in range(0, n, a.batch):
            chunk = files[b:b + a.batch]
            px = torch.stack([preprocess(f) for f in chunk])
            pixels.append(px)
            z = model.get_image_features(pixel_values=px)
            z = getattr(z, "pooler_output", z)  # transformers 5 returns an output object
            z = torch.nn.functional.normalize(z, dim=-1)
            for f, v in zip(chunk, z):
                torch_emb[os.path.relpath(f, images)] = v.numpy()
        t_e2e = time.perf_counter() - t0
        t0 = time.perf_counter()
        for px in pixels:
            model.get_image_features(pixel_values=px)
        t_fwd = time.perf_counter() - t0

    # vlal extract (student = the same checkpoint, image tower only)
    out = os.path.join(work, "cache")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [a.bin, "extract", "--images", images, "--out", out, "--student", ckpt,
           "--batch-size", str(a.batch)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    t_vlal_wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"vlal extract failed:\n{p.stderr}")
    imgs, secs = 0, 0.0
    for m in re.finditer(r": (\d+) images through .* in ([\d.]+) s", p.stderr):
        imgs += int(m.group(1))
        secs += float(m.group(2))
    if imgs != n:
        sys.exit(f"expected {n} images in the log, found {imgs}:\n{p.stderr}")

    # same embeddings?
    import pyarrow.parquet as pq  # noqa: E402 (optional; skip the check without pyarrow)
    cos = []
    for split in ("train", "test"):
        t = pq.read_table(os.path.join(out, "clip-vit-b32-random@local", f"{split}.parquet"))
        for sid, v in zip(t.column("sample_id").to_pylist(), t.column("vector").to_pylist()):
            cos.append(float(np.dot(np.asarray(v, dtype=np.float32), torch_emb[sid])))
    cos = np.array(cos)

    vlal_ips = n / secs
    torch_ips = n / t_e2e
    print(f"CLIP ViT-B/32 (random weights), {n} JPEGs 320-416 x 240-304 px, batch {a.batch}, "
          f"{threads} threads, torch {torch.__version__}")
    print(f"| implementation | images/s |")
    print(f"|---|---|")
    print(f"| PyTorch: PIL decode + preprocess + forward (sequential) | {torch_ips:.1f} |")
    print(f"| PyTorch: forward only | {n / t_fwd:.1f} |")
    print(f"| vlal extract (decode overlapped with forward) | {vlal_ips:.1f} |")
    print(f"| vlal extract, process wall incl. load + hashing + writing | {n / t_vlal_wall:.1f} |")
    print(f"ratio vlal / PyTorch end to end: {vlal_ips / torch_ips:.2f}")
    print(f"cosine(vlal, PyTorch) per image: min {cos.min():.5f}, mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
