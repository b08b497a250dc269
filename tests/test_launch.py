"""Launchers: launch/tpu_vm.sh, launch/gke/render.sh, launch/slurm.sbatch and launch/local.sh.

Each script's --help, its bad-argument exits (2, with a message) and the exact commands its dry run
prints. Nothing here reaches a cloud or a cluster: PATH starts with stub gcloud, kubectl, srun and
xpk that only record their arguments, so the real (non-dry) code paths run too, and the tests check
that what a script prints is exactly what it runs. No JAX import; the whole file takes about a second.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TPU_VM = REPO / "launch" / "tpu_vm.sh"
RENDER = REPO / "launch" / "gke" / "render.sh"
SLURM = REPO / "launch" / "slurm.sbatch"
LOCAL = REPO / "launch" / "local.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the launchers are bash scripts")

# Records every call as NUL-separated words ending in a \x1e word; `describe` answers ACTIVE (a
# queued resource that is ready); kubectl keeps the manifest it was given on stdin.
STUB = r"""#!/usr/bin/env bash
printf '%s\0' "$(basename "$0")" "$@" $'\x1e' >> "$STUB_LOG"
case " $* " in *" describe "*) echo ACTIVE ;; esac
if [ "$(basename "$0")" = kubectl ]; then cat > "$STUB_LOG.stdin"; fi
exit 0
"""
# A stand-in for the jaxdistill entry point: prints its arguments and the distributed variables.
FAKE_JAXDISTILL = r"""#!/usr/bin/env bash
for v in JAXDISTILL_COORDINATOR JAXDISTILL_NUM_PROCESSES JAXDISTILL_PROCESS_ID JAX_LOCAL_DEVICE_IDS SLURM_LOCALID; do
  echo "$v=${!v-<unset>}"
done
printf 'arg:%s\n' "$@"
"""


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def sandbox(tmp_path):
    """An environment whose PATH starts with the stubs; no DRY_RUN/SLURM/JAXDISTILL leaks in."""
    bin_dir = tmp_path / "bin"
    for name in ("gcloud", "kubectl", "srun", "xpk", "sbatch"):
        _script(bin_dir / name, STUB)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "JAXDISTILL_", "JAX_", "DRY_RUN", "CUDA_VISIBLE"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
               STUB_LOG=str(tmp_path / "calls"), TMPDIR=str(tmp_path))
    return tmp_path, env


def run(script: Path, *args: str, env: dict, cwd: Path | None = None, check_rc: int | None = 0):
    proc = subprocess.run(["bash", str(script), *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=30)
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls"
    if not log.exists():
        return []
    out, cur = [], []
    for word in log.read_bytes().decode().split("\0")[:-1]:
        if word == "\x1e":
            out.append(cur)
            cur = []
        else:
            cur.append(word)
    return out


def lines(text: str) -> list[str]:
    """The command lines of a dry run (comments and blank lines dropped)."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


# --------------------------------------------------------------------------------------------
# --help and bad arguments


@pytest.mark.parametrize("script,words", [
    (TPU_VM, ["--name", "--zone", "--project", "--accelerator", "--runtime-version", "--create",
              "--queued-resource", "--spot", "--repo-dir", "--extras", "--dry-run", "DRY_RUN"]),
    (RENDER, ["--target", "--name", "--image", "--accelerator", "--topology", "--hosts",
              "--slices", "--xpk", "--cluster", "--bucket", "--dry-run", "kubectl apply"]),
    (SLURM, ["sbatch", "--ntasks-per-node", "JAXDISTILL_SLURM_MODE", "JAXDISTILL_PORT",
             "DRY_RUN", "scontrol show hostnames"]),
    (LOCAL, ["DRY_RUN", "JAXDISTILL_PORT", "N"]),
])
def test_help(sandbox, script, words):
    _, env = sandbox
    for flag in ("--help", "-h"):
        out = run(script, flag, env=env).stdout
        for word in words:
            assert word in out, (script.name, word)
    assert calls(sandbox[0]) == []


ZONE = ["--zone", "us-west4-a"]


