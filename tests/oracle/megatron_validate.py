#!/usr/bin/env python3
"""Feeds the arguments `hetpar export megatron` writes for each example plan to Megatron-LM's
own parsing and validation (release core_v0.19.0), and records per case what Megatron accepted
or the exception it raised, with the values it derived, in
tests/oracle/golden/megatron-validate/CASE.json. tests/export_validate.rs compares them with
the exporter and the plans, so the tests need no Python.

    cargo build --bin hetpar
    python3 tests/oracle/megatron_validate.py [--megatron-src DIR] [--hetpar BIN] [--out DIR]

Megatron-LM comes from source, at the release's commit:
- by default `pip install -e git+https://github.com/NVIDIA/Megatron-LM@COMMIT`, cloned under
  ~/.cache/hetpar (the training scripts and the MIMO example are not in the package, so the
  checkout is kept);
- with `--megatron-src DIR` or `MEGATRON_LM_SRC=DIR`, a tree of that commit already on disk
  (for example `git archive COMMIT | tar -x -C DIR` from a clone), installed with
  `pip install -e DIR`.
Either way, the files the checks run are compared with the commit's Git blob hashes first.
Megatron-LM declares Python >= 3.12; on 3.11 pip is told to ignore that, and
megatron_check.py supplies the one 3.12 name it needs (see there, with what is stubbed).

Each case runs megatron_check.py in its own process: the exported arguments, the environment
train.sh exports, WORLD_SIZE the cluster's GPUs and the cluster GPU's compute capability.
The `rejected-*` cases edit an export so that Megatron must refuse it: they prove the oracle
can fail.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

RELEASE = "core_v0.19.0"
COMMIT = "5be9626709af2722333bf54797c954c09edeada3"
REPO = "https://github.com/NVIDIA/Megatron-LM"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Git blob hashes, at COMMIT, of the files whose code the checks run.
PINNED = {
    "megatron/training/arguments.py": "fd30984b38ae64e1207a948c71ef04dbaf5925da",
    "megatron/training/argument_utils.py": "70f26c64d561b91ab33aa217315e72d38749a1d3",
    "megatron/core/transformer/transformer_config.py": "4f9de54616182e432e76953c6a42ec5e0ed5eee6",
    "megatron/core/model_parallel_config.py": "157ae1437f59084758db056f86d3cbf97420e4ca",
    "megatron/core/transformer/transformer_block.py": "0415035ffbe4c0e8e772e9dd3597195a777db4ce",
    "examples/mimo/pretrain_mimo.py": "ee521b188a5aa46aef6d8687e7ba9fc7c901e81a",
    "examples/mimo/training/args.py": "e62bc31967b931616c0dda2b26bff16b7b2b5914",
    "examples/mimo/model_providers/nemotron_moe_vlm.py": "133bf9bc1d27b0bfa7baad7cd2ed3024b2e33eaa",
    "megatron/core/package_info.py": "10ebd3d571b6efa12558cddc4480b6a8944aa004",
}

# Compute capability of each GPU model of hetpar's table (megatron_check.py reports it).
CAPABILITY = {"h100_sxm_80gb": [9, 0], "h200_141gb": [9, 0], "a100_80gb": [8, 0],
              "b200": [10, 0]}


def case(name, plan, model, cluster, edit=None):
    return {"case": name, "plan": f"examples/plans/{plan}.json",
            "model": f"examples/models/{model}.json",
            "cluster": f"examples/clusters/{cluster}.json", "edit": edit}


LLAMA = ("llama-3-8b-homogeneous-8", "llama-3-8b", "h100-8")
LLAVA = ("llava-1.5-7b-noncolocated-8", "llava-1.5-7b", "h100-8")
CASES = [
    case("llama-3-8b", *LLAMA),
    case("llava-1.5-7b-noncolocated", *LLAVA),
    case("llava-1.5-7b-homogeneous", "llava-1.5-7b-homogeneous-8", "llava-1.5-7b", "h100-8"),
    case("mixtral-8x7b-ep4", "mixtral-8x7b-ep4-8", "mixtral-8x7b", "h100-8"),
    case("llama-3-8b-cp-vpp", "llama-3-8b-cp-vpp-16", "llama-3-8b", "h100-16"),
    case("llama-3-8b-uneven-cp", "llama-3-8b-uneven-cp-8", "llama-3-8b", "h100-8"),
    # Edited exports Megatron must refuse: values, a MIMO rule, a flag name, the environment.
    case("rejected-tp-not-dividing-world", *LLAMA,
         edit={"args": {"--tensor-model-parallel-size": "3"}}),
    case("rejected-query-groups-not-dividing-heads", *LLAMA,
         edit={"args": {"--num-query-groups": "3"}}),
    case("rejected-mimo-fan-out", *LLAVA, edit={"args": {"--encoder-dp": "3"}}),
    case("rejected-unknown-flag", *LLAMA, edit={"args": {"--no-such-flag": "1"}}),
    case("rejected-without-cuda-device-max-connections", *LLAMA,
         edit={"env": {"CUDA_DEVICE_MAX_CONNECTIONS": None}}),
]


def blob_hash(path):
    """Git's blob id of a file: what `git hash-object` prints."""
    import hashlib

    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_tree(src):
    wrong = [p for p, h in PINNED.items()
             if not os.path.exists(os.path.join(src, p)) or blob_hash(os.path.join(src, p)) != h]
    if wrong:
        sys.exit(f"error: {src} is not Megatron-LM {RELEASE} ({COMMIT}): "
                 f"{', '.join(wrong)} missing or different")


