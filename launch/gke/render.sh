#!/usr/bin/env bash
# Fill launch/gke/jobset.yaml (TPU) or jobset_gpu.yaml (GPU) and apply it with kubectl.
#
# Usage:
#   launch/gke/render.sh --name NAME --image IMAGE [options] [-- COMMAND [ARGS...]]
#   launch/gke/render.sh --name tb4 --image us-docker.pkg.dev/P/R/jaxdistill:tpu --topology 8x8 \
#       -- jaxdistill pretrain --config configs/tinybert4_general.yaml run_dir=/mnt/run/tb4
#
# Prints the manifest with --dry-run (also DRY_RUN=1); otherwise pipes it to `kubectl apply -f -`.
# With --xpk it prints the equivalent `xpk workload create` command instead and runs nothing.
# COMMAND (default: jaxdistill pretrain --config configs/tinybert4_general.yaml) runs in the
# container as `bash -c "exec COMMAND"`; the image must have jaxdistill and jax[tpu] (or
# jax[cuda]) installed, with the repository's configs/ in its working directory.
#
# Options:
#   --target tpu|gpu       which template (default tpu); --gpu is short for --target gpu
#   --name NAME            JobSet name: lowercase letters, digits, '-', at most 40 (required)
#   --image IMAGE          container image (required)
#   --accelerator A        TPU: cloud.google.com/gke-tpu-accelerator (default tpu-v5-lite-podslice);
#                          GPU: cloud.google.com/gke-accelerator (default nvidia-h100-80gb)
#   --topology T           TPU slice topology, e.g. 4x4, 8x8, 2x2x4 (default 4x4)
#   --chips-per-host N     TPU chips per host (default 4)
#   --gpus-per-host N      GPUs per node (default 8)
#   --hosts N              pods per slice. TPU: chips in the topology / chips per host (computed
#                          when omitted; must match when given). GPU: nodes (default 1)
#   --slices N             TPU slices, JobSet replicas talking over DCN (default 1)
#   --port P               GPU: coordinator port of process 0 (default 1234)
#   --max-restarts N       JobSet restarts before it gives up (default 3)
#   --spot                 schedule on Spot nodes (cloud.google.com/gke-spot; not for --xpk,
#                          where Spot is a property of the cluster's node pools)
#   --bucket B             mount gs://B with the gcsfuse CSI driver (put run_dir under --mount)
#   --mount DIR            where the bucket is mounted (default /mnt/run)
#   --service-account KSA  Kubernetes service account for the pods (gcsfuse needs one with access)
#   --xpk                  print the equivalent `xpk workload create` command (needs --cluster)
#   --cluster C            xpk: GKE cluster name
#   --project P, --zone Z  xpk: project and zone (default: gcloud's configuration)
#   --tpu-type T           xpk: --tpu-type (default from accelerator and topology, e.g. v5litepod-16)
#   --device-type T        xpk: --device-type (default from accelerator, e.g. h100-80gb-8)
#   --dry-run              print the manifest, apply nothing (also: DRY_RUN=1)
#   -h, --help             this text
# Bad arguments exit 2 with a message.
set -euo pipefail
# Bash 5.2 would read '&' in a ${v//pat/rep} replacement as "the match"; placeholders are literal.
shopt -u patsub_replacement 2>/dev/null || true

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { sed -n '2,/^# Bad arguments/p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "render.sh: error: $*" >&2; echo "Run 'launch/gke/render.sh --help' for the options." >&2; exit 2; }

# shq / shjoin: POSIX quoting of words and command lines.
source "$here/../_quote.sh"
# A YAML double-quoted scalar. Kubernetes expands $(VAR) in args itself; $$( keeps it literal.
yaml_str() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//\$\(/\$\$\(}
  REPLY="\"$s\""
}

target=tpu name="" image="" accelerator="" topology="4x4" chips=4 gpus=8 hosts="" slices=1
port=1234 restarts=3 spot=0 bucket="" mount="/mnt/run" sa="" xpk=0 cluster="" project="" zone=""
tpu_type="" device_type="" dry="${DRY_RUN:-0}" cmd=()

