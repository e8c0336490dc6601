"""launch/sweep.py without GPUs or subprocesses: --gpus parsing, the --parallel guard, command construction
(--config.* pass-through), the dry run and the one-run mode used by launch/slurm_sweep.sh; the shell scripts
parse (bash -n) and name the env vars diffmem.runtime reads."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GMM = os.path.join(ROOT, "configs", "gmm_memorization.py")
APPROX = os.path.join(ROOT, "configs", "approximation.py")

_spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "launch", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

NVIDIA_SMI_L = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-2222-3333-4444-555555555555)
  MIG 1g.10gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-77777777-2222-3333-4444-555555555555)
"""


@pytest.mark.parametrize("spec,want", [
    ("0-7", [str(i) for i in range(8)]),
    ("0,2,5", ["0", "2", "5"]),
    (" 3 ", ["3"]),
    ("0-2,6", ["0", "1", "2", "6"]),
    ("01,2", ["1", "2"]),
    ("GPU-1234-ab,GPU-5678-cd", ["GPU-1234-ab", "GPU-5678-cd"]),
])
def test_parse_gpus_accepts(spec, want):
    assert sweep.parse_gpus(spec, detect=lambda: pytest.fail("not 'all'")) == want


@pytest.mark.parametrize("spec", ["0,...,7", "0-", "a,b", "7-0", "0;1", "0,1,1", "0-3,2", "all,0"])
def test_parse_gpus_rejects_with_one_line_naming_the_forms(spec):
    with pytest.raises(sweep.UsageError) as err:
        sweep.parse_gpus(spec, detect=lambda: ["0"])
    msg = str(err.value)
    assert "\n" not in msg and spec.strip() in msg
    if spec in ("0,...,7", "a,b", "0;1", "all,0"):
        assert "'0-7'" in msg and "'0,2,5'" in msg and "'all'" in msg


def test_parse_gpus_empty_is_none():
    assert sweep.parse_gpus("") is None


def test_parse_gpus_all():
    assert sweep.parse_gpus("all", detect=lambda: ["0", "1", "2"]) == ["0", "1", "2"]
    with pytest.raises(sweep.UsageError, match="no GPU visible"):
        sweep.parse_gpus("all", detect=lambda: [])


def test_visible_gpus_from_cuda_visible_devices_or_nvidia_smi():
    boom = lambda: pytest.fail("nvidia-smi must not run when CUDA_VISIBLE_DEVICES is set")  # noqa: E731
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "4,5"}, nvidia_smi=boom) == ["4", "5"]
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-abc"}, nvidia_smi=boom) == ["GPU-abc"]
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, nvidia_smi=boom) == []
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, nvidia_smi=boom) == []
    assert sweep.visible_gpus({}, nvidia_smi=lambda: NVIDIA_SMI_L) == ["0", "1", "2"]  # MIG line not counted
    assert sweep.visible_gpus({}, nvidia_smi=lambda: "") == []


def test_parallel_default_and_guard():
    gpus_here = lambda env: ["0", "1"]  # noqa: E731
    no_gpus = lambda env: []  # noqa: E731
    assert sweep.resolve_parallel(None, ["0", "1", "2"], env={}, detect=gpus_here) == 3
    assert sweep.resolve_parallel(None, None, env={}, detect=gpus_here) == 1
    assert sweep.resolve_parallel(1, None, env={}, detect=gpus_here) == 1
    assert sweep.resolve_parallel(4, None, env={}, detect=no_gpus) == 4
    assert sweep.resolve_parallel(4, None, env={"JAX_PLATFORMS": "cpu"}, detect=gpus_here) == 4
    assert sweep.resolve_parallel(2, ["0", "1"], env={}, detect=gpus_here) == 2
    with pytest.raises(sweep.UsageError, match="without --gpus on a machine with 2 GPU"):
        sweep.resolve_parallel(2, None, env={}, detect=gpus_here)
    with pytest.raises(sweep.UsageError, match=">= 1"):
        sweep.resolve_parallel(0, None, env={}, detect=no_gpus)


def test_run_env_sets_one_gpu():
    assert sweep.run_env("3", base={"CUDA_VISIBLE_DEVICES": "0,1,2,3", "A": "1"}) == {
        "CUDA_VISIBLE_DEVICES": "3", "A": "1"}
    assert sweep.run_env(None, base={"A": "1"}) == {"A": "1"}


def test_split_config_overrides():
    own, extra = sweep.split_config_overrides(
        ["--config=c.py:cpu", "--config.fit.steps=5", "--workdir", "/w", "--config.seeds", "(1, 2)", "--dry_run"])
    assert own == ["--config=c.py:cpu", "--workdir", "/w", "--dry_run"]
    assert extra == ["--config.fit.steps=5", "--config.seeds=(1, 2)"]
    with pytest.raises(sweep.UsageError, match="needs a value"):
        sweep.split_config_overrides(["--config.fit.steps"])
    with pytest.raises(sweep.UsageError, match="bad override"):
        sweep.split_config_overrides(["--config.=3"])