@pytest.mark.parametrize("args,message", [
    ([], "--name is required"),
    (["--name", "tpu-1"], "--zone is required"),
    (["--name", "Bad_Name", *ZONE], "not a valid TPU name"),
    (["--name", "tpu-1", "--zone", "nowhere"], "does not look like a zone"),
    (["--name", "tpu-1", *ZONE, "--bogus"], "unknown option '--bogus'"),
    (["--name", "tpu-1", *ZONE, "jaxdistill"], "after '--'"),
    (["--name", "tpu-1", *ZONE, "--spot"], "--spot only applies"),
    (["--name", "tpu-1", *ZONE, "--env", "NOVALUE"], "is not KEY=VALUE"),
    (["--name", "tpu-1", *ZONE, "--extras", "demo;rm"], "--extras"),
    (["--name"], "--name needs a value"),
    (["--name", "tpu-1", *ZONE, "--repo-dir", "/nonexistent/dir"], "is not a directory"),
])
def test_tpu_vm_bad_arguments(sandbox, args, message):
    tmp_path, env = sandbox
    proc = run(TPU_VM, *args, "--dry-run", env=env, check_rc=2)
    assert message in proc.stderr and "error" in proc.stderr
    assert proc.stdout == "" and calls(tmp_path) == []


@pytest.mark.parametrize("args,message", [
    (["--image", "img"], "--name is required"),
    (["--name", "tb4"], "--image is required"),
    (["--name", "TB4", "--image", "img"], "must be lowercase"),
    (["--name", "tb4", "--image", "img", "--target", "cpu"], "--target must be tpu or gpu"),
    (["--name", "tb4", "--image", "img", "--topology", "4by4"], "--topology '4by4'"),
    (["--name", "tb4", "--image", "img", "--topology", "4x4", "--hosts", "2"],
     "--hosts 2 does not match topology 4x4: 16 chips / 4 per host = 4 hosts"),
    (["--name", "tb4", "--image", "img", "--hosts", "0"], "positive integer"),
    (["--name", "tb4", "--image", "img", "--gpu", "--slices", "2"], "--slices applies to TPU"),
    (["--name", "tb4", "--image", "img", "--xpk"], "--xpk needs --cluster"),
    (["--name", "tb4", "--image", "img", "--bucket", "gs://b/sub/dir"], "not a bucket name"),
    (["--name", "tb4", "--image", "img", "--frobnicate"], "unknown option"),
])
def test_render_bad_arguments(sandbox, args, message):
    tmp_path, env = sandbox
    proc = run(RENDER, *args, env=env, check_rc=2)
    assert message in proc.stderr
    assert proc.stdout == "" and calls(tmp_path) == []


# --------------------------------------------------------------------------------------------
# launch/tpu_vm.sh


@pytest.fixture
def mini_repo(tmp_path):
    """A stand-in checkout to copy (copying the real repository would tar its runs and caches)."""
    repo = tmp_path / "src"
    (repo / "jaxdistill").mkdir(parents=True)
    (repo / "setup.py").write_text("# stand-in\n")
    (repo / "jaxdistill" / "__init__.py").write_text("")
    (repo / "runs" / "old").mkdir(parents=True)
    (repo / "runs" / "old" / "big.bin").write_bytes(b"x" * 10)
    return repo


INSTALL = ("gcloud compute tpus tpu-vm ssh my-tpu --zone=us-west4-a --project=my-proj --worker=all "
           "--command='mkdir -p jaxdistill && tar -xzf jaxdistill-code.tgz -C jaxdistill && "
           "rm -f jaxdistill-code.tgz && cd jaxdistill && python3 -m pip install -e . "
           "'\\''jax[tpu]'\\'''")
RUN = ("gcloud compute tpus tpu-vm ssh my-tpu --zone=us-west4-a --project=my-proj --worker=all "
       "--command='cd jaxdistill && export PATH=\"$HOME/.local/bin:$PATH\" && "
       "jaxdistill pretrain --config configs/tinybert4_general.yaml mesh.data=-1'")
JOB = ["jaxdistill", "pretrain", "--config", "configs/tinybert4_general.yaml", "mesh.data=-1"]


