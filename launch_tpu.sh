#!/usr/bin/env bash
# Runs one resnet_jax job on every worker of a Cloud TPU VM or pod slice.
#
#   PROJECT=my-project ZONE=us-central2-b BUCKET=my-bucket ACCELERATOR_TYPE=v4-32 \
#     ./launch_tpu.sh [--dry-run] [--name=NAME] --config=configs/imagenet_r50.py [more resnet_jax.main flags]
#
# Creates the TPU (or reuses one of that name), copies this checkout to every worker, installs it (.[train], at the
# versions of constraints.txt) with JAX for TPU, and runs `python -m resnet_jax.main --distributed` on all workers at
# once with the dataset and the workdir on GCS (gs://BUCKET/tensorflow_datasets, gs://BUCKET/workdirs/NAME).
# Rerunning the same command resumes the run.
# --dry-run prints every gcloud command instead of running it.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: $0 [--dry-run] [--name=NAME] --config=CONFIG [resnet_jax.main flags...]
Environment variables:
  PROJECT           Google Cloud project (required)
  ZONE              TPU zone, e.g. us-central2-b (required)
  BUCKET            GCS bucket for data and workdirs, without gs:// (required)
  ACCELERATOR_TYPE  TPU type, e.g. v3-8, v4-32, v5litepod-16 (default: v3-8)
  RUNTIME_VERSION   TPU VM image (default: tpu-ubuntu2204-base)
  TPU_NAME          TPU VM name (default: resnet-jax-\$USER)
  DATA_DIR          tfds data directory (default: gs://\$BUCKET/tensorflow_datasets)
USAGE
}

dry_run=false
name=""
config=""  # the first --config=, taken here: a `printf | grep -q` pipeline would die of SIGPIPE under pipefail
args=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=true ;;
    --name=*) name="${arg#--name=}" ;;
    -h|--help) usage; exit 0 ;;
    --config=*) [[ -n "$config" ]] || config="${arg#--config=}"; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done
missing=()
for var in PROJECT ZONE BUCKET; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if (( ${#missing[@]} )) || [[ -z "$config" ]]; then
  (( ${#missing[@]} )) && echo "error: set ${missing[*]}" >&2
  [[ -n "$config" ]] || echo "error: give --config=configs/FILE.py" >&2
  usage >&2
  exit 2
fi
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v3-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
TPU_NAME="${TPU_NAME:-resnet-jax-${USER:-user}}"
DATA_DIR="${DATA_DIR:-gs://$BUCKET/tensorflow_datasets}"
if [[ -z "$name" ]]; then  # the workdir's name: the config file and its argument, e.g. imagenet_table3_resnet50
  name=$(basename "${config%%:*}" .py)
  [[ "$config" == *:* ]] && name="${name}_${config#*:}"
  name=$(echo "$name" | tr -c 'A-Za-z0-9_\n-' '_')
fi
workdir="gs://$BUCKET/workdirs/$name"

run() {
  if $dry_run; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}
tpu=(gcloud compute tpus tpu-vm)
where=(--project="$PROJECT" --zone="$ZONE")

$dry_run && echo "# unless \`${tpu[*]} describe $TPU_NAME ${where[*]}\` finds it:"
if $dry_run || ! "${tpu[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
  run "${tpu[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION"
fi

archive=$(mktemp -d)/resnet_jax.tar.gz
run git -C "$(dirname "$0")" archive --format=tar.gz -o "$archive" HEAD
run "${tpu[@]}" scp "$archive" "$TPU_NAME":resnet_jax.tar.gz "${where[@]}" --worker=all
run "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="mkdir -p resnet_jax && \
tar -xzf resnet_jax.tar.gz -C resnet_jax && cd resnet_jax && pip install -q -e '.[train]' -c constraints.txt 'jax[tpu]==0.10.2' gcsfs"

main_args=$(printf '%q ' "${args[@]}")
run "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="cd resnet_jax && \
python3 -m resnet_jax.main $main_args--distributed --workdir=$workdir --config.data.data_dir=$DATA_DIR"
