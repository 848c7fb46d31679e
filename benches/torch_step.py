"""One training step of the reference model (docs/reference-model.md) in PyTorch, f32, on the
CPU: the comparison for hetpar's CPU backend (scripts/bench-cpu-step.sh).

The same mathematics and shapes as hetpar's `reference-bench` model (benches/reference-bench.json):
every image through the vision encoder and projector, its rows at the sample's placeholder
positions, the causal language model, cross-entropy over the batch's targets, Adam.

    python benches/torch_step.py --threads 1 --steps 5
Prints the fastest step's time in seconds (`torch_step_s <t>`).
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def block_params(prefix, h, f, gen):
    def w(o, i):
        return (torch.rand(o, i, generator=gen) * 2 - 1) * math.sqrt(3) * 0.02

    p = {}
    for n in ("ln1", "ln2"):
        p[f"{prefix}.{n}.weight"] = torch.ones(h)
        p[f"{prefix}.{n}.bias"] = torch.zeros(h)
    for n in ("q", "k", "v", "o"):
        p[f"{prefix}.attn.{n}.weight"] = w(h, h)
        p[f"{prefix}.attn.{n}.bias"] = torch.zeros(h)
    p[f"{prefix}.mlp.fc1.weight"] = w(f, h)
    p[f"{prefix}.mlp.fc1.bias"] = torch.zeros(f)
    p[f"{prefix}.mlp.fc2.weight"] = w(h, f)
    p[f"{prefix}.mlp.fc2.bias"] = torch.zeros(h)
    return p


def linear(p, name, x):
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def norm(p, name, x):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)


def attention(p, prefix, x, heads, causal):
    # x: [batch, n, h]; per head softmax(q kᵀ / √d) v, then the output projection.
    b, n, h = x.shape
    d = h // heads

    def split(t):
        return t.view(b, n, heads, d).transpose(1, 2)

    q, k, v = (split(linear(p, f"{prefix}.attn.{m}", x)) for m in "qkv")
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if causal:
        mask = torch.ones(n, n, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    ctx = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h)
    return linear(p, f"{prefix}.attn.o", ctx)


def block(p, prefix, x, heads, causal):
    x = x + attention(p, prefix, norm(p, f"{prefix}.ln1", x), heads, causal)
    g = F.gelu(linear(p, f"{prefix}.mlp.fc1", norm(p, f"{prefix}.ln2", x)), approximate="tanh")
    return x + linear(p, f"{prefix}.mlp.fc2", g)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="benches/reference-bench.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    m = json.load(open(args.model))["modules"]
    vt, lt = m["vision"]["transformer"], m["llm"]["transformer"]
    data = json.load(open(args.model))["data"]
    B, S = data["global_batch"], data["sequence_length"]
    V = m["llm"]["vocab_size"]
    Hv, Lv, Av, Fv = vt["hidden"], vt["layers"], vt["heads"], vt["ffn_hidden"]
    H, L, A, Fl = lt["hidden"], lt["layers"], lt["heads"], lt["ffn_hidden"]
    P = m["vision"]["embedding"]["in_features"]
    Hp = m["projector"]["mlp"]["widths"][1]
    n_img = data["encoders"]["vision"]["tokens_per_item"]  # one image of n patches per sample

    gen = torch.Generator().manual_seed(0)

    def w(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1) * math.sqrt(3) * 0.02

    p = {"vision.patch.weight": w(Hv, P), "vision.patch.bias": torch.zeros(Hv),
         "vision.pos": w(m["vision"]["positions"]["max_positions"], Hv)}
    for i in range(Lv):
        p.update(block_params(f"vision.blocks.{i}", Hv, Fv, gen))
    p.update({"vision.ln_f.weight": torch.ones(Hv), "vision.ln_f.bias": torch.zeros(Hv),
              "vision.proj.fc1.weight": w(Hp, Hv), "vision.proj.fc1.bias": torch.zeros(Hp),
              "vision.proj.fc2.weight": w(H, Hp), "vision.proj.fc2.bias": torch.zeros(H),
              "llm.embed.weight": w(V, H), "llm.pos": w(S, H)})
    for i in range(L):
        p.update(block_params(f"llm.blocks.{i}", H, Fl, gen))
    p.update({"llm.ln_f.weight": torch.ones(H), "llm.ln_f.bias": torch.zeros(H),
              "llm.head.weight": w(V, H)})
    for t in p.values():
        t.requires_grad_(True)
    opt = torch.optim.Adam(p.values(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)

    # A synthetic batch as hetpar's: the image's rows at positions 1..1+n of each sample.
    tokens = torch.randint(0, V, (B, S), generator=gen)
    place = torch.zeros(B, S, dtype=torch.bool)
    place[:, 1 : 1 + n_img] = True
    targets = tokens[:, 1:].clone()
    targets[place[:, 1:]] = -100
    targets = torch.cat([targets, torch.full((B, 1), -100)], 1)
    patches = torch.rand(B, n_img, P, generator=gen) * 2 - 1

    def step():
        x = linear(p, "vision.patch", patches) + p["vision.pos"][:n_img]
        for i in range(Lv):
            x = block(p, f"vision.blocks.{i}", x, Av, False)
        x = norm(p, "vision.ln_f", x)
        y = linear(p, "vision.proj.fc2", F.gelu(linear(p, "vision.proj.fc1", x), approximate="tanh"))
        e = F.embedding(tokens.masked_fill(place, 0), p["llm.embed.weight"])
        e = e.masked_scatter(place.unsqueeze(-1), y)
        e = e + p["llm.pos"][:S]
        for i in range(L):
            e = block(p, f"llm.blocks.{i}", e, A, True)
        logits = F.linear(norm(p, "llm.ln_f", e), p["llm.head.weight"])
        loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100, reduction="sum")
        loss = loss / (targets != -100).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    print(f"loss {loss:.6f}")
    print(f"torch_step_s {min(times[1:]):.4f}")


if __name__ == "__main__":
    main()