def test_tpu_vm_dry_run_prints_exact_commands(sandbox, mini_repo):
    tmp_path, env = sandbox
    out = run(TPU_VM, "--name", "my-tpu", "--zone", "us-west4-a", "--project", "my-proj",
              "--repo-dir", str(mini_repo), "--dry-run", "--", *JOB, env=env).stdout
    got = lines(out)
    tarball = f"{tmp_path}/jaxdistill-my-tpu.tgz"
    assert shlex.split(got[0]) == [
        "tar", "-czf", tarball, "--exclude=.git", "--exclude=runs", "--exclude=__pycache__",
        "--exclude=*.egg-info", "--exclude=.pytest_cache", "--exclude=.venv", "-C", str(mini_repo), "."]
    assert shlex.split(got[1]) == [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "my-tpu:jaxdistill-code.tgz",
        "--zone=us-west4-a", "--project=my-proj", "--worker=all"]
    assert got[2:] == [INSTALL, RUN]
    # Nothing ran: no gcloud call, no tarball.
    assert calls(tmp_path) == [] and not Path(tarball).exists()
    # DRY_RUN=1 is the same as --dry-run.
    env1 = dict(env, DRY_RUN="1")
    assert run(TPU_VM, "--name", "my-tpu", "--zone", "us-west4-a", "--project", "my-proj",
               "--repo-dir", str(mini_repo), "--", *JOB, env=env1).stdout == out


def test_tpu_vm_create_plain_queued_and_spot(sandbox):
    _, env = sandbox
    base = ["--name", "my-tpu", "--zone", "us-west4-a", "--no-copy", "--no-install", "--dry-run"]
    out = lines(run(TPU_VM, *base, "--create", "--", "jaxdistill", "pretrain", env=env).stdout)
    assert out[0] == ("gcloud compute tpus tpu-vm create my-tpu --zone=us-west4-a "
                      "--accelerator-type=v5litepod-64 --version=v2-alpha-tpuv5-lite")
    assert out[1].endswith("--command='cd jaxdistill && export PATH=\"$HOME/.local/bin:$PATH\" "
                           "&& jaxdistill pretrain'")
    assert len(out) == 2  # --no-copy --no-install: no tar, scp or pip

    out = run(TPU_VM, *base, "--queued-resource", "--spot", "--accelerator", "v5p-128",
              "--", "jaxdistill", "pretrain", env=env).stdout
    assert lines(out)[0] == (
        "gcloud compute tpus queued-resources create my-tpu --node-id=my-tpu --zone=us-west4-a "
        "--accelerator-type=v5p-128 --runtime-version=v2-alpha-tpuv5 --spot")
    assert ("gcloud compute tpus queued-resources describe my-tpu --zone=us-west4-a "
            "--format='value(state.state)'") in out  # the poll, shown as a comment

    out = lines(run(TPU_VM, *base, "--create", "--spot", "--runtime-version", "my-image",
                    "--accelerator=v6e-16", env=env).stdout)
    assert out == ["gcloud compute tpus tpu-vm create my-tpu --zone=us-west4-a "
                   "--accelerator-type=v6e-16 --version=my-image --spot"]


def test_tpu_vm_extras_env_detach_iap(sandbox, mini_repo):
    _, env = sandbox
    out = lines(run(TPU_VM, "--name", "my-tpu", "--zone", "us-west4-a", "--repo-dir", str(mini_repo),
                    "--extras", "demo", "--env", "XLA_FLAGS=--xla_a=1 --xla_b", "--detach", "--iap",
                    "--remote-dir", "~/code", "--dry-run", "--", "jaxdistill", "pretrain",
                    env=env).stdout)
    scp, install, job = out[1], out[2], out[3]
    assert scp.endswith("--worker=all --tunnel-through-iap")
    assert install == (
        "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-west4-a --worker=all --tunnel-through-iap "
        "--command='mkdir -p code && tar -xzf jaxdistill-code.tgz -C code && rm -f jaxdistill-code.tgz"
        " && cd code && python3 -m pip install -e '\\''.[demo]'\\'' '\\''jax[tpu]'\\'''")
    remote = shlex.split(job)[-1].removeprefix("--command=")
    assert remote == ("cd code && export PATH=\"$HOME/.local/bin:$PATH\" && "
                      "export XLA_FLAGS='--xla_a=1 --xla_b' && "
                      "{ nohup jaxdistill pretrain > jaxdistill.log 2>&1 < /dev/null & }")


