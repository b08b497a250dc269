"""Shared builders for tests that run the real pipeline on tiny models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# WordNet for the C-MLM tests: Debian's wordnet-base when installed, else the excerpt of its files
# that ships with the tests (tests/data/wordnet/README.md).
FULL_WORDNET = Path("/usr/share/wordnet")
WORDNET = FULL_WORDNET if (FULL_WORDNET / "data.noun").is_file() else \
    Path(__file__).resolve().parent / "data" / "wordnet"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A tiny pretrain run: small student, short sequences, every step logged.
TINY = ["seq_len=32", "batch_size=8", "student.hidden_size=24", "student.num_layers=2",
        "student.num_heads=4", "student.intermediate_size=48", "data.max_documents=200",
        "tensorboard=false", "log_every=1", "learning_rate=1e-3"]
# Small slices of the packaged Rotten Tomatoes task, short sequences.
TASK = ["seq_len=32", "tensorboard=false", "task.max_dev_examples=256", "eval_batch_size=64",
        "learning_rate=2e-4"]
TINY_TASK = [*TASK[1:4], "seq_len=32", "batch_size=8", "task.max_train_examples=96",
             "learning_rate=1e-3", "log_every=1"]


def tiny_task_args(run_dir: Path, tiny: Path, *extra: str, config: str | None = None) -> list[str]:
    head = ["finetune", "--config", config] if config else ["finetune"]
    return [*head, f"run_dir={run_dir}", f"student.init={tiny}", *TINY_TASK, *extra]


def write_tiny_teacher(path: Path, arch: str = "BertModel", layers: int = 4, hidden: int = 32,
                       heads: int = 4, seed: int = 0, nan: bool = False) -> Path:
    """A tiny random transformers model that uses the packaged MiniLM tokenizer's vocabulary."""
    import torch
    import transformers

    from jaxdistill import assets

    src = assets.teacher_dir()
    vocab = len((src / "vocab.txt").read_text().splitlines())
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=2 * hidden,
                                  max_position_embeddings=128)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(cfg)
    if nan:
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "encoder.layer.0" in n).fill_(float("nan"))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            (path / name).write_bytes((src / name).read_bytes())
    return path


def cli_env(devices: int | None = None) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["TQDM_DISABLE"] = "1"
    return env


