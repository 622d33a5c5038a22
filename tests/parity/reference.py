#!/usr/bin/env python3
"""Reference outputs for the parity tests (tests/parity.rs): tiny random-weight CLIPModel and
Dinov2Model from Python `transformers` (CPU torch), saved with save_pretrained, plus inputs and
the models' outputs as safetensors. Usage: reference.py OUT_DIR"""
import os, sys
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

def randomize_and_save(m, path):
    """Weights ~ N(0, 0.2) instead of the near-identity default init, so every tensor matters."""
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    m.save_pretrained(path, safe_serialization=True)

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
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))
    print(f"wrote reference models and io.safetensors to {out}")

if __name__ == "__main__":
    main(sys.argv[1])
