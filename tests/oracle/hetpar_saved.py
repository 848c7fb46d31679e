#!/usr/bin/env python3
"""Writes the golden of the reverse direction (`tests/checkpoint_saved.rs`): a tiny checkpoint
hetpar saved, loaded by Hugging Face `transformers` as is, and the logits it computes.

    python3 tests/oracle/hetpar_saved.py [HETPAR_BINARY]   # default target/debug/hetpar

1. hetpar trains the oracle's tiny Llama (tests/oracle/golden/hf/llama, which `hf_models.py`
   writes) for 2 steps on one device at lr 1e-2 on that case's batch and saves
   (`--save`); the step directory is copied to tests/oracle/golden/hetpar_saved/llama.
2. `transformers` loads that directory with `from_pretrained` (no conversion, no renaming),
   converts it to float64 (its float32 casts made float64 ones, as `hf_models.py` does) and
   writes the logits on the same batch to `logits.safetensors` there.

hetpar's arithmetic decides the saved weights' last bits, so rerunning step 1 on another CPU
may change them; the test reads the committed files, so it does not depend on that.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_models import float64_everywhere, rope_tables_in_float64  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CASE = os.path.join(HERE, "golden", "hf", "llama")
OUT = os.path.join(HERE, "golden", "hetpar_saved", "llama")
PLAN = """{"kind": "plan", "format_version": 1, "cluster": "h100-8",
 "schedule": {"kind": "pipeline_1f1b"},
 "modules": {"llm": {"layout": {"micro_batch_size": 4},
                     "placement": {"ranks": {"offset": 0, "count": 1}}}}}"""


def save_with_hetpar(binary):
    with tempfile.TemporaryDirectory() as tmp:
        plan = os.path.join(tmp, "plan.json")
        with open(plan, "w") as f:
            f.write(PLAN)
        save = os.path.join(tmp, "save")
        subprocess.run([binary, "run", plan, "--cluster", "examples/clusters/h100-8.json",
                        "--checkpoint", CASE, "--global-batch", "4", "--sequence-length", "16",
                        "--batch", os.path.join(CASE, "batch.safetensors"), "--steps", "2",
                        "--lr", "1e-2", "--save", save], check=True, cwd=ROOT)
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(os.path.join(save, "step-00000002"), OUT)


def logits_in_transformers():
    model = LlamaForCausalLM.from_pretrained(OUT, attn_implementation="eager",
                                             dtype=torch.float32).double().eval()
    rope_tables_in_float64(model)
    batch = load_file(os.path.join(CASE, "batch.safetensors"))
    with torch.no_grad(), float64_everywhere():
        logits = model(input_ids=batch["input_ids"]).logits
    save_file({"logits": logits.float().contiguous()}, os.path.join(OUT, "logits.safetensors"))


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "hetpar")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    save_with_hetpar(binary)
    logits_in_transformers()


if __name__ == "__main__":
    main()
