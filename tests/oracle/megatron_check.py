#!/usr/bin/env python3
"""Runs Megatron-LM's own argument parsing and validation on one argument list, in this process,
and writes what Megatron accepted or the exception it raised, with the values it derived.
Started by megatron_validate.py, one process per case (Megatron keeps global state):

    python3 tests/oracle/megatron_check.py REQUEST.json RESULT.json

REQUEST: {"source": Megatron-LM tree, "entry": the training script, "args": [...],
"env": {...}, "compute_capability": [major, minor]}. Megatron's output goes to stdout and
stderr; RESULT gets {"accepted", "error", "derived"}.

What runs is what the entry script runs before it needs a GPU or other ranks:
- `pretrain_gpt.py`: `parse_args`, `validate_args` with the script's defaults,
  `set_global_variables` without a tokenizer (the micro-batch calculator),
  `gpt_config_from_args` (whose `TransformerConfig` runs its `__post_init__` checks) and
  `pretrain_cfg_container_from_args` (optimizer, DDP, training configs).
- `pretrain_vlm.py`: the same up to `pretrain_cfg_container_from_args`, with the script's
  arguments, then the script's `model_provider` (its own checks, the language, vision and
  projection configs), with `LLaVAModel` replaced by a recorder of the configs it is given
  (building it needs process groups), pipeline rank 0 of one, and Transformer Engine's layer
  specs replaced by the local ones (specs name module classes; none is built).
- `examples/mimo/pretrain_mimo.py`: its `_parse_and_validate` (stock and MIMO arguments,
  `validate_hetero_grid_args`, `validate_args` over the language model's ranks),
  `set_global_variables`, `build_module_grid_specs`, the grids `_build_grid` makes (without
  their process groups), and the provider's `language_model_spec` (the language config at
  the grid's tp, pp and ep, and `require_per_token_loss`). The provider sets the grid's sizes
  on an already built config; it is rebuilt here with `dataclasses.replace` so that
  `TransformerConfig.__post_init__` checks it at those sizes too (the weight-shard counts it
  derived from tp 1 cleared, to be derived again).

Stubbed, because they need a GPU: `torch.cuda.get_device_capability` and
`get_device_properties` answer the cluster's GPU (REQUEST's compute capability), and
Transformer Engine's fused RoPE kernel is a placeholder that raises if called (Megatron's
default `--apply-rope-fusion` only checks that it exists). On Python 3.11 `typing.override`,
which Megatron imports from 3.12's `typing`, is a decorator that returns the function (3.12's
also sets `__override__` on it, which nothing here reads).
"""

import contextlib
import dataclasses
import io
import json
import os
import sys
import traceback
import types
import typing
import warnings


def stub_gpu(capability):
    """The cluster's GPU, as torch would report it."""
    import torch

    major, minor = capability
    props = types.SimpleNamespace(major=major, minor=minor, name=f"sm_{major}{minor}")
    torch.cuda.get_device_capability = lambda device=None: (major, minor)
    torch.cuda.get_device_properties = lambda device=None: props


def stub_te_rope():
    """Transformer Engine's fused RoPE, present as on a GPU machine; never called here."""
    import megatron.core.models.common.embeddings.rope_utils as rope

    def fused_rope(*_args, **_kwargs):
        raise RuntimeError("Transformer Engine's fused RoPE is a placeholder in this oracle")

    rope.fused_apply_rotary_pos_emb = fused_rope


def layers_per_chunk(config):
    """Megatron's layers for every (virtual stage, pipeline rank), virtual stage outer."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build

    pp = config.pipeline_model_parallel_size
    vpp = config.virtual_pipeline_model_parallel_size or 1
    return [
        get_num_layers_to_build(config, vp_stage=v if vpp > 1 else None, pp_rank=s)
        for v in range(vpp)
        for s in range(pp)
    ]


def model_values(config):
    """The shape and layout values Megatron derives into a TransformerConfig."""
    return {
        "num_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "num_query_groups": config.num_query_groups,
        "kv_channels": config.kv_channels,
        "ffn_hidden_size": config.ffn_hidden_size,
        "gated_linear_unit": config.gated_linear_unit,
        "normalization": config.normalization,
        "add_bias_linear": config.add_bias_linear,
        "num_moe_experts": config.num_moe_experts,
        "moe_router_topk": config.moe_router_topk,
        "moe_ffn_hidden_size": config.moe_ffn_hidden_size,
        "tensor_model_parallel_size": config.tensor_model_parallel_size,
        "pipeline_model_parallel_size": config.pipeline_model_parallel_size,
        "virtual_pipeline_model_parallel_size": config.virtual_pipeline_model_parallel_size,
        "context_parallel_size": config.context_parallel_size,
        "cp_comm_type": config.cp_comm_type,
        "expert_model_parallel_size": config.expert_model_parallel_size,
        "expert_tensor_parallel_size": config.expert_tensor_parallel_size,
        "sequence_parallel": config.sequence_parallel,
        "recompute_granularity": config.recompute_granularity,
        "recompute_method": config.recompute_method,
        "recompute_num_layers": config.recompute_num_layers,
        "layers_per_chunk": layers_per_chunk(config),
    }


def batch_values(args):
    from megatron.core.num_microbatches_calculator import get_num_microbatches

    return {
        "world_size": args.world_size,
        "data_parallel_size": args.data_parallel_size,
        "micro_batch_size": args.micro_batch_size,
        "global_batch_size": args.global_batch_size,
        "num_micro_batches": get_num_microbatches(),
        "seq_length": args.seq_length,
    }


def check_gpt(argv):
    from megatron.training.argument_utils import (gpt_config_from_args,
                                                  pretrain_cfg_container_from_args)
    from megatron.training.arguments import parse_args, validate_args
    from megatron.training.global_vars import set_global_variables

    sys.argv = ["pretrain_gpt.py", *argv]
    args = parse_args()
    validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})
    set_global_variables(args, build_tokenizer=False)
    model_cfg = gpt_config_from_args(args)
    full = pretrain_cfg_container_from_args(args, model_cfg)
    derived = batch_values(args)
    derived.update(model_values(model_cfg.transformer))
    derived["use_distributed_optimizer"] = full.ddp.use_distributed_optimizer
    return derived


class LlavaRecorder:
    """Stands for `LLaVAModel`, which needs process groups: keeps the configs it is given."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def freeze(self, **_kwargs):
        pass


