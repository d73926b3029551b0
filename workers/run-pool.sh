#!/usr/bin/env bash
# Start one mongotune worker per visible NVIDIA GPU (from `nvidia-smi -L`), or
# N CPU workers when there is no GPU, keep each one running (a worker that
# crashes is restarted after a backoff that doubles up to 5 minutes and resets
# once a worker has run for 10 minutes), and stop them all on Ctrl-C / SIGTERM
# (each hands its running trial back to the queue).
#
#   MONGOTUNE_MONGO=mongodb://user@db-host:27017/mongotune?authSource=admin \
#   MONGOTUNE_MONGO_PASSWORD=... workers/run-pool.sh [--cpu-workers N] [-- extra worker args]
set -euo pipefail

cpu_workers=1
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-workers) cpu_workers="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done

mongotune_bin="${MONGOTUNE_BIN:-mongotune}"
log_dir="${MONGOTUNE_HOME:-$HOME/.mongotune}/logs"
mkdir -p "$log_dir"

gpus=()
if command -v nvidia-smi >/dev/null 2>&1; then
  while IFS= read -r line; do
    case "$line" in GPU\ *) gpus+=("${#gpus[@]}") ;; esac
  done < <(nvidia-smi -L 2>/dev/null || true)
fi

# keep_running LOG ENV... -- CMD...: run CMD until it exits 0 (stopped on purpose) or we are told to stop
keep_running() {
  local log="$1"; shift
  local delay=5 child="" code started
  trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
  stopping=0
  while [ "$stopping" = 0 ]; do
    started=$SECONDS
    env "$@" >>"$log" 2>&1 &
    child=$!
    code=0; wait "$child" || code=$?
    # a signal interrupts `wait`: wait again for the worker to hand its trial back
    while kill -0 "$child" 2>/dev/null; do code=0; wait "$child" || code=$?; done
    if [ "$stopping" = 1 ] || [ "$code" = 0 ]; then break; fi
    if [ $((SECONDS - started)) -ge 600 ]; then delay=5; fi
    echo "$(date '+%F %T') worker exited with code $code; restarting in ${delay}s" | tee -a "$log" >&2
    sleep "$delay" & wait $! || true
    delay=$(( delay * 2 > 300 ? 300 : delay * 2 ))
  done
}

pids=()
stop_all() {
  trap - INT TERM
  echo "stopping ${#pids[@]} worker(s)..." >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  exit 0
}
trap stop_all INT TERM

if [ ${#gpus[@]} -gt 0 ]; then
  for g in "${gpus[@]}"; do
    keep_running "$log_dir/worker-gpu$g.log" CUDA_VISIBLE_DEVICES="$g" "$mongotune_bin" worker --gpu "$g" "$@" &
    pids+=($!)
    echo "worker on GPU $g: supervisor pid $! (log $log_dir/worker-gpu$g.log)" >&2
  done
else
  threads=$(( $(nproc) / cpu_workers )); [ "$threads" -ge 1 ] || threads=1
  for i in $(seq 0 $((cpu_workers - 1))); do
    keep_running "$log_dir/worker-cpu$i.log" CUDA_VISIBLE_DEVICES="" TF_NUM_INTRAOP_THREADS="$threads" \
      OMP_NUM_THREADS="$threads" "$mongotune_bin" worker --gpu none "$@" &
    pids+=($!)
    echo "CPU worker $i: supervisor pid $! (log $log_dir/worker-cpu$i.log)" >&2
  done
fi
wait
