#!/usr/bin/env python3
"""Writes the golden files the runtime's architecture tests compare against: tiny Llama, Llama 3
(llama3 RoPE scaling), tied Llama, Qwen2, LLaVA and Mixtral models as Hugging Face `transformers`
builds them, one batch each, and the loss, logits and every parameter's gradient `transformers`
computes for it. The format is described in tests/oracle/README.md.

    python3 tests/oracle/hf_models.py [OUT_DIR]     # default tests/oracle/golden/hf

Installs its pinned dependencies with pip when they are missing. Runs on the CPU in seconds and
is deterministic: rerunning it rewrites the same bytes.

The weights are written in float32 (`save_pretrained`); the oracle reloads them, converts the
model to float64 and computes in float64. `transformers` casts to float32 in a few places
(RMSNorm, the attention and router softmax, the RoPE tables, the loss); while the oracle runs,
`float64_everywhere` turns those casts into float64 ones, so the values are float64-exact
(checked against the unpatched model, whose differences are reported in case.json). The loss is
`transformers`' causal-LM loss (shift by one, mean over the labels that are not -100, over the
whole batch), computed here in float64.
"""

import sys

PINNED = ["torch==2.15.0", "transformers==5.25.0", "safetensors==0.8.0"]

try:
    import torch
    import transformers
    import safetensors  # noqa: F401
except ImportError:
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", *PINNED], check=True)
    import torch
    import transformers

import contextlib
import json
import math
import os
import shutil
import tempfile

import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration, MixtralConfig, MixtralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

B, S, V = 4, 16, 64
LLAVA_S = 48  # two 16-patch images and text in one sample
IMAGE_TOKEN = 3
PAD = 0

# Small enough for about 1.4 MB of golden files in all; divisible for tensor parallel 2 and 4 and
# 2 pipeline stages (`llama`, with 4 layers: 2 stages of 2 virtual stages each).
LM = dict(vocab_size=V, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
          bos_token_id=1, eos_token_id=2, pad_token_id=PAD)


# ---------------------------------------------------------------- float64 all the way through

@contextlib.contextmanager
def float64_everywhere():
    """Casts to float32 inside `transformers`' forward become casts to float64."""
    f32 = (torch.float32,)
    orig_to, orig_float = torch.Tensor.to, torch.Tensor.float
    orig_softmax, orig_arange = F.softmax, torch.arange

    def sub(v):
        return torch.float64 if v in f32 else v

    def to(self, *args, **kwargs):
        return orig_to(self, *[sub(a) for a in args], **{k: sub(v) for k, v in kwargs.items()})

    def float_(self, *args, **kwargs):
        return self.double(*args, **kwargs)

    def softmax(*args, **kwargs):
        if "dtype" in kwargs:
            kwargs["dtype"] = sub(kwargs["dtype"])
        return orig_softmax(*args, **kwargs)

    def arange(*args, **kwargs):
        if "dtype" in kwargs:
            kwargs["dtype"] = sub(kwargs["dtype"])
        return orig_arange(*args, **kwargs)

    torch.Tensor.to, torch.Tensor.float = to, float_
    F.softmax, torch.arange = softmax, arange
    try:
        yield
    finally:
        torch.Tensor.to, torch.Tensor.float = orig_to, orig_float
        F.softmax, torch.arange = orig_softmax, orig_arange


def rope_tables_in_float64(model):
    """The RoPE inverse frequencies, computed at construction in float32, recomputed in float64."""
    for mod in model.modules():
        if type(mod).__name__.endswith("RotaryEmbedding"):
            with float64_everywhere():
                fresh = type(mod)(mod.config)
            assert fresh.inv_freq.dtype == torch.float64
            mod.inv_freq = fresh.inv_freq
            mod.original_inv_freq = fresh.original_inv_freq


# ---------------------------------------------------------------- weights

