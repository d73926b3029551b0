#!/usr/bin/env bash
# Start one mongotune worker per visible NVIDIA GPU (from `nvidia-smi -L`), or
# N CPU workers when there is no GPU, and stop them all on Ctrl-C / SIGTERM
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
    CUDA_VISIBLE_DEVICES="$g" "$mongotune_bin" worker --gpu "$g" "$@" >>"$log_dir/worker-gpu$g.log" 2>&1 &
    pids+=($!)
    echo "worker on GPU $g: pid $! (log $log_dir/worker-gpu$g.log)" >&2
  done
else
  threads=$(( $(nproc) / cpu_workers )); [ "$threads" -ge 1 ] || threads=1
  for i in $(seq 0 $((cpu_workers - 1))); do
    CUDA_VISIBLE_DEVICES="" TF_NUM_INTRAOP_THREADS="$threads" OMP_NUM_THREADS="$threads" \
      "$mongotune_bin" worker --gpu none "$@" >>"$log_dir/worker-cpu$i.log" 2>&1 &
    pids+=($!)
    echo "CPU worker $i: pid $! (log $log_dir/worker-cpu$i.log)" >&2
  done
fi
wait
