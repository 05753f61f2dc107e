#!/usr/bin/env bash
# The checks qihuang's CPU test suite cannot make, for a machine with a CUDA GPU. Each trains or
# serves a small random Llama made here (scripts/gpu_check_fixture.py; no network, no model
# download), is bounded by GPU_CHECK_LIMIT seconds, and prints one line: PASS, FAIL (with its
# log) or SKIP (with the reason: no GPU, one GPU only, a package not installed).
#
#   qlora-sft        QLoRA SFT on 1 GPU (bitsandbytes 4-bit base): killed after step 3, resumed to 4
#   deepspeed-zero3  LoRA SFT, DeepSpeed ZeRO-3 on 2 GPUs (examples/accelerate/deepspeed_zero3.yaml):
#                    killed after step 3, resumed to 4
#   fsdp-2gpu        LoRA SFT, FSDP2 on 2 GPUs (examples/accelerate/fsdp.yaml): killed, resumed
#   vllm-serve       `qihuang export` of the QLoRA adapter, `qihuang serve --engine vllm` on it,
#                    one chat completion through the openai client
#
# Usage: scripts/gpu_check.sh [--dry-run] [WORKDIR]
#   --dry-run   print every command (lines starting with CMD) instead of running it; needs no GPU
#               (tests/test_gpu_check.py parses them against the real option parsers)
# Environment: PYTHON (default python3), GPU_CHECK_LIMIT (seconds per check, default 300),
#   GPU_CHECK_PORT (default 8765; the launchers use the next two ports).
# Exit status: 0 when nothing failed, 1 otherwise.

set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY=1
  shift
fi
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/qihuang-gpu-check.XXXXXX")}
mkdir -p "$WORK"
PY=${PYTHON:-python3}
LIMIT=${GPU_CHECK_LIMIT:-300}
PORT=${GPU_CHECK_PORT:-8765}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export QIHUANG_HOME="$WORK/home" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL="$WORK/fixture/model"
DATA="$WORK/fixture/data"
# a few seconds of GPU time per run: checkpoint at step 2, killed after step 3, resumed to step 4
TRAIN=(--model "$MODEL" --dataset "$DATA" --max-steps 4 --save-steps 2 --batch-size 4 --logging-steps 1
       --cutoff-len 128 --eval-at-start false --overwrite)
ACCELERATE=("$PY" -m accelerate.commands.launch)
passed=0
failed=0
skipped=0
deadline=0
server_pid=""

report() { # STATUS NAME DETAIL (a dry run lists the checks as DRY)
  if ((DRY)); then
    printf 'DRY  %s\n' "$2"
    return
  fi
  printf '%-4s %-16s %s\n' "$1" "$2" "$3"
  case $1 in
    PASS) passed=$((passed + 1)) ;;
    FAIL) failed=$((failed + 1)) ;;
    SKIP) skipped=$((skipped + 1)) ;;
  esac
}

start_check() { deadline=$((SECONDS + LIMIT)); }

run() { # LOG COMMAND...: run it (output appended to LOG), killed at the check's deadline
  local log=$1
  shift
  if ((DRY)); then
    printf 'CMD'
    printf ' %q' "$@"
    printf '\n'
    return 0
  fi
  local left=$((deadline - SECONDS))
  if ((left <= 0)); then
    echo "time limit of ${LIMIT}s reached" >>"$log"
    return 124
  fi
  timeout --kill-after=10 "$left" "$@" >>"$log" 2>&1
}

last_error() { # LOG: the line to show for a failure
  grep -E 'Error|error:|FAILED|assert' "$1" 2>/dev/null | tail -n 1 | cut -c1-200
}

summary() { # LOG: the last line the check printed, and the time it took
  local line="dry run"
  ((DRY)) || line=$(tail -n 1 "$1")
  echo "$line ($((SECONDS - deadline + LIMIT)) s)"
}

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

cat >"$WORK/verify_run.py" <<'PYEOF'
import json, sys
from pathlib import Path
out, engine = Path(sys.argv[1]), sys.argv[2]
metrics = json.loads((out / "metrics.json").read_text())
manifest = json.loads((out / "checkpoints" / "step-2" / "checkpoint.json").read_text())
steps = [h["step"] for h in metrics["history"]]
assert metrics["steps"] == 4 and steps == [1, 2, 3, 4], f"steps {steps}"
assert manifest["engine"] == engine, f"checkpoint engine {manifest['engine']}, expected {engine}"
assert (out / "adapter_model.safetensors").is_file(), "no adapter in the output"
print(f"4 steps on {metrics['num_processes']} process(es), resumed from a {manifest['strategy']} checkpoint; "
      f"train loss {metrics['history'][0]['loss']:.4f} -> {metrics['train_loss']:.4f}")
PYEOF