def check_vlm(argv):
    import torch
    import pretrain_vlm
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_args, validate_args
    from megatron.training.global_vars import set_global_variables

    sys.argv = ["pretrain_vlm.py", *argv]
    args = parse_args(pretrain_vlm.add_vlm_extra_args)
    validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})
    set_global_variables(args, build_tokenizer=False)
    full = pretrain_cfg_container_from_args(args)
    derived = batch_values(args)  # before the provider sets seq_length to the vision tower's
    # The script's model provider, its checks and configs, on pipeline rank 0 of one.
    torch.distributed.get_rank = lambda group=None: 0
    pretrain_vlm.parallel_state = types.SimpleNamespace(
        is_pipeline_first_stage=lambda: True, is_pipeline_last_stage=lambda: True)
    pretrain_vlm.LLaVAModel = LlavaRecorder
    # Transformer Engine's layer specs name its classes; the local ones name Megatron's.
    pretrain_vlm.decoder_model_with_transformer_engine_default_spec = (
        pretrain_vlm.decoder_model_with_local_default_spec)
    pretrain_vlm.get_vit_layer_with_transformer_engine_spec = (
        pretrain_vlm.get_vit_layer_with_local_spec)
    model = pretrain_vlm.model_provider()
    derived.update(model_values(model.kwargs["language_transformer_config"]))
    derived["use_distributed_optimizer"] = full.ddp.use_distributed_optimizer
    return derived


def mimo_grid(spec):
    """The grid `_build_grid` makes for `spec`, its process groups left out."""
    from megatron.core.hyper_comm_grid import HyperCommGrid

    grid = HyperCommGrid(shape=[spec.tp, spec.cp, spec.dp, spec.pp],
                         dim_names=["tp", "cp", "dp", "pp"], rank_offset=spec.rank_offset)
    grid.register_view("expert", shape=[spec.expt_tp, spec.ep, spec.expt_dp, spec.pp],
                       dim_names=["expt_tp", "ep", "expt_dp", "pp"], shared_dims=["pp"])
    return grid


def check_mimo(argv):
    from examples.mimo import pretrain_mimo
    from examples.mimo.model_providers import resolve_provider
    from examples.mimo.training.args import build_module_grid_specs
    from megatron.core.models.mimo.config.role import MIMO_LANGUAGE_MODULE_KEY
    from megatron.training.global_vars import set_global_variables

    sys.argv = ["examples/mimo/pretrain_mimo.py", *argv]
    args = pretrain_mimo._parse_and_validate()
    set_global_variables(args, build_tokenizer=False)
    provider = resolve_provider(args)
    encoder = provider.encoder_module_names[0]
    specs = build_module_grid_specs(args, args.world_size, encoder)
    grids = {s.name: mimo_grid(s) for s in specs}
    lm_spec = provider.language_spec(args, None, grids[MIMO_LANGUAGE_MODULE_KEY])
    # Built at the stock tp 1, then given the grid's sizes: rebuilt, the weight-shard counts
    # derived from tp at 1 are derived again.
    config = dataclasses.replace(lm_spec.params["config"], tensor_parallel_num_weight_shards=None,
                                 expert_tensor_parallel_num_weight_shards=None)
    derived = batch_values(args)
    derived.update(model_values(config))
    derived["use_distributed_optimizer"] = args.use_distributed_optimizer
    derived["calculate_per_token_loss"] = config.calculate_per_token_loss
    derived["grids"] = {
        ("language" if s.name == MIMO_LANGUAGE_MODULE_KEY else "encoder"): {
            "rank_offset": s.rank_offset, "num_ranks": s.num_ranks, "tp": s.tp, "cp": s.cp,
            "pp": s.pp, "dp": s.dp, "ep": s.ep, "expt_tp": s.expt_tp, "expt_dp": s.expt_dp,
        }
        for s in specs
    }
    return derived


CHECKS = {"pretrain_gpt.py": check_gpt, "pretrain_vlm.py": check_vlm,
          "examples/mimo/pretrain_mimo.py": check_mimo}


def main():
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path) as f:
        req = json.load(f)
    warnings.filterwarnings("ignore")
    if not hasattr(typing, "override"):
        typing.override = lambda f: f
    os.environ.update(req["env"])
    sys.path.append(req["source"])  # the scripts and the example; megatron is installed
    stub_gpu(req["compute_capability"])
    stub_te_rope()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            derived = CHECKS[req["entry"]](req["args"])
        result = {"accepted": True, "error": None, "derived": derived}
    except SystemExit:  # argparse's refusal: its message is the last line it printed
        lines = stderr.getvalue().strip().splitlines() or ["argparse exited"]
        result = {"accepted": False, "error": f"argparse: {lines[-1]}", "derived": None}
    except Exception as e:  # Megatron asserts and raises
        traceback.print_exc()
        result = {"accepted": False, "error": f"{type(e).__name__}: {e}".strip(),
                  "derived": None}
    sys.stderr.write(stderr.getvalue())
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