def run_cli(*args: str, devices: int | None = None, timeout: int = 600,
            check: bool = True, bars: bool = False) -> subprocess.CompletedProcess:
    """`jaxdistill ARGS` as the console script runs it: `jaxdistill.cli.main` in this process
    with its stdout and stderr captured, or in a subprocess (`timeout` applies there) where the
    run needs a process of its own: fake devices (`devices`) or progress bars (`bars`: tqdm reads
    TQDM_DISABLE once, at import). In-process saves each call the ~4 s of importing JAX; the
    compiled steps are shared through the persistent compilation cache either way (conftest.py).
    Tests that signal, kill or watch a run from outside start their own processes."""
    if devices or bars:
        env = cli_env(devices)
        if bars:
            del env["TQDM_DISABLE"]
        proc = subprocess.run([sys.executable, "-m", "jaxdistill.cli", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=timeout)
    else:
        proc = _run_in_process(list(args))
    if check and proc.returncode != 0:
        raise AssertionError(f"jaxdistill {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def _run_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m jaxdistill.cli ARGS` without the new interpreter: the exit code is main()'s
    return, argparse's SystemExit, or 1 with the traceback on stderr, as the interpreter gives."""
    import contextlib
    import io
    import traceback

    from jaxdistill import cli

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(REPO)  # recipes are named relative to the repository, as in the subprocess
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(args)
            except SystemExit as e:  # argparse: 0 after --help, 2 for bad arguments
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:  # sys.exit("message"), as the interpreter prints it
                    print(e.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["jaxdistill", *args], code, out.getvalue(),
                                       err.getvalue())


def interrupt_at_first_checkpoint(cmd: list[str], run_dir: Path, sig: int,
                                  timeout: float = 300) -> subprocess.CompletedProcess:
    """Start `cmd` (a Python argv), send `sig` once run_dir has a checkpoint, wait for the end."""
    import time

    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts, deadline = Path(run_dir) / "checkpoints", time.time() + timeout
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def loss_columns(rows: list[dict]) -> dict[int, dict[str, float]]:
    """step -> every loss term, for bit-for-bit comparison between runs."""
    return {r["step"]: {k: v for k, v in r.items() if k == "loss" or k.startswith("loss/")}
            for r in rows}


def final_params(run_dir: Path) -> dict:
    from flax.traverse_util import flatten_dict

    from jaxdistill.loading import load_pretrained

    _, params, _ = load_pretrained(str(run_dir))
    return {k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}


def make_method(name: str, options: dict, student, teacher):
    """The method `name` on BERT models of the given configs (every teacher role gets `teacher`)."""
    from jaxdistill.methods import build_method, method_class, parse_options
    from jaxdistill.models.bert import Bert

    cls = method_class(name)
    opts = parse_options(cls, options)
    models = {"student": Bert(student), **{role: Bert(teacher) for role in cls.teacher_roles(opts)}}
    return build_method(cls, opts, models)


def loss_of(method, params, student_out, teacher_out, batch):
    """method.loss with the outputs keyed by role (no teacher output: a teacher-less method)."""
    outputs = {"student": student_out}
    if teacher_out is not None:
        outputs["teacher"] = teacher_out
    return method.loss(params, outputs, batch)


def heads(method) -> dict:
    return type(method).roles(method.options)


# --- golden tests against transformers (PyTorch, eager attention) ---------------------------


def torch_outputs(model, ids, mask, types):
    """(logits, hidden_states, attentions) of a transformers model (types None: not passed)."""
    import torch

    kw = {} if types is None else {"token_type_ids": torch.tensor(types)}
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    output_hidden_states=True, output_attentions=True, **kw)
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = getattr(out, "prediction_logits", None)  # *ForPreTraining
    return logits, out.hidden_states, out.attentions


def assert_matches_torch(ours, theirs, mask, what: str, tol: float = 1e-4) -> None:
    """Max abs diff < tol on logits, every hidden state and every attention map (`ours`: the
    outputs of `jaxdistill.hf.load(...)(...)`, `theirs`: `torch_outputs`)."""
    t_logits, t_hidden, t_attn = theirs
    if t_logits is None:
        assert ours.logits is None, what
    else:
        np.testing.assert_allclose(np.asarray(ours.logits), t_logits.numpy(), atol=tol, rtol=0,
                                   err_msg=f"{what}: logits")
    assert len(ours.hidden_states) == len(t_hidden)
    for i, (a, b) in enumerate(zip(ours.hidden_states, t_hidden)):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=tol, rtol=0,
                                   err_msg=f"{what}: hidden state {i}")
    assert len(ours.attentions) == len(t_attn)
    rows = mask.astype(bool)[:, None, :, None]  # compare at non-padded query rows
    for i, (a, b) in enumerate(zip(ours.attentions, t_attn)):
        assert a.shape == tuple(b.shape)
        diff = np.where(rows, np.abs(np.asarray(a) - b.numpy()), 0.0)
        assert diff.max() < tol, f"{what}: attention {i} differs by {diff.max()}"


MESH_SCRIPT = r"""
import json, sys
from jaxdistill.train import kinds
runs, root = json.loads(sys.argv[1]), sys.argv[2]
out = {}
for i, (name, config, args, (d, f, t)) in enumerate(runs):
    kind, cfg = kinds.load("pretrain", config or None, args + [
        f"run_dir={root}/m{i}", f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}"])
    kind.run(cfg)
    rows = [json.loads(l) for l in open(f"{root}/m{i}/metrics.jsonl")]
    out[name] = [{k: v for k, v in r.items() if k == "loss" or k.startswith("loss/")}
                 for r in rows]
print("RESULT" + json.dumps(out))
"""


def mesh_losses(tmp_path: Path, devices: int, runs: list[tuple[str, str, list[str], list[int]]]
                ) -> dict:
    """Every loss term of each step of `pretrain` runs, in one process with `devices` fake CPU
    devices: runs are (name, recipe or "" for the demo's, overrides, [data, fsdp, tensor]);
    returns {name: [row per step]}."""
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, json.dumps(runs),
                           str(tmp_path / f"d{devices}")], cwd=REPO, env=cli_env(devices),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])