# kill_resume NAME ENGINE OUT LAUNCHER... -- OPTIONS...: train with the LAUNCHER (python, or an
# accelerate launch prefix), killed by tests/train_worker.py after step 3, then resumed with
# `qihuang train --resume` to step 4, and the output verified. Reports PASS or FAIL.
kill_resume() {
  local name=$1 engine=$2 out=$3 log="$WORK/$1.log" launcher=() options=()
  shift 3
  while (($#)) && [[ $1 != "--" ]]; do
    launcher+=("$1")
    shift
  done
  shift
  options=("$@")
  : >"$log"
  run "$log" "${launcher[@]}" tests/train_worker.py --kill-at-step 3 "${TRAIN[@]}" --output "$out" "${options[@]}"
  local rc=$?
  if ((!DRY)) && { ((rc == 0)) || [[ ! -d $out/checkpoints/step-2 ]]; }; then
    report FAIL "$name" "the run was not killed after its step-2 checkpoint (exit $rc): $(last_error "$log"); log: $log"
    return 1
  fi
  local resume=("${TRAIN[@]/--overwrite/--resume}")
  if ! run "$log" "${launcher[@]}" -m qihuang.cli train "${resume[@]}" --output "$out" "${options[@]}"; then
    report FAIL "$name" "resume: $(last_error "$log"); log: $log"
    return 1
  fi
  if ! run "$log" "$PY" "$WORK/verify_run.py" "$out" "$engine"; then
    report FAIL "$name" "$(last_error "$log"); log: $log"
    return 1
  fi
  report PASS "$name" "$(summary "$log")"
}

check_qlora() {
  if ((!DRY)); then
    ((gpus >= 1)) || { report SKIP qlora-sft "no CUDA GPU"; return; }
    have bitsandbytes || { report SKIP qlora-sft "bitsandbytes not installed (pip install bitsandbytes)"; return; }
  fi
  start_check
  kill_resume qlora-sft dcp "$WORK/qlora" "$PY" -- --finetuning qlora --dtype bfloat16
}

check_deepspeed() {
  if ((!DRY)); then
    ((gpus >= 2)) || { report SKIP deepspeed-zero3 "needs 2 GPUs, found $gpus"; return; }
    have deepspeed || { report SKIP deepspeed-zero3 "deepspeed not installed (pip install deepspeed)"; return; }
  fi
  start_check
  kill_resume deepspeed-zero3 deepspeed "$WORK/zero3" "${ACCELERATE[@]}" --config_file \
    examples/accelerate/deepspeed_zero3.yaml --num_processes 2 --main_process_port $((PORT + 1)) --
}

check_fsdp() {
  if ((!DRY)); then
    ((gpus >= 2)) || { report SKIP fsdp-2gpu "needs 2 GPUs, found $gpus"; return; }
  fi
  start_check
  kill_resume fsdp-2gpu dcp "$WORK/fsdp" "${ACCELERATE[@]}" --config_file examples/accelerate/fsdp.yaml \
    --num_processes 2 --main_process_port $((PORT + 2)) --
}

cat >"$WORK/chat_client.py" <<'PYEOF'
import json, sys, time, urllib.request
from openai import OpenAI
port, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while True:  # vLLM takes a while to start
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("the server did not answer /health in time")
    time.sleep(2)
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="gpu-check")
reply = client.chat.completions.create(model="qihuang-gpu-check", max_tokens=16,
                                       messages=[{"role": "user", "content": "偏头痛的症状有哪些？"}])
text = reply.choices[0].message.content
assert isinstance(text, str) and reply.usage.completion_tokens > 0, reply
print(f"chat completion: {reply.usage.completion_tokens} tokens, {json.dumps(text[:40], ensure_ascii=False)}")
PYEOF

stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=""
  fi
}
trap stop_server EXIT

check_vllm() {
  local log="$WORK/vllm-serve.log" model="$WORK/merged"
  if ((!DRY)); then
    ((gpus >= 1)) || { report SKIP vllm-serve "no CUDA GPU"; return; }
    have vllm || { report SKIP vllm-serve "vllm not installed (pip install vllm)"; return; }
    have openai || { report SKIP vllm-serve "openai not installed (pip install openai)"; return; }
  fi
  start_check
  : >"$log"
  if ((DRY)) || [[ -f $WORK/qlora/adapter_config.json ]]; then
    run "$log" "$PY" -m qihuang.cli export --adapter "$WORK/qlora" --out "$model" --dtype bfloat16 --force ||
      { report FAIL vllm-serve "export: $(last_error "$log"); log: $log"; return; }
  else
    model=$MODEL # the QLoRA check did not leave an adapter: serve the base
  fi
  local serve=("$PY" -m qihuang.cli serve --engine vllm --model "$model" --port "$PORT" --no-grounded
               --served-name qihuang-gpu-check --max-new-tokens 16)
  if ((DRY)); then
    run "$log" "${serve[@]}"
  else
    "${serve[@]}" >>"$log" 2>&1 &
    server_pid=$!
  fi
  if run "$log" "$PY" "$WORK/chat_client.py" "$PORT" "$((deadline - SECONDS - 15))"; then
    report PASS vllm-serve "$(summary "$log") on $(basename "$model")"
  else
    report FAIL vllm-serve "$(last_error "$log"); log: $log"
  fi
  stop_server
}

gpus=0
if ((!DRY)); then
  gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' \
    2>/dev/null || echo 0)
fi
echo "gpu_check: $gpus CUDA GPU(s), work dir $WORK, ${LIMIT}s per check"
start_check
if ! run "$WORK/fixture.log" "$PY" scripts/gpu_check_fixture.py "$WORK/fixture"; then
  report FAIL fixture "$(last_error "$WORK/fixture.log"); log: $WORK/fixture.log"
  exit 1
fi
check_qlora
check_deepspeed
check_fsdp
check_vllm
if ((DRY)); then
  echo "gpu_check: dry run, nothing was run"
  exit 0
fi
echo "gpu_check: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
