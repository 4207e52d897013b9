"""Sharded training on two CPU processes (gloo), and where the stack refuses FSDP on a CPU (docs/gpu.md).

* The shipped accelerate config (``configs/accelerate-fsdp.yaml``) on a CPU-only machine: accelerate refuses its
  ``fsdp_sync_module_states: true``; with that off it does not refuse but silently trains with DDP (accelerate
  enables FSDP only for accelerator devices; on a CPU the distributed type is ``MULTI_CPU``).
* torch's FSDP 1 (`FullyShardedDataParallel`, what the config selects) refuses a machine without an accelerator.
* torch's FSDP 2 (``fully_shard``) runs on a CPU: a `ShineModel` sharded over two processes (every decoder layer a
  unit, the root unit holding the trainable hypernetwork beside the frozen embeddings and head) trains to the same
  losses as one process on the same global batches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import peft_shine
from tiny_models import write_training_folder


pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parent
FSDP_CONFIG = TESTS.parent / "configs" / "accelerate-fsdp.yaml"
LOSS_TOLERANCE = 1e-5  # relative: sharded and single runs differ only in the order of floating-point reductions
TRAINER_WORKER = textwrap.dedent("""
    import argparse, json, sys
    from peft_shine.cli import train as command
    from peft_shine.training.recipe import train

    out, base, data, config = sys.argv[1:5]
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--stage", "pretrain", "--base", base, "--data", data, "--output", out,
                              "--config", config, "--max-steps", "1", "--eval-fraction", "0", "--dtype", "float32"])
    args.training_flags = []
    trainer = train(args)
    if trainer.is_world_process_zero():
        json.dump({"world": trainer.args.world_size, "fsdp": trainer.is_fsdp_enabled,
                   "wrapped": type(trainer.model_wrapped).__name__}, open(f"{out}/report.json", "w"))
""")
SHARDED_WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[3])
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from conftest import chat_batch, make_shine
    from tiny_models import make_char_tokenizer

    def batch(tokenizer, rows):
        contexts = tokenizer([f"Fact {i}: the code is {1000 + 7 * i}." for i in rows], return_tensors="pt",
                             padding=True)
        pairs = [chat_batch(tokenizer, f"Code {i}?", str(1000 + 7 * i)) for i in rows]
        width = max(ids.shape[1] for ids, _ in pairs)
        pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)
        input_ids = torch.cat([pad(ids, tokenizer.pad_token_id) for ids, _ in pairs])
        return {"context_input_ids": contexts.input_ids, "context_attention_mask": contexts.attention_mask,
                "input_ids": input_ids, "attention_mask": (input_ids != tokenizer.pad_token_id).long(),
                "labels": torch.cat([pad(labels, -100) for _, labels in pairs])}

    def run(rank, world, out):
        report = {}
        if world > 1:
            dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.manual_seed(0)
        tokenizer, shine = make_char_tokenizer(), make_shine("llama", lora_scale=0.05)
        if world > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
            try:
                FullyShardedDataParallel(shine, use_orig_params=True)
            except RuntimeError as error:
                report["fsdp1"] = str(error)
            mesh = init_device_mesh("cpu", (world,))
            for layer in shine.base_lm.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(shine, mesh=mesh)
            report["sharded"] = sum(type(p).__name__ == "DTensor" for p in shine.parameters())
        optimizer = torch.optim.AdamW([p for p in shine.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for step in range(3):
            rows = [4 * step + i for i in range(4)]  # the global batch; each rank takes its share
            labelled = int((batch(tokenizer, rows)["labels"] != -100).sum())
            loss = shine(**batch(tokenizer, rows[rank::world]), num_items_in_batch=labelled).loss
            (loss * world).backward()  # FSDP averages gradients over the ranks; the loss is a sum over them
            total = loss.detach().clone()
            if world > 1:
                dist.all_reduce(total)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(total.item())
        if rank == 0:
            json.dump({**report, "losses": losses}, open(out, "w"))
        if world > 1:
            dist.destroy_process_group()

    if __name__ == "__main__":
        world, out = int(sys.argv[1]), sys.argv[2]
        if world == 1:
            run(0, 1, out)
        else:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[4])
            mp.spawn(run, args=(world, out), nprocs=world, join=True)
""")


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _run(command: list[str]) -> subprocess.CompletedProcess:
    src = str(Path(peft_shine.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    config = {"max_context_length": 48, "max_conversation_length": 192, "per_device_train_batch_size": 2,
              "logging_steps": 1, "disable_tqdm": True, "save_strategy": "no", "report_to": "none",
              "model": {"lora_rank": 2, "lora_scale": 0.03}}
    texts = [f"word{i} word{i + 1} word{i + 2}" for i in range(8)]
    folder = write_training_folder(tmp_path_factory.mktemp("fsdp"), config, texts)
    (folder / "worker.py").write_text(TRAINER_WORKER)
    return folder


@pytest.mark.parametrize("sync_module_states", ["true", "false"])
def test_the_shipped_fsdp_config_on_a_cpu_is_refused_or_becomes_ddp(run_folder, tmp_path, sync_module_states):
    out = tmp_path / "out"
    result = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
                   "--num_processes", "2", "--mixed_precision", "no", "--fsdp_sync_module_states",
                   sync_module_states, "--main_process_port", _free_port(), str(run_folder / "worker.py"), str(out),
                   str(run_folder / "base"), str(run_folder / "texts.jsonl"), str(run_folder / "config.json")])
    if sync_module_states == "true":  # the config as shipped
        assert result.returncode != 0
        assert "`sync_module_states=True` is not supported on cpu" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report == {"world": 2, "fsdp": False, "wrapped": "DistributedDataParallel"}  # not sharded: DDP


def test_fsdp2_shards_a_shine_model_over_two_cpu_processes_to_the_losses_of_one(tmp_path):
    worker = tmp_path / "sharded.py"
    worker.write_text(SHARDED_WORKER)
    runs = {}
    for world in (2, 1):
        result = _run([sys.executable, str(worker), str(world), str(tmp_path / f"{world}.json"), str(TESTS),
                       _free_port()])
        assert result.returncode == 0, result.stderr[-4000:]
        runs[world] = json.loads((tmp_path / f"{world}.json").read_text())
    sharded, alone = runs[2], runs[1]
    assert "FSDP needs a non-CPU accelerator device" in sharded["fsdp1"]  # torch's FSDP 1 refuses a CPU
    assert sharded["sharded"] > 10  # the parameters are DTensors: each rank holds a shard
    assert len(sharded["losses"]) == 3 and sharded["losses"][0] != sharded["losses"][-1]
    for a, b in zip(sharded["losses"], alone["losses"]):
        assert abs(a - b) <= LOSS_TOLERANCE * abs(b), (sharded["losses"], alone["losses"])
