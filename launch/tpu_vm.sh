#!/usr/bin/env bash
# Run a jaxdistill command on every worker of a Cloud TPU VM slice (e.g. v5litepod-64).
#
# Usage:
#   launch/tpu_vm.sh --name NAME --zone ZONE [options] [-- jaxdistill COMMAND [ARGS...]]
#   launch/tpu_vm.sh --name my-v5e --zone us-west4-a --create --spot \
#       -- jaxdistill pretrain --config configs/tinybert4_general.yaml
#
# Steps (each command is printed before it runs; --dry-run prints them and runs nothing):
#   1. --create: `gcloud compute tpus tpu-vm create` (waits until READY), or with
#      --queued-resource `gcloud compute tpus queued-resources create` then polls until ACTIVE.
#   2. copy: tar the repository (without .git, runs/, caches) and
#      `gcloud compute tpus tpu-vm scp --worker=all`, then unpack into --remote-dir on every worker.
#   3. install: `python3 -m pip install -e . jax[tpu]` on every worker (".[demo]" with --extras demo).
#   4. run: `gcloud compute tpus tpu-vm ssh --worker=all --command=...`, the same command on all
#      workers at once. Without a command after --, it stops after step 3.
# On a TPU VM slice JAX finds the other workers from the TPU metadata itself: no JAXDISTILL_*
# variables are needed; jaxdistill calls jax.distributed.initialize() when it sees several.
#
# Options:
#   --name NAME            TPU VM (node) name; lowercase letters, digits, '-' (required)
#   --zone ZONE            zone, e.g. us-west4-a (required)
#   --project PROJECT      GCP project (default: gcloud's configured project)
#   --accelerator TYPE     accelerator type for --create (default v5litepod-64)
#   --runtime-version V    TPU software version for --create (default by type: v5litepod ->
#                          v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e,
#                          others tpu-ubuntu2204-base)
#   --create               create the slice first
#   --queued-resource      create it as a queued resource (implies --create); waits for ACTIVE
#   --spot                 with --create: Spot capacity (preemptible; rerunning resumes from run_dir)
#   --repo-dir DIR         local code to copy (default: the repository that holds this script)
#   --remote-dir DIR       code directory on each worker, relative to $HOME (default jaxdistill)
#   --no-copy              the code is already in --remote-dir on every worker
#   --no-install           skip the pip install
#   --extras LIST          pip extras to install too, e.g. demo (default: none)
#   --env KEY=VALUE        export KEY=VALUE on every worker before the command (repeatable)
#   --detach               run under nohup with output in REMOTE_DIR/jaxdistill.log, return at once
#   --iap                  scp/ssh through IAP (--tunnel-through-iap): workers without external IP
#   --dry-run              print the commands only (also: DRY_RUN=1)
#   -h, --help             this text
# Bad arguments exit 2 with a message.
set -euo pipefail

usage() { sed -n '2,/^# Bad arguments/p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tpu_vm.sh: error: $*" >&2; echo "Run 'launch/tpu_vm.sh --help' for the options." >&2; exit 2; }

# shq / shjoin: POSIX quoting of words and command lines.
source "$(dirname "${BASH_SOURCE[0]}")/_quote.sh"

name="" zone="" project="" accelerator="v5litepod-64" runtime="" create=0 queued=0 spot=0
repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" remote_dir="jaxdistill"
copy=1 install=1 extras="" detach=0 iap=0 dry="${DRY_RUN:-0}"
envs=() cmd=()

need() { [ "$#" -ge 2 ] && [ -n "$2" ] && [[ $2 != --* ]] || die "$1 needs a value."; }
while [ "$#" -gt 0 ]; do
  arg=$1
  # Accept both `--opt value` and `--opt=value`.
  if [[ $arg =~ ^(--[a-z-]+)=(.*)$ ]]; then
    set -- "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${@:2}"; arg=$1
  fi
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --name) need "$@"; name=$2; shift 2 ;;
    --zone) need "$@"; zone=$2; shift 2 ;;
    --project) need "$@"; project=$2; shift 2 ;;
    --accelerator|--accelerator-type) need "$@"; accelerator=$2; shift 2 ;;
    --runtime-version|--version) need "$@"; runtime=$2; shift 2 ;;
    --create) create=1; shift ;;
    --queued-resource) queued=1; create=1; shift ;;
    --spot) spot=1; shift ;;
    --repo-dir) need "$@"; repo_dir=$2; shift 2 ;;
    --remote-dir) need "$@"; remote_dir=$2; shift 2 ;;
    --no-copy) copy=0; shift ;;
    --no-install) install=0; shift ;;
    --extras) need "$@"; extras=$2; shift 2 ;;
    --env) need "$@"; envs+=("$2"); shift 2 ;;
    --detach) detach=1; shift ;;
    --iap) iap=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; cmd=("$@"); break ;;
    -*) die "unknown option '$arg'." ;;
    *) die "unexpected argument '$arg'; put the command to run after '--' (... -- jaxdistill pretrain ...)." ;;
  esac
done

