#!/usr/bin/env python3
"""Writes the golden checkpoint directories the checkpoint tests load (`tests/checkpoint.rs`):
the tiny Llama (float32) and Mixtral (bfloat16) models of `hf_models.py`, as `save_pretrained`
writes them sharded (`model-0000N-of-0000M.safetensors` and `model.safetensors.index.json`),
and the first-step loss `transformers` computes from those files on their case's batch.

    python3 tests/oracle/hf_checkpoint.py [OUT_DIR]   # default tests/oracle/golden/hf_checkpoint

Reads the weights `hf_models.py` wrote (tests/oracle/golden/hf/CASE/model.safetensors), so run
that first when it changes. Deterministic: rerunning it rewrites the same bytes. The loss is
computed as in `hf_models.py`: the saved files reloaded (bfloat16 values widened exactly),
converted to float64, `transformers`' float32 casts made float64 ones.
"""

import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, MixtralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_models import causal_lm_loss, float64_everywhere, rope_tables_in_float64  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# (case, class, the dtype the shards are written in, max_shard_size): shards of a few tensors.
CASES = [
    ("llama", LlamaForCausalLM, torch.float32, "24KB"),
    ("mixtral", MixtralForCausalLM, torch.bfloat16, "24KB"),
]


def write(out, case, cls, dtype, shard):
    src = os.path.join(HERE, "golden", "hf", case)
    d = os.path.join(out, f"{case}_sharded")
    shutil.rmtree(d, ignore_errors=True)
    load = {"attn_implementation": "eager", "dtype": torch.float32}
    if case == "mixtral":
        load["experts_implementation"] = "eager"
    model = cls.from_pretrained(src, **load).to(dtype)
    model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
    names = sorted(os.listdir(d))
    assert "model.safetensors.index.json" in names, f"{case}: not sharded: {names}"

    model = cls.from_pretrained(d, **load).double().train()
    rope_tables_in_float64(model)
    batch = load_file(os.path.join(src, "batch.safetensors"))
    with torch.no_grad(), float64_everywhere():
        logits = model(input_ids=batch["input_ids"]).logits
        loss = causal_lm_loss(logits, batch["labels"])
    save_file({"loss": loss.float().reshape(1)}, os.path.join(d, "expect.safetensors"))
    shards = [n for n in names if n.startswith("model-")]
    case_json = {
        "case": f"{case}_sharded",
        "weights_from": f"golden/hf/{case}/model.safetensors",
        "batch": f"golden/hf/{case}/batch.safetensors",
        "dtype": str(dtype).removeprefix("torch."),
        "shards": len(shards),
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "loss": loss.item(),
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case_json, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "golden", "hf_checkpoint")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    for case, cls, dtype, shard in CASES:
        write(out, case, cls, dtype, shard)


if __name__ == "__main__":
    main()