need() { [ "$#" -ge 2 ] && [ -n "$2" ] && [[ $2 != --* ]] || die "$1 needs a value."; }
posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'."; }
while [ "$#" -gt 0 ]; do
  arg=$1
  if [[ $arg =~ ^(--[a-z-]+)=(.*)$ ]]; then
    set -- "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${@:2}"; arg=$1
  fi
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --target) need "$@"; target=$2; shift 2 ;;
    --gpu) target=gpu; shift ;;
    --tpu) target=tpu; shift ;;
    --name) need "$@"; name=$2; shift 2 ;;
    --image) need "$@"; image=$2; shift 2 ;;
    --accelerator) need "$@"; accelerator=$2; shift 2 ;;
    --topology) need "$@"; topology=$2; shift 2 ;;
    --chips-per-host) need "$@"; posint "$1" "$2"; chips=$2; shift 2 ;;
    --gpus-per-host) need "$@"; posint "$1" "$2"; gpus=$2; shift 2 ;;
    --hosts) need "$@"; posint "$1" "$2"; hosts=$2; shift 2 ;;
    --slices) need "$@"; posint "$1" "$2"; slices=$2; shift 2 ;;
    --port) need "$@"; posint "$1" "$2"; port=$2; shift 2 ;;
    --max-restarts) need "$@"; [[ $2 =~ ^[0-9]+$ ]] || die "--max-restarts must be a number >= 0, got '$2'."
      restarts=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --bucket) need "$@"; bucket=${2#gs://}; bucket=${bucket%/}; shift 2 ;;
    --mount) need "$@"; mount=$2; shift 2 ;;
    --service-account) need "$@"; sa=$2; shift 2 ;;
    --xpk) xpk=1; shift ;;
    --cluster) need "$@"; cluster=$2; shift 2 ;;
    --project) need "$@"; project=$2; shift 2 ;;
    --zone) need "$@"; zone=$2; shift 2 ;;
    --tpu-type) need "$@"; tpu_type=$2; shift 2 ;;
    --device-type) need "$@"; device_type=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; cmd=("$@"); break ;;
    -*) die "unknown option '$arg'." ;;
    *) die "unexpected argument '$arg'; put the container command after '--'." ;;
  esac
done

case "$target" in tpu|gpu) ;; *) die "--target must be tpu or gpu, got '$target'." ;; esac
case "$dry" in 0|1) ;; *) die "DRY_RUN must be 0 or 1, got '$dry'." ;; esac
[ -n "$name" ] || die "--name is required (the JobSet name)."
[ -n "$image" ] || die "--image is required (a container image with jaxdistill installed)."
# Pod host names are <name>-<job>-<i>-<j> and must stay within 63 characters.
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] && [ "${#name}" -le 40 ] \
  || die "--name '$name' must be lowercase letters, digits and '-', start with a letter, at most 40 characters."