def test_tpu_vm_remote_command_keeps_every_argument(sandbox, mini_repo):
    """The --command string, run by a worker's shell, hands jaxdistill exactly the arguments given."""
    tmp_path, env = sandbox
    tricky = ["jaxdistill", "pretrain", "run_dir=/mnt/it's here", "x=$HOME;echo no", 'q="a b"', "*"]
    out = lines(run(TPU_VM, "--name", "my-tpu", "--zone", "us-west4-a", "--no-copy", "--no-install",
                    "--env", "MY_VAR=a 'b' $c", "--dry-run", "--", *tricky, env=env).stdout)
    assert len(out) == 1
    remote = shlex.split(out[0])[-1].removeprefix("--command=")
    home = tmp_path / "home"
    (home / "jaxdistill").mkdir(parents=True)
    _script(home / ".local" / "bin" / "jaxdistill", FAKE_JAXDISTILL + 'echo "MY_VAR=$MY_VAR"\n')
    proc = subprocess.run(["bash", "-c", remote], env=dict(env, HOME=str(home)), cwd=home,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    got = [ln[4:] for ln in proc.stdout.splitlines() if ln.startswith("arg:")]
    assert got == tricky[1:]
    assert "MY_VAR=a 'b' $c" in proc.stdout


def test_tpu_vm_real_run_executes_what_it_prints(sandbox, mini_repo):
    tmp_path, env = sandbox
    args = ["--name", "my-tpu", "--zone", "us-west4-a", "--project", "my-proj", "--queued-resource",
            "--repo-dir", str(mini_repo), "--", *JOB]
    printed = [shlex.split(ln) for ln in lines(run(TPU_VM, "--dry-run", *args, env=env).stdout)]
    proc = run(TPU_VM, *args, env=dict(env, POLL_SECONDS="0"))
    made = calls(tmp_path)
    describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-tpu",
                "--zone=us-west4-a", "--project=my-proj", "--format=value(state.state)"]
    # The stubs saw the printed gcloud commands, in order, plus the poll; tar ran for real.
    assert made == [printed[0], describe] + [c for c in printed[1:] if c[0] == "gcloud"]
    assert printed[1][0] == "tar"
    assert proc.stderr.count("+ gcloud") == 5 and "+ tar" in proc.stderr
    # The tarball was removed after the copy.
    assert not (tmp_path / "jaxdistill-my-tpu.tgz").exists()


