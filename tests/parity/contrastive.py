"""Reference outputs for the OpenCLIP and SigLIP parity tests (tests/parity.rs), called from
reference.py: tiny random-weight models written in the layouts users download, reloaded the way
users load them (open_clip's `local-dir:` loader; transformers' from_pretrained), and their
outputs on random inputs."""
import json, os, shutil
import torch
from safetensors.torch import save_file

PROMPTS = ["a photo of a cat", "A Photo Of The Dog.", "a blurry photo of one bird bird bird bird "
           "bird bird bird bird bird bird bird bird", ""]


def pooled(o):
    return o if isinstance(o, torch.Tensor) else o.pooler_output


def randomize(m):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)


def open_clip_reference(out, io):
    """OpenCLIP ViT + text transformer: quick_gelu, safetensors; and GELU, the PyTorch pickle."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    for name, quick, pickle in [("open_clip", True, False), ("open_clip_bin", False, True)]:
        cfg = {"embed_dim": 24, "quick_gelu": quick,
               "vision_cfg": {"image_size": 30, "layers": 2, "width": 40, "head_width": 10,
                              "patch_size": 6, "mlp_ratio": 1.3},
               "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 4,
                            "layers": 2}}
        m = open_clip.CLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]),
                           CLIPTextCfg(**cfg["text_cfg"]), quick_gelu=quick)
        randomize(m)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        json.dump({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.4, 0.3],
                                                        "std": [0.2, 0.25, 0.3]}},
                  open(os.path.join(d, "open_clip_config.json"), "w"))
        sd = {k: v.contiguous() for k, v in m.state_dict().items()}
        if pickle:
            torch.save(sd, os.path.join(d, "open_clip_pytorch_model.bin"))
        else:
            save_file(sd, os.path.join(d, "open_clip_model.safetensors"))
        # as a user loads it
        m, _, pre = open_clip.create_model_and_transforms("local-dir:" + d)
        m.eval()
        pixels = torch.randn(2, 3, 30, 30)
        # open_clip pools at the largest id (the end-of-text token)
        ids = torch.tensor([[97, 5, 17, 98] + [0] * 12, [97, 3, 60, 4, 9, 98] + [0] * 10])
        with torch.no_grad():
            io[f"{name}.pixels"] = pixels
            io[f"{name}.ids"] = ids.to(torch.int64)
            io[f"{name}.image"] = m.encode_image(pixels)
            io[f"{name}.text"] = m.encode_text(ids)
    # open_clip's own tokenizer and its bundled merge list
    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    shutil.copy(bpe, os.path.join(out, "open_clip_bpe.txt.gz"))
    io["open_clip.tokens"] = open_clip.get_tokenizer("ViT-B-32")(PROMPTS).to(torch.int64)


def tiny_tokenizer(path):
    """A word-level tokenizer.json in the shape of SigLIP's (lower-casing, `</s>` appended,
    `<pad>` = 1), written by the `tokenizers` library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    words = sorted({w for p in PROMPTS for w in p.lower().replace(".", " .").split()})
    vocab = {"<unk>": 2, "<pad>": 1, "</s>": 0}
    for w in words:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                      special_tokens=[("</s>", 0)])
    tok.save(path)


def siglip_reference(out, io):
    """SiglipModel (SigLIP, SigLIP 2 at a fixed size) and Siglip2Model (NaFlex at its square
    grid): image and text features, and the sigmoid logits with the checkpoint's scale and bias;
    the tokenizer as transformers pads it (max_length)."""
    from transformers import (PreTrainedTokenizerFast, Siglip2Config, Siglip2Model, SiglipConfig,
                              SiglipModel)
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=12, projection_size=40,
                pad_token_id=1, bos_token_id=None, eos_token_id=0)
    vision = dict(hidden_size=40, intermediate_size=52, num_hidden_layers=2,
                  num_attention_heads=4, patch_size=6)
    for name, naflex in [("siglip", False), ("siglip2", True)]:
        if naflex:
            cfg = Siglip2Config(text_config=dict(text), vision_config=dict(vision, num_patches=25))
            m = Siglip2Model(cfg).eval()
        else:
            cfg = SiglipConfig(text_config=dict(text), vision_config=dict(vision, image_size=30))
            m = SiglipModel(cfg).eval()
        randomize(m)
        d = os.path.join(out, name)
        m.save_pretrained(d, safe_serialization=True)
        tiny_tokenizer(os.path.join(d, "tokenizer.json"))
        m = (Siglip2Model if naflex else SiglipModel).from_pretrained(d).eval()
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                      pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
        ids = tok(PROMPTS, padding="max_length", max_length=12, truncation=True,
                  return_tensors="pt").input_ids
        pixels = torch.randn(2, 3, 30, 30)
        with torch.no_grad():
            if naflex:
                # the processor's patches: (rows, columns, patch row, patch column, channel)
                patches = pixels.reshape(2, 3, 5, 6, 5, 6).permute(0, 2, 4, 3, 5, 1).reshape(2, 25, -1)
                vis = dict(pixel_values=patches, pixel_attention_mask=torch.ones(2, 25, dtype=torch.long),
                           spatial_shapes=torch.tensor([[5, 5], [5, 5]]))
            else:
                vis = dict(pixel_values=pixels)
            o = m(input_ids=ids, **vis)
            io[f"{name}.pixels"] = pixels
            io[f"{name}.ids"] = ids.to(torch.int64)
            io[f"{name}.image"] = pooled(m.get_image_features(**vis))
            io[f"{name}.text"] = pooled(m.get_text_features(input_ids=ids))
            io[f"{name}.logits_per_image"] = o.logits_per_image


def reference(out, io):
    json.dump(PROMPTS, open(os.path.join(out, "contrastive_prompts.json"), "w"))
    open_clip_reference(out, io)
    siglip_reference(out, io)
