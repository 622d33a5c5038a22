"""One CoOp prompt-learning step at ImageNet-100 scale in vlal (candle) and in PyTorch, in one run.

C = 100 classes, 16 context tokens, a batch of 32 cached image features; a step is the text
tower's forward over the C prompts (twice for `both`: unified + class-wise contexts), the
cross-entropy on cos/τ, the backward pass to the contexts and an SGD update. Prompts are
"X … X class number {i}." (22 tokens with SOT/EOS; both sides cut the prompts after the EOS).

    python3 bench/coop_bench.py --model DIR     # DIR: a CLIP checkpoint folder (HF layout) with
                                                # tokenizer.json or bpe_simple_vocab_16e6.txt.gz

A 200-epoch round costs epochs × ⌈|L| / 32⌉ steps. Needs torch and transformers.
"""
import argparse
import os
import re
import subprocess
import time

import torch


def torch_step_seconds(model_dir, mode, steps=2, c=100, m=16, length=22, batch=32):
    from transformers import CLIPModel
    from transformers.masking_utils import create_causal_mask

    model = CLIPModel.from_pretrained(model_dir).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tm = model.text_model
    h = tm.config.hidden_size
    eos = length - 1
    ids = torch.randint(0, 1000, (c, length))
    ids[:, 0] = tm.config.bos_token_id if tm.config.bos_token_id is not None else 0
    ids[:, eos] = tm.config.eos_token_id
    base = tm.embeddings.token_embedding(ids).detach()
    ctx = []
    if mode in ("unified", "both"):
        ctx.append(torch.nn.Parameter(0.02 * torch.randn(m, h)))
    if mode in ("class-wise", "both"):
        ctx.append(torch.nn.Parameter(0.02 * torch.randn(c, m, h)))
    opt = torch.optim.SGD(ctx, lr=0.002)
    z = torch.nn.functional.normalize(torch.randn(batch, model.config.projection_dim), dim=-1)
    y = torch.randint(0, c, (batch,))

    def features(v):
        v = v.unsqueeze(0).expand(c, m, h) if v.dim() == 2 else v
        emb = torch.cat([base[:, :1], v, base[:, 1 + m:]], dim=1)
        hidden = tm.embeddings(inputs_embeds=emb)
        mask = create_causal_mask(config=tm.config, inputs_embeds=hidden, attention_mask=None,
                                  past_key_values=None)
        out = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        x = tm.final_layer_norm(out.last_hidden_state)[:, eos]
        return torch.nn.functional.normalize(model.text_projection(x), dim=-1)

    def step():
        opt.zero_grad()
        s = sum(z @ features(v).T for v in ctx) / (len(ctx) * 0.01)
        loss = torch.nn.functional.cross_entropy(s, y)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def vlal_step_seconds(model_dir):
    env = dict(os.environ, VLAL_COOP_BENCH_DIR=os.path.abspath(model_dir))
    out = subprocess.run(
        ["cargo", "test", "--lib", "coop_step_timing", "--", "--ignored", "--nocapture"],
        env=env, capture_output=True, text=True, check=True)
    got = {}
    for mode, s in re.findall(r"(Unified|Both): .*?([0-9.]+) s per step", out.stderr):
        got[mode.lower()] = float(s)
    if len(got) != 2:
        raise SystemExit("no timings from the vlal test:\n" + out.stderr[-2000:])
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    v = vlal_step_seconds(a.model)
    for mode in ("unified", "both"):
        t = torch_step_seconds(a.model, mode)
        print(f"{mode}: vlal {v[mode]:.2f} s/step, PyTorch {t:.2f} s/step, "
              f"PyTorch/vlal = {t / v[mode]:.2f}")


if __name__ == "__main__":
    main()