[ -n "$name" ] || die "--name is required (the TPU VM name)."
[ -n "$zone" ] || die "--zone is required (e.g. --zone us-west4-a)."
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name '$name' is not a valid TPU name (lowercase letters, digits and '-', starting with a letter)."
[[ $zone =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$zone' does not look like a zone (e.g. us-west4-a)."
[ "$spot" = 0 ] || [ "$create" = 1 ] || die "--spot only applies when creating the slice (add --create)."
[[ $extras =~ ^[A-Za-z0-9_,-]*$ ]] || die "--extras '$extras' must be a comma list of extra names (e.g. demo)."
case "$dry" in 0|1) ;; *) die "DRY_RUN must be 0 or 1, got '$dry'." ;; esac
remote_dir=${remote_dir#\~/}  # gcloud scp and ssh start in $HOME; a quoted ~ would not expand
[ -n "$remote_dir" ] || die "--remote-dir must not be empty."
for kv in ${envs[@]+"${envs[@]}"}; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv' is not KEY=VALUE."
done
if [ "$copy" = 1 ]; then
  [ -d "$repo_dir" ] || die "--repo-dir '$repo_dir' is not a directory."
  [ -f "$repo_dir/setup.py" ] || [ -f "$repo_dir/pyproject.toml" ] \
    || die "--repo-dir '$repo_dir' has no setup.py or pyproject.toml (not a jaxdistill checkout)."
fi
if [ -z "$runtime" ]; then
  case "$accelerator" in
    v5litepod-*|v5e-*) runtime="v2-alpha-tpuv5-lite" ;;
    v5p-*) runtime="v2-alpha-tpuv5" ;;
    v6e-*) runtime="v2-alpha-tpuv6e" ;;
    *) runtime="tpu-ubuntu2204-base" ;;
  esac
fi

# Print a command, then run it unless this is a dry run. Dry-run output is the bare commands
# (a script you could run); a real run marks them with '+ ' on stderr, like `set -x`.
run() {
  shjoin "$@"
  if [ "$dry" = 1 ]; then
    printf '%s\n' "$REPLY"
  else
    printf '+ %s\n' "$REPLY" >&2
    "$@"
  fi
}

where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")
tunnel=()
[ "$iap" = 1 ] && tunnel=(--tunnel-through-iap)

# 1. Create.
if [ "$create" = 1 ]; then
  capacity=()
  [ "$spot" = 1 ] && capacity=(--spot)
  if [ "$queued" = 1 ]; then
    # A queued resource waits for capacity instead of failing when none is free right now.
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$runtime" ${capacity[@]+"${capacity[@]}"}
    describe=(gcloud compute tpus queued-resources describe "$name" "${where[@]}"
              --format=value\(state.state\))
    if [ "$dry" = 1 ]; then
      shjoin "${describe[@]}"
      printf '# poll until it prints ACTIVE (every %ss): %s\n' "${POLL_SECONDS:-30}" "$REPLY"
    else
      shjoin "${describe[@]}"; printf '+ %s  (polling until ACTIVE)\n' "$REPLY" >&2
      while :; do
        state=$("${describe[@]}") || state="unknown (describe failed; retrying)"
        case "$state" in
          ACTIVE) break ;;
          FAILED|SUSPENDED|SUSPENDING|DELETING)
            echo "tpu_vm.sh: queued resource $name is $state; see: gcloud compute tpus queued-resources describe $name --zone=$zone" >&2
            exit 1 ;;
        esac
        echo "queued resource $name: ${state:-unknown}; checking again in ${POLL_SECONDS:-30}s" >&2
        sleep "${POLL_SECONDS:-30}"
      done
    fi
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
      --accelerator-type="$accelerator" --version="$runtime" ${capacity[@]+"${capacity[@]}"}
  fi
fi

shq "$remote_dir"; rdir=$REPLY

# 2 and 3. Copy and install, in one ssh round to all workers.
setup=""
if [ "$copy" = 1 ]; then
  tarball="${TMPDIR:-/tmp}/jaxdistill-$name.tgz"
  [ "$dry" = 1 ] || trap 'rm -f "$tarball"' EXIT
  # Runs, caches and VCS data stay home: only the code travels.
  run tar -czf "$tarball" --exclude=.git --exclude=runs --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.venv -C "$repo_dir" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:jaxdistill-code.tgz" "${where[@]}" \
    --worker=all ${tunnel[@]+"${tunnel[@]}"}
  # Unpack over the old copy, never delete it first: the default run_dir (runs/...) lives there.
  setup="mkdir -p $rdir && tar -xzf jaxdistill-code.tgz -C $rdir && rm -f jaxdistill-code.tgz"
fi
if [ "$install" = 1 ]; then
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  shq "$target"; target=$REPLY
  # The default jax wheel has no TPU support; jax[tpu] adds libtpu for this jax version.
  setup+="${setup:+ && }cd $rdir && python3 -m pip install -e $target 'jax[tpu]'"
fi
if [ -n "$setup" ]; then
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
    ${tunnel[@]+"${tunnel[@]}"} --command="$setup"
fi

# 4. Run. A user-level pip install puts the entry point in ~/.local/bin, which a
# non-interactive ssh shell does not have on its PATH.
if [ "${#cmd[@]}" -gt 0 ]; then
  remote="cd $rdir && export PATH=\"\$HOME/.local/bin:\$PATH\""
  for kv in ${envs[@]+"${envs[@]}"}; do
    shq "${kv#*=}"; remote+=" && export ${kv%%=*}=$REPLY"
  done
  shjoin "${cmd[@]}"; user_cmd=$REPLY
  if [ "$detach" = 1 ]; then
    # Braces keep only the command in the background, so ssh does not wait for it.
    remote+=" && { nohup $user_cmd > jaxdistill.log 2>&1 < /dev/null & }"
  else
    remote+=" && $user_cmd"
  fi
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
    ${tunnel[@]+"${tunnel[@]}"} --command="$remote"
fi