def redraw(model, seed, router_std=0.3):
    """Every parameter from a seeded draw, so that norms, biases and gates matter: norm weights
    U(0.8, 1.2), biases N(0, 0.1), matrices N(0, 0.2), routers N(0, router_std)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(0.8 + 0.4 * torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(router_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- batches

def lm_batch(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, S), generator=g)
    labels = ids.clone()
    ids[1, -4:] = PAD          # sample 1: padding at the end
    labels[1, -4:] = -100
    labels[2, :3] = -100       # sample 2: a prompt without loss
    return {"input_ids": ids, "labels": labels}


LLAVA_IMAGES = [[2], [], [1, 25], [30]]  # placeholder run starts per sample


def llava_batch(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, LLAVA_S), generator=g)
    labels = ids.clone()
    for b, starts in enumerate(LLAVA_IMAGES):
        for s in starts:
            ids[b, s:s + 16] = IMAGE_TOKEN
            labels[b, s:s + 16] = -100
    ids[1, -6:] = PAD
    labels[1, -6:] = -100
    counts = torch.tensor([len(s) for s in LLAVA_IMAGES], dtype=torch.int64)
    pixels = torch.randn((int(counts.sum()), 3, 32, 32), generator=g)
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels, "image_counts": counts}


# ---------------------------------------------------------------- cases

def llama3_bands(cfg):
    """Indices of the inverse frequencies llama3 scaling leaves, scales, and smooths."""
    rp = cfg.rope_parameters
    d = cfg.head_dim
    inv = [rp["rope_theta"] ** (-(2 * i) / d) for i in range(d // 2)]
    n = rp["original_max_position_embeddings"]
    low, high = n / rp["low_freq_factor"], n / rp["high_freq_factor"]
    wl = [2 * math.pi / f for f in inv]
    keep = [i for i, w in enumerate(wl) if w < high]
    scale = [i for i, w in enumerate(wl) if w > low]
    smooth = [i for i, w in enumerate(wl) if high <= w <= low]
    return keep, scale, smooth


def cases():
    yield "llama", LlamaForCausalLM, LlamaConfig(
        **{**LM, "num_hidden_layers": 4}, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False), "Llama, untied, GQA 4/2."
    cfg = LlamaConfig(**{**LM, "max_position_embeddings": 65536}, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192})
    keep, scale, smooth = llama3_bands(cfg)
    assert keep and scale and smooth, (keep, scale, smooth)
    yield "llama3", LlamaForCausalLM, cfg, (
        f"Llama with llama3 RoPE scaling; of the 4 inverse frequencies (head_dim 8) indices "
        f"{keep} are unchanged, {smooth} smoothed, {scale} divided by the factor.")
    yield "llama_tied", LlamaForCausalLM, LlamaConfig(
        **LM, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True), (
        "Llama with tie_word_embeddings: model.safetensors has no lm_head.weight; "
        "grad.model.embed_tokens.weight is the sum over both uses.")
    yield "qwen2", Qwen2ForCausalLM, Qwen2Config(
        **LM, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
        use_sliding_window=False), "Qwen2: biases on q/k/v, GQA 4/2."
    vision = CLIPVisionConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32)
    text = LlamaConfig(**LM, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    yield "llava", LlavaForConditionalGeneration, LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=16, tie_word_embeddings=False), (
        "LLaVA: CLIP tower (2 layers, 16 patches + class token), features of the "
        "second-to-last hidden state (the first layer's output) without the class token, GELU "
        "projector, Llama. Images fill the placeholders of the whole batch in order (sample 1 "
        "has none, sample 2 two). The last vision layer and post_layernorm are unused: their "
        "gradients are zero. The vision k_proj biases' gradients are zero up to rounding (a key "
        "bias shifts all scores of a query alike).")
    yield "mixtral", MixtralForCausalLM, MixtralConfig(
        **LM, rope_theta=1e6, rms_norm_eps=1e-5,
        num_local_experts=4, num_experts_per_tok=2, output_router_logits=False,
        router_aux_loss_coef=0.0, tie_word_embeddings=False), (
        "Mixtral: 4 experts, top-2 (softmax over all 4 router logits, top-2 renormalised), no "
        "auxiliary loss. For every token, the 2nd and 3rd router logits differ by more than "
        "1e-3.")


# ---------------------------------------------------------------- oracle

def causal_lm_loss(logits, labels):
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="mean")


def run(model, batch, llava):
    kwargs = {"input_ids": batch["input_ids"]}
    if llava:
        kwargs["pixel_values"] = batch["pixel_values"].double()
    out = model(**kwargs)
    loss = causal_lm_loss(out.logits, batch["labels"])
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for n, p in model.named_parameters()}
    return loss.detach(), out.logits.detach(), grads


def router_gaps(model, batch):
    """The smallest gap between the 2nd and 3rd router logits of any token in any layer."""
    gaps = []

    def hook(mod, inputs, _out):
        logits = F.linear(inputs[0], mod.weight).reshape(-1, mod.weight.shape[0])
        top = logits.sort(dim=-1, descending=True).values
        gaps.append((top[:, 1] - top[:, 2]).min().item())

    hs = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
    with torch.no_grad(), float64_everywhere():
        model(input_ids=batch["input_ids"])
    for h in hs:
        h.remove()
    return min(gaps)


def grads_as_saved(model, grads, tmp):
    """The gradients under the names (and layout) save_pretrained gives their parameters."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.data = grads[n]
    model.save_pretrained(tmp, safe_serialization=True)
    return load_file(os.path.join(tmp, "model.safetensors"))