def pip(*args):
    extra = ["--ignore-requires-python"] if sys.version_info < (3, 12) else []
    subprocess.run([sys.executable, "-m", "pip", "install", *extra, *args], check=True)


def installed_from(src):
    """Whether `megatron.core` imports from `src` (finds the package without running it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("megatron.core")
    except ImportError:
        return False
    origin = spec and spec.origin or ""
    return os.path.realpath(origin).startswith(os.path.realpath(src) + os.sep)


def megatron_source(arg):
    """A verified Megatron-LM tree of COMMIT, pip-installed (editable) into this Python."""
    src = arg or os.environ.get("MEGATRON_LM_SRC")
    if src is None:
        cache = os.path.join(os.path.expanduser("~"), ".cache", "hetpar")
        src = os.path.join(cache, "megatron-core")
        if not os.path.isdir(src):
            pip("--src", cache, "-e", f"git+{REPO}@{COMMIT}#egg=megatron-core")
    check_tree(src)
    if not installed_from(src):
        pip("-e", src)
    return src


def hetpar_export(binary, c, out):
    """`hetpar export megatron` of the case into `out`: (args.txt's lines, train.sh's text)."""
    run = subprocess.run([binary, "export", "megatron", c["plan"], "--model", c["model"],
                          "--cluster", c["cluster"], "-o", out], cwd=ROOT, capture_output=True,
                         text=True)
    if run.returncode != 0:
        sys.exit(f"error: {c['case']}: hetpar export megatron failed:\n{run.stderr}")
    with open(os.path.join(out, "args.txt")) as f:
        args = f.read().splitlines()
    with open(os.path.join(out, "train.sh")) as f:
        return args, f.read()


def entry_of(script):
    """The training script train.sh runs, relative to a Megatron-LM checkout."""
    m = re.search(r'"\$MEGATRON/([^"]+)"', script) or re.search(r" -m (\S+)", script)
    entry = m.group(1)
    return entry if entry.endswith(".py") else entry.replace(".", "/") + ".py"


# The training scripts megatron_check.py runs the validation of.
CHECKED = ("pretrain_gpt.py", "pretrain_vlm.py", "examples/mimo/pretrain_mimo.py")


def apply_edit(lines, env, edit):
    """A flag's value set (appended when absent); an environment variable set or removed."""
    lines = list(lines)
    for flag, value in (edit or {}).get("args", {}).items():
        at = [i for i, line in enumerate(lines) if line.split()[0] == flag]
        if at:
            lines[at[0]] = f"{flag} {value}"
        else:
            lines.append(f"{flag} {value}")
    env = dict(env)
    for name, value in (edit or {}).get("env", {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return lines, env


def run_case(c, binary, src, out_dir):
    with open(os.path.join(ROOT, c["cluster"])) as f:
        cluster = json.load(f)
    world = cluster["nodes"] * cluster["gpus_per_node"]
    with tempfile.TemporaryDirectory() as tmp:
        args, script = hetpar_export(binary, c, os.path.join(tmp, "export"))
        env = dict(re.findall(r"^export (\w+)=(\S*)$", script, re.M))
        # What train.sh passes after args.txt's arguments (mock data).
        script_args = re.search(r'"\$\{args\[@\]\}" (.*) "\$@"', script).group(1).split()
        args, env = apply_edit(args, env, c["edit"])
        if entry_of(script) not in CHECKED:
            sys.exit(f"error: {c['case']}: exports to {entry_of(script)}, whose validation "
                     f"megatron_check.py does not run (it runs {', '.join(CHECKED)})")
        tokens = " ".join(args).split() + script_args
        request = {"source": src, "entry": entry_of(script), "args": tokens,
                   "env": {**env, "WORLD_SIZE": str(world), "RANK": "0"},
                   "compute_capability": CAPABILITY[cluster["gpu"]["model"]]}
        req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(req, "w") as f:
            json.dump(request, f)
        log = subprocess.run([sys.executable, os.path.join(HERE, "megatron_check.py"), req, res],
                             capture_output=True, text=True)
        if not os.path.exists(res):
            sys.exit(f"error: {c['case']}: megatron_check.py failed:\n{log.stderr[-4000:]}")
        with open(res) as f:
            result = json.load(f)
    golden = {**c, "release": RELEASE, "commit": COMMIT, "entry": request["entry"],
              "args": args, "script_args": script_args, "env": env, "world_size": world,
              "compute_capability": request["compute_capability"], **result}
    path = os.path.join(out_dir, f"{c['case']}.json")
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    os.replace(path + ".tmp", path)
    verdict = "accepted" if result["accepted"] else f"rejected: {result['error']}"
    print(f"{c['case']}: {verdict}")
    return c["edit"] is None and not result["accepted"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--megatron-src", help="a Megatron-LM tree of the release's commit")
    p.add_argument("--hetpar", default=os.path.join(ROOT, "target", "debug", "hetpar"))
    p.add_argument("--out", default=os.path.join(HERE, "golden", "megatron-validate"))
    a = p.parse_args()
    if not os.path.exists(a.hetpar):
        sys.exit(f"error: {a.hetpar} not found: run `cargo build --bin hetpar` or give --hetpar")
    src = megatron_source(a.megatron_src)
    os.makedirs(a.out, exist_ok=True)
    refused = [c["case"] for c in CASES if run_case(c, a.hetpar, src, a.out)]
    if refused:
        sys.exit(f"error: Megatron rejected the exported arguments of {', '.join(refused)}")


if __name__ == "__main__":
    main()