def test_build_commands_passes_overrides_to_every_run():
    path, arg, overrides = sweep.load_sweep(GMM + ":paper")
    cmds = sweep.build_commands(path, arg, "/w", overrides, ["--config.train.steps=10"])
    assert len(cmds) == 8
    for i, c in enumerate(cmds):
        assert c[:5] == [sys.executable, "-m", "diffmem.main", f"--config={GMM}:paper", "--workdir=/w"]
        assert c[5:] == ["--config.train.steps=10", "--config.shard.count=8", f"--config.shard.index={i}"]
    final = sweep.build_commands(path, arg, "/w", [{}], ["--config.train.steps=10"])[0]
    assert final[5:] == ["--config.train.steps=10"]
    with pytest.raises(sweep.UsageError, match="shard.index is set by the config's get_sweep"):
        sweep.build_commands(path, arg, "/w", overrides, ["--config.shard.index=0"])


def test_main_dry_run_prints_commands(capsys):
    assert sweep.main([f"--config={APPROX}:cpu", "--workdir=/w", "--config.fit.steps=7", "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cmds = [ln for ln in lines if not ln.startswith("#")]
    assert len(cmds) == 3  # one per dimension of the cpu preset, then the assembling run
    assert all("--config.fit.steps=7" in c and "--workdir=/w" in c for c in cmds)
    assert "'--config.data.dims=(2,)'" in cmds[0]  # quoted for a shell
    assert "data.dims" not in cmds[-1]


def test_main_dry_run_with_gpus(capsys):
    assert sweep.main([f"--config={GMM}:paper", "--workdir=/w", "--gpus=0-3", "--dry_run", "--no_assemble"]) == 0
    out = capsys.readouterr().out
    assert "8 runs, 4 at a time" in out and "CUDA_VISIBLE_DEVICES=<one of 0,1,2,3>" in out
    assert "assembling" not in out


def test_main_usage_errors_are_one_line(capsys):
    for argv, needle in [(["--gpus=0,...,7"], "is not accepted"),
                         (["--run_index=8"], "has 8 runs"),
                         (["--config.shard.count=3"], "set by the config's get_sweep")]:
        with pytest.raises(SystemExit) as e:
            sweep.main([f"--config={GMM}:paper", "--workdir=/w", "--dry_run", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):
        sweep.main(["--config=configs/nope.py", "--workdir=/w"])
    assert "does not exist" in capsys.readouterr().err


def test_count_run_index_and_assemble_only(capsys):
    assert sweep.main([f"--config={GMM}:smoke", "--workdir=/w", "--count"]) == 0
    assert capsys.readouterr().out.strip() == "2"
    assert sweep.main([f"--config={GMM}:smoke", "--workdir=/w", "--run_index=1", "--dry_run"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("--config.shard.count=2 --config.shard.index=1") and "\n" not in out
    assert sweep.main([f"--config={GMM}:smoke", "--workdir=/w", "--assemble_only", "--dry_run"]) == 0
    assert capsys.readouterr().out.strip().endswith("--workdir=/w")


def test_help_says_what_parallel_does_without_gpus():
    h = sweep.parser().format_help()
    assert "--gpus=all" in h and "refused" in h and "JAX_PLATFORMS=cpu" in h


@pytest.mark.parametrize("script", ["slurm.sh", "slurm_sweep.sh", "tpu_vm.sh"])
def test_shell_scripts_parse_and_use_runtime_env(script):
    path = os.path.join(ROOT, "launch", script)
    subprocess.run(["bash", "-n", path], check=True)
    text = open(path).read()
    runtime = open(os.path.join(ROOT, "diffmem", "runtime.py")).read()
    for var in set(re.findall(r"\bDIFFMEM_[A-Z_]+", text)):
        assert var in runtime, f"{script} sets {var}, which diffmem.runtime does not read"
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "warning", path], check=True)


def _script_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DIFFMEM_"))}
    env.update(PYTHON=sys.executable, **extra)
    return env


def test_slurm_sweep_submits_array_then_assembling_job(tmp_path):
    """Outside a job the script submits an array of N tasks and a dependent assembling job (sbatch faked)."""
    log = tmp_path / "sbatch.log"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/bash\necho "$@" >> {log}\necho $((100 + $(wc -l < {log})))\n')
    fake.chmod(0o755)
    env = _script_env(tmp_path, PATH=f"{fake.parent}:{os.environ['PATH']}", SBATCH_ARGS="--partition=p -t 1:00",
                      MAX_CONCURRENT="1")
    r = subprocess.run(["bash", "launch/slurm_sweep.sh", f"--config={GMM}:smoke", "--workdir=/w",
                        "--config.train.steps=3"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    array, assemble = log.read_text().splitlines()
    assert array.startswith("--parsable --partition=p -t 1:00 --array=0-1%1 launch/slurm_sweep.sh")
    assert array.endswith(f"--config={GMM}:smoke --workdir=/w --config.train.steps=3")
    assert "--dependency=afterok:101" in assemble and "--kill-on-invalid-dep=yes" in assemble
    assert "array job 101 (2 runs" in r.stdout and "assembling job 102" in r.stdout


@pytest.mark.parametrize("task,want", [("1", "--config.shard.index=1"), (None, "--workdir=/w")])
def test_slurm_sweep_task_runs_its_run(tmp_path, task, want):
    """Inside a job: array task i runs run i; a plain job the assembling run (--dry_run: printed only)."""
    env = _script_env(tmp_path, SLURM_JOB_ID="7", SLURM_SUBMIT_DIR=ROOT, DIFFMEM_DISTRIBUTED="1",
                      **({"SLURM_ARRAY_TASK_ID": task} if task else {}))
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm_sweep.sh"), f"--config={GMM}:smoke",
                        "--workdir=/w", "--dry_run"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       check=True)
    out = r.stdout.strip()
    assert "\n" not in out and "-m diffmem.main" in out and out.endswith(want)