def test_tpu_vm_tarball_holds_code_not_runs(sandbox, mini_repo):
    tmp_path, env = sandbox
    # Keep the tarball: replace the stub scp with one that copies it aside.
    keep = tmp_path / "kept.tgz"
    _script(tmp_path / "bin" / "gcloud",
            STUB.replace("exit 0", f'[ "$4" = scp ] && cp "$5" {keep}\nexit 0'))
    run(TPU_VM, "--name", "my-tpu", "--zone", "us-west4-a", "--repo-dir", str(mini_repo),
        "--no-install", env=env)
    names = subprocess.run(["tar", "-tzf", str(keep)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "./setup.py" in names and "./jaxdistill/__init__.py" in names
    assert not any("runs" in n for n in names)


# --------------------------------------------------------------------------------------------
# launch/gke/render.sh


def _pod(doc: dict) -> dict:
    return doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]


def test_render_tpu_manifest(sandbox):
    tmp_path, env = sandbox
    out = run(RENDER, "--name", "tb4", "--image", "us-docker.pkg.dev/p/r/jaxdistill:tpu",
              "--topology", "4x4", "--dry-run", "--", *JOB, env=env).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == 1
    js = docs[0]
    assert js["kind"] == "JobSet" and js["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert js["metadata"]["name"] == "tb4"
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 3
    rj = js["spec"]["replicatedJobs"][0]
    assert rj["replicas"] == 1
    assert rj["template"]["spec"]["parallelism"] == rj["template"]["spec"]["completions"] == 4
    pod = _pod(js)["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "4x4"}
    (c,) = pod["containers"]
    assert c["image"] == "us-docker.pkg.dev/p/r/jaxdistill:tpu"
    assert c["command"] == ["bash", "-c"]
    assert c["args"] == ["exec jaxdistill pretrain --config configs/tinybert4_general.yaml mesh.data=-1"]
    assert c["resources"]["limits"] == {"google.com/tpu": 4}
    assert "env" not in c  # JAX finds the TPU workers itself
    # Optional parts stay out unless asked for.
    assert "volumes" not in pod and "serviceAccountName" not in pod and "metadata" not in _pod(js)
    assert not re.search(r"\$\{[A-Z_]+\}", out) and calls(tmp_path) == []


def test_render_tpu_multislice_with_bucket_spot_and_account(sandbox):
    _, env = sandbox
    out = run(RENDER, "--name", "tb4-big", "--image", "img:1", "--topology", "8x8", "--slices", "2",
              "--bucket", "gs://my-runs/", "--mount", "/mnt/runs", "--service-account", "jd-ksa",
              "--spot", "--max-restarts", "10", "--dry-run", env=env).stdout
    js = yaml.safe_load(out)
    rj = js["spec"]["replicatedJobs"][0]
    assert rj["replicas"] == 2 and rj["template"]["spec"]["parallelism"] == 16
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 10
    tpl = _pod(js)
    assert tpl["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    pod = tpl["spec"]
    assert pod["serviceAccountName"] == "jd-ksa"
    assert pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "8x8"
    assert pod["volumes"] == [{"name": "run-storage", "csi": {
        "driver": "gcsfuse.csi.storage.gke.io",
        "volumeAttributes": {"bucketName": "my-runs", "mountOptions": "implicit-dirs"}}}]
    (c,) = pod["containers"]
    assert c["volumeMounts"] == [{"name": "run-storage", "mountPath": "/mnt/runs"}]
    # The default command when none is given.
    assert c["args"] == ["exec jaxdistill pretrain --config configs/tinybert4_general.yaml"]


def test_render_gpu_manifest_derives_jaxdistill_env(sandbox):
    _, env = sandbox
    out = run(RENDER, "--target", "gpu", "--name", "tb4-gpu", "--image", "img:cuda", "--hosts", "2",
              "--bucket", "runs-bucket", "--dry-run", "--", *JOB, env=env).stdout
    js = yaml.safe_load(out)
    rj = js["spec"]["replicatedJobs"][0]
    spec = rj["template"]["spec"]
    assert rj["replicas"] == 1 and spec["parallelism"] == spec["completions"] == 2
    assert spec["completionMode"] == "Indexed"
    pod = _pod(js)["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert c["args"] == ["exec " + " ".join(JOB)]
    envs = {e["name"]: e for e in c["env"]}
    coord = envs["JAXDISTILL_COORDINATOR"]["value"]
    assert coord == "$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME):1234"
    # Kubernetes expands $(VAR) from the variables listed before it: pod 0-0 of this JobSet.
    names = [e["name"] for e in c["env"]]
    assert names.index("JOBSET_NAME") < names.index("JAXDISTILL_COORDINATOR")
    assert names.index("REPLICATED_JOB_NAME") < names.index("JAXDISTILL_COORDINATOR")
    expanded = coord.replace("$(JOBSET_NAME)", js["metadata"]["name"]).replace(
        "$(REPLICATED_JOB_NAME)", rj["name"])
    assert expanded == "tb4-gpu-workers-0-0.tb4-gpu:1234"
    assert envs["JAXDISTILL_NUM_PROCESSES"]["value"] == "2"
    assert envs["JAXDISTILL_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert envs["JOBSET_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['jobset.sigs.k8s.io/jobset-name']"
    assert {"name": "run-storage", "mountPath": "/mnt/run"} in c["volumeMounts"]
    assert [v["name"] for v in pod["volumes"]] == ["dshm", "run-storage"]


def test_render_command_survives_yaml_and_kubernetes(sandbox):
    """Quotes, $, & and $(...) in the command reach bash unchanged (K8s turns $$( back into $()."""
    _, env = sandbox
    cmd = ["jaxdistill", "pretrain", 'x="a & b"', "run_dir=/mnt/it's", "y=$(hostname)", "back\\slash"]
    out = run(RENDER, "--name", "tb4", "--image", "img", "--dry-run", "--", *cmd, env=env).stdout
    (arg,) = yaml.safe_load(out)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"]["containers"][0]["args"]
    as_kubelet_passes_it = arg.replace("$$(", "$(")
    assert shlex.split(as_kubelet_passes_it) == ["exec", *cmd]


def test_render_applies_with_kubectl_unless_dry_run(sandbox):
    tmp_path, env = sandbox
    args = ["--name", "tb4", "--image", "img", "--topology", "2x4", "--chips-per-host", "8"]
    manifest = run(RENDER, *args, "--dry-run", env=env).stdout
    assert yaml.safe_load(manifest)["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 1
    proc = run(RENDER, *args, env=env)
    assert calls(tmp_path) == [["kubectl", "apply", "-f", "-"]]
    assert (tmp_path / "calls.stdin").read_text() == manifest
    assert "kubectl apply -f -" in proc.stderr


def test_render_xpk_commands(sandbox):
    tmp_path, env = sandbox
    out = run(RENDER, "--name", "tb4", "--image", "img", "--topology", "8x8", "--slices", "2",
              "--xpk", "--cluster", "my-cluster", "--project", "p", "--zone", "us-west4-a",
              "--", *JOB, env=env).stdout
    assert out.splitlines() == [
        "xpk workload create --cluster=my-cluster --workload=tb4 --docker-image=img "
        "--tpu-type=v5litepod-64 --num-slices=2 --max-restarts=3 --project=p --zone=us-west4-a "
        "--command='jaxdistill pretrain --config configs/tinybert4_general.yaml mesh.data=-1'"]
    out = run(RENDER, "--name", "tb4", "--image", "img", "--accelerator", "tpu-v5p-slice",
              "--topology", "2x2x4", "--xpk", "--cluster", "c", env=env).stdout
    assert "--tpu-type=v5p-32 " in out  # 16 chips = 32 TensorCores
    out = run(RENDER, "--gpu", "--name", "tb4-gpu", "--image", "img", "--hosts", "4", "--xpk",
              "--cluster", "c", "--", "jaxdistill", "pretrain", env=env).stdout
    assert out.splitlines() == [
        "xpk workload create --cluster=c --workload=tb4-gpu --docker-image=img "
        "--device-type=h100-80gb-8 --num-nodes=4 --max-restarts=3 "
        "--command='export JAXDISTILL_COORDINATOR=$JAX_COORDINATOR_ADDRESS:$JAX_COORDINATOR_PORT "
        "JAXDISTILL_NUM_PROCESSES=$NNODES JAXDISTILL_PROCESS_ID=$NODE_RANK && jaxdistill pretrain'"]
    assert calls(tmp_path) == []


def test_gke_templates_parse_unrendered():
    """The templates are valid YAML before rendering too (placeholders are plain scalars)."""
    for name in ("jobset.yaml", "jobset_gpu.yaml"):
        (doc,) = list(yaml.safe_load_all((REPO / "launch" / "gke" / name).read_text()))
        assert doc["kind"] == "JobSet"


# --------------------------------------------------------------------------------------------
# launch/slurm.sbatch

FAKE_SLURM = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu01,gpu02", "SLURM_NNODES": "2",
              "SLURM_NTASKS": "2"}
TASK_NODE = 'unset SLURM_LOCALID; export JAXDISTILL_PROCESS_ID=$SLURM_PROCID; exec jaxdistill "$@"'
TASK_GPU = ("case ${CUDA_VISIBLE_DEVICES-all,} in *,*) ids=$SLURM_LOCALID ;; *) ids=0 ;; esac; "
            "export JAXDISTILL_PROCESS_ID=$SLURM_PROCID "
            "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-$ids}; exec jaxdistill \"$@\"")


def test_slurm_headers():
    text = SLURM.read_text()
    for header in ("#SBATCH --nodes=", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=",
                   "#SBATCH --signal=TERM@"):
        assert header in text


def test_slurm_dry_run_one_process_per_node(sandbox):
    _, env = sandbox
    out = run(SLURM, "pretrain", "--config", "configs/tinybert4_general.yaml", "run_dir=/a b",
              env=dict(env, DRY_RUN="1", **FAKE_SLURM)).stdout
    # Port as JAX derives it: 61440 + job id % 4096.
    assert lines(out) == [
        "export JAXDISTILL_COORDINATOR=gpu01:62674",
        "export JAXDISTILL_NUM_PROCESSES=2",
        "srun --kill-on-bad-exit=1 --label bash -c " + shlex.quote(TASK_NODE)
        + " jaxdistill pretrain --config configs/tinybert4_general.yaml 'run_dir=/a b'"]
    assert "# task 1 on gpu02: JAXDISTILL_PROCESS_ID=1" in out


def test_slurm_dry_run_one_process_per_gpu_with_scontrol(sandbox):
    tmp_path, env = sandbox
    _script(tmp_path / "bin" / "scontrol",
            '#!/usr/bin/env bash\n[ "$*" = "show hostnames gpu[003-004]" ] && printf "gpu003\\ngpu004\\n"\n')
    fake = dict(FAKE_SLURM, SLURM_JOB_NODELIST="gpu[003-004]", SLURM_NTASKS="16", DRY_RUN="1",
                JAXDISTILL_PORT="5555", SRUN_ARGS="--mpi=none --cpu-bind=none")
    out = run(SLURM, "jaxdistill", "pretrain", env=dict(env, **fake)).stdout
    assert lines(out) == [
        "export JAXDISTILL_COORDINATOR=gpu003:5555",
        "export JAXDISTILL_NUM_PROCESSES=16",
        "srun --kill-on-bad-exit=1 --label --mpi=none --cpu-bind=none bash -c "
        + shlex.quote(TASK_GPU) + " jaxdistill pretrain"]
    assert "# task 15 on gpu004: JAXDISTILL_PROCESS_ID=15 (local 7)" in out
    # Forced per-node mode with 8 tasks per node is allowed (the user said so).
    out = run(SLURM, "pretrain", env=dict(env, JAXDISTILL_SLURM_MODE="node", **fake)).stdout
    assert shlex.quote(TASK_NODE) in out


def test_slurm_without_scontrol_takes_first_of_compressed_list(sandbox):
    _, env = sandbox
    fake = dict(FAKE_SLURM, SLURM_JOB_NODELIST="node[07-09,12]", SLURM_NNODES="4",
                SLURM_NTASKS="4", DRY_RUN="1")
    out = run(SLURM, "pretrain", env=dict(env, **fake)).stdout
    assert "export JAXDISTILL_COORDINATOR=node07:62674" in out


def test_slurm_task_command_sets_process_id_and_devices(sandbox):
    """Run the per-task snippet as srun would, with a fake jaxdistill."""
    tmp_path, env = sandbox
    _script(tmp_path / "bin" / "jaxdistill", FAKE_JAXDISTILL)
    base = dict(env, SLURM_PROCID="5", SLURM_LOCALID="1", JAXDISTILL_COORDINATOR="gpu01:1",
                JAXDISTILL_NUM_PROCESSES="8")

    def task(snippet, **extra):
        proc = subprocess.run(["bash", "-c", snippet, "jaxdistill", "pretrain", "a b"],
                              env=dict(base, **extra), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    node = task(TASK_NODE)
    assert "JAXDISTILL_PROCESS_ID=5" in node and "SLURM_LOCALID=<unset>" in node
    assert "JAX_LOCAL_DEVICE_IDS=<unset>" in node and node[-2:] == ["arg:pretrain", "arg:a b"]
    assert "JAX_LOCAL_DEVICE_IDS=1" in task(TASK_GPU)  # sees all GPUs: its own is SLURM_LOCALID
    assert "JAX_LOCAL_DEVICE_IDS=1" in task(TASK_GPU, CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert "JAX_LOCAL_DEVICE_IDS=0" in task(TASK_GPU, CUDA_VISIBLE_DEVICES="5")  # bound by SLURM
    # The snippets in the script are the ones tested here.
    out = run(SLURM, "pretrain", env=dict(env, DRY_RUN="1", **FAKE_SLURM)).stdout
    assert shlex.split(lines(out)[2])[5] == TASK_NODE


def test_slurm_real_run_executes_what_it_prints(sandbox):
    tmp_path, env = sandbox
    submit = tmp_path / "submit"
    submit.mkdir()
    _script(tmp_path / "bin" / "srun", STUB.replace("exit 0", 'pwd > "$STUB_LOG.cwd"\nexit 0'))
    fake = dict(FAKE_SLURM, SLURM_SUBMIT_DIR=str(submit))
    proc = run(SLURM, "pretrain", "run_dir=x y", env=dict(env, **fake))
    printed = shlex.split(lines(proc.stdout)[2])
    assert calls(tmp_path) == [printed]
    assert printed[-2:] == ["pretrain", "run_dir=x y"]
    assert (tmp_path / "calls.cwd").read_text().strip() == str(submit)


@pytest.mark.parametrize("fake,args,message", [
    ({}, ["pretrain"], "not inside a SLURM allocation"),
    (FAKE_SLURM, [], "give the jaxdistill command"),
    (FAKE_SLURM, ["jaxdistill"], "give the jaxdistill subcommand"),
    (dict(FAKE_SLURM, JAXDISTILL_SLURM_MODE="socket"), ["pretrain"], "must be node, gpu or auto"),
    (dict(FAKE_SLURM, SLURM_NTASKS="3"), ["pretrain"], "uneven"),
    (dict(FAKE_SLURM, JAXDISTILL_PORT="99999"), ["pretrain"], "port number"),
    (dict(FAKE_SLURM, SLURM_JOB_ID="abc"), ["pretrain"], "must be a number"),
])
def test_slurm_bad_input(sandbox, fake, args, message):
    tmp_path, env = sandbox
    proc = run(SLURM, *args, env=dict(env, DRY_RUN="1", **fake), check_rc=2)
    assert message in proc.stderr
    assert calls(tmp_path) == []


# --------------------------------------------------------------------------------------------
# launch/local.sh


def test_local_dry_run_prints_one_line_per_process(sandbox):
    _, env = sandbox
    out = run(LOCAL, "3", "jaxdistill", "pretrain", "steps=1",
              env=dict(env, DRY_RUN="1", JAXDISTILL_PORT="4321")).stdout
    assert out.splitlines() == [
        f"JAXDISTILL_COORDINATOR=127.0.0.1:4321 JAXDISTILL_NUM_PROCESSES=3 JAXDISTILL_PROCESS_ID={i} "
        "jaxdistill pretrain steps=1" for i in range(3)]


def test_local_runs_processes_with_their_ids(sandbox):
    tmp_path, env = sandbox
    _script(tmp_path / "bin" / "jaxdistill", FAKE_JAXDISTILL)
    out = run(LOCAL, "2", "jaxdistill", "pretrain", env=dict(env, JAXDISTILL_PORT="4321")).stdout
    for i in range(2):
        assert f"[{i}] JAXDISTILL_PROCESS_ID={i}" in out
        assert f"[{i}] JAXDISTILL_COORDINATOR=127.0.0.1:4321" in out


@pytest.mark.parametrize("args", [["abc", "jaxdistill"], ["3"]])
def test_local_bad_arguments(sandbox, args):
    _, env = sandbox
    proc = run(LOCAL, *args, env=dict(env, DRY_RUN="1", JAXDISTILL_PORT="1"), check_rc=2)
    assert proc.stdout.strip() or proc.stderr.strip()


# --------------------------------------------------------------------------------------------
# docs/scaling.md points at scripts that exist


def test_scaling_guide_names_existing_launchers():
    text = (REPO / "docs" / "scaling.md").read_text()
    named = set(re.findall(r"launch/[\w./-]+\.(?:sh|sbatch|yaml)", text))
    assert {"launch/tpu_vm.sh", "launch/gke/render.sh", "launch/slurm.sbatch"} <= named
    for path in named:
        assert (REPO / path).is_file(), path