[[ $image =~ ^[^[:space:]\"]+$ ]] || die "--image '$image' must not contain spaces or quotes."
[ -z "$sa" ] || [[ $sa =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "--service-account '$sa' is not a valid name."
[ -z "$bucket" ] || [[ $bucket =~ ^[a-z0-9][-a-z0-9_.]*[a-z0-9]$ ]] || die "--bucket '$bucket' is not a bucket name."
[[ $mount =~ ^/[^[:space:]\"]*$ ]] || die "--mount '$mount' must be an absolute path without spaces."
[ "${#cmd[@]}" -gt 0 ] || cmd=(jaxdistill pretrain --config configs/tinybert4_general.yaml)

if [ "$target" = tpu ]; then
  accelerator=${accelerator:-tpu-v5-lite-podslice}
  [[ $topology =~ ^[1-9][0-9]*(x[1-9][0-9]*){1,2}$ ]] || die "--topology '$topology' must look like 4x4 or 2x2x4."
  total=1
  IFS=x read -r -a dims <<< "$topology"
  for d in "${dims[@]}"; do total=$((total * d)); done
  # The topology fixes the chip count; a host count that disagrees renders pods that never schedule.
  [ $((total % chips)) -eq 0 ] || die "topology $topology has $total chips, not a multiple of --chips-per-host $chips."
  want=$((total / chips))
  if [ -z "$hosts" ]; then hosts=$want
  elif [ "$hosts" != "$want" ]; then
    die "--hosts $hosts does not match topology $topology: $total chips / $chips per host = $want hosts."
  fi
else
  accelerator=${accelerator:-nvidia-h100-80gb}
  hosts=${hosts:-1}
  [ "$slices" = 1 ] || die "--slices applies to TPU slices only; for more GPU nodes use --hosts."
fi
[[ $accelerator =~ ^[a-z0-9][-a-z0-9]*$ ]] || die "--accelerator '$accelerator' is not a node label value."

# The container command: exec so that SIGTERM from the kubelet reaches jaxdistill directly.
# Not for xpk, which wraps --command in its own script that must run to its end.
shjoin "${cmd[@]}"; user_cmd=$REPLY; command_line="exec $user_cmd"

if [ "$xpk" = 1 ]; then
  [ -n "$cluster" ] || die "--xpk needs --cluster (the GKE cluster xpk manages)."
  x=(xpk workload create --cluster="$cluster" --workload="$name" --docker-image="$image")
  if [ "$target" = tpu ]; then
    if [ -z "$tpu_type" ]; then
      # xpk names slices the way Cloud TPU does: v5e and v6e count chips, v4 and v5p TensorCores.
      case "$accelerator" in
        tpu-v5-lite-podslice) tpu_type="v5litepod-$total" ;;
        tpu-v6e-slice) tpu_type="v6e-$total" ;;
        tpu-v5p-slice) tpu_type="v5p-$((2 * total))" ;;
        tpu-v4-podslice) tpu_type="v4-$((2 * total))" ;;
        *) die "no xpk --tpu-type known for accelerator '$accelerator'; pass --tpu-type." ;;
      esac
    fi
    x+=(--tpu-type="$tpu_type" --num-slices="$slices")
    xcmd=$user_cmd
  else
    device_type=${device_type:-${accelerator#nvidia-}-$gpus}
    x+=(--device-type="$device_type" --num-nodes="$hosts")
    # xpk's GPU JobSet sets JAX_COORDINATOR_ADDRESS/_PORT, NNODES and NODE_RANK; map them.
    xcmd="export JAXDISTILL_COORDINATOR=\$JAX_COORDINATOR_ADDRESS:\$JAX_COORDINATOR_PORT"
    xcmd+=" JAXDISTILL_NUM_PROCESSES=\$NNODES JAXDISTILL_PROCESS_ID=\$NODE_RANK && $user_cmd"
  fi
  x+=(--max-restarts="$restarts")
  [ -n "$project" ] && x+=(--project="$project")
  [ -n "$zone" ] && x+=(--zone="$zone")
  x+=(--command="$xcmd")
  shjoin "${x[@]}"
  printf '%s\n' "$REPLY"
  exit 0
fi

template="$here/jobset.yaml"
[ "$target" = gpu ] && template="$here/jobset_gpu.yaml"
[ -f "$template" ] || die "template $template is missing."
manifest=$(<"$template")

# Optional blocks: '#@gcs', '#@sa', '#@spot' lines become real lines (the marker turns into
# spaces, keeping the indentation) when asked for, and are dropped otherwise.
out=""
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    '#@gcs'*) [ -n "$bucket" ] || continue; line="     ${line#'#@gcs'}" ;;
    '#@sa'*) [ -n "$sa" ] || continue; line="    ${line#'#@sa'}" ;;
    '#@spot'*) [ "$spot" = 1 ] || continue; line="      ${line#'#@spot'}" ;;
  esac
  out+="$line"$'\n'
done <<< "$manifest"
manifest=$out

yaml_str "$command_line"; command_yaml=$REPLY
subst() { manifest=${manifest//"\${$1}"/$2}; }
subst NAME "$name"
subst IMAGE "$image"
subst ACCELERATOR "$accelerator"
subst TOPOLOGY "$topology"
subst HOSTS "$hosts"
subst SLICES "$slices"
subst CHIPS_PER_HOST "$chips"
subst GPUS_PER_HOST "$gpus"
subst PORT "$port"
subst MAX_RESTARTS "$restarts"
subst BUCKET "$bucket"
subst MOUNT "$mount"
subst SERVICE_ACCOUNT "$sa"
subst COMMAND "$command_yaml"
if [[ $manifest =~ \$\{[A-Z_]+\} ]]; then
  die "template $template still has the placeholder ${BASH_REMATCH[0]} after rendering."
fi

if [ "$dry" = 1 ]; then
  printf '%s' "$manifest"
else
  echo "+ kubectl apply -f -   (manifest: rerun with --dry-run to see it)" >&2
  printf '%s' "$manifest" | kubectl apply -f -
fi