def write_case(out, name, cls, cfg, notes, seed):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    llava = name == "llava"
    batch = llava_batch(seed) if llava else lm_batch(seed)
    # Mixtral's experts one at a time (the default, grouped_mm, has no float64).
    load = {"attn_implementation": "eager", "dtype": torch.float32}
    if name == "mixtral":
        cfg._experts_implementation = "eager"
        load["experts_implementation"] = "eager"
    for attempt in range(20):
        torch.manual_seed(seed + 1000 * attempt)
        model = cls(cfg).float()
        redraw(model, seed + 1000 * attempt)
        if name != "mixtral":
            break
        gap = router_gaps(model.double(), batch)
        if gap > 1e-3:
            notes += f" (smallest 2nd-3rd router logit gap: {gap:.3g}, weight seed try {attempt})"
            break
    else:
        raise SystemExit("mixtral: no router draw without near-ties")
    model = model.float()
    model.save_pretrained(d, safe_serialization=True)
    for extra in os.listdir(d):
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(d, extra))

    # The oracle: the float32 files, reloaded, in float64.
    model = cls.from_pretrained(d, **load)
    saved = load_file(os.path.join(d, "model.safetensors"))
    model = model.double().train()
    rope_tables_in_float64(model)
    with float64_everywhere():
        loss, logits, grads = run(model, batch, llava)
    assert logits.dtype == torch.float64
    # transformers as it stands (float32 casts inside) agrees to float32 precision.
    plain = cls.from_pretrained(d, **load).double()
    p_loss, p_logits, p_grads = run(plain, batch, llava)
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    d_logits = rel(p_logits, logits)
    # Relative to the largest gradient of any parameter: some are zero up to rounding (CLIP's
    # k_proj bias: a constant shift of every score of a query cancels in the softmax).
    d_grads = (max((p_grads[n] - g).abs().max().item() for n, g in grads.items())
               / max(g.abs().max().item() for g in grads.values()))
    assert abs(p_loss - loss) < 1e-5 and d_logits < 1e-5 and d_grads < 1e-4, (d_logits, d_grads)
    # transformers' own loss (labels given) is the same number.
    kwargs = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
    if llava:
        kwargs["pixel_values"] = batch["pixel_values"].double()
    with torch.no_grad():
        hf_loss = plain(**kwargs).loss
    assert abs(hf_loss.item() - loss.item()) < 1e-5, (hf_loss, loss)
    if llava:
        check_llava_order(plain, batch, p_logits)
    big = logits.abs().max().item()
    assert big < 12, big

    with tempfile.TemporaryDirectory() as tmp:
        named = grads_as_saved(model, grads, tmp)
    assert set(named) == set(saved), set(named) ^ set(saved)
    for n in saved:
        assert named[n].shape == saved[n].shape, n
    expect = {"loss": loss.reshape(1).float(), "logits": logits.float().contiguous()}
    for n in sorted(saved):
        expect["grad." + n] = named[n].float().contiguous()
    save_file(expect, os.path.join(d, "expect.safetensors"))
    save_file({k: v.contiguous() for k, v in batch.items()}, os.path.join(d, "batch.safetensors"))
    meta = {"case": name, "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0], "dtype_of_oracle": "float64",
            "notes": notes + f" Loss {loss.item():.6f}, max |logit| {big:.2f}; unpatched "
                     f"transformers in float64 differs by {d_logits:.1e} (logits) and "
                     f"{d_grads:.1e} (gradients), relative to the largest logit and the "
                     f"largest gradient."}
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"{name}: loss {loss.item():.6f}, max |logit| {big:.2f}, {len(saved)} tensors")


def check_llava_order(model, batch, logits):
    """Each sample alone, with its own images, gives the batch's logits for it: images fill the
    placeholders of the batch in order, and a sample without images takes none."""
    first = 0
    for b, n in enumerate(batch["image_counts"].tolist()):
        kwargs = {"input_ids": batch["input_ids"][b:b + 1]}
        if n:
            kwargs["pixel_values"] = batch["pixel_values"][first:first + n].double()
        with torch.no_grad():
            alone = model(**kwargs).logits
        assert (alone[0] - logits[b]).abs().max() < 1e-9, b
        first += n


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "golden", "hf")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for i, (name, cls, cfg, notes) in enumerate(cases()):
        write_case(out, name, cls, cfg, notes, seed=17 + i)


if __name__ == "__main__":
    main()
