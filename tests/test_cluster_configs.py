"""cluster/: the configs parse, fit their schemas, agree with each other, and every jobs.stylize
command in them (and in cluster/README.md) is one that jobs.stylize's own parser accepts."""
from __future__ import annotations

import json
import re
import shlex
import tempfile
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.runtime_env import RuntimeEnv

from jobs.stylize.driver import build_parser

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def job_options(command: str):
    """jobs.stylize's parsed options for a shell command that runs `python -m jobs.stylize ...`."""
    words = shlex.split(command)
    starts = [i for i in range(len(words) - 1) if words[i:i + 2] == ["-m", "jobs.stylize"]]
    assert len(starts) == 1, f"no single `-m jobs.stylize` in {command!r}"
    try:
        return build_parser().parse_args(words[starts[0] + 2:])
    except SystemExit:
        pytest.fail(f"jobs.stylize does not accept: {command}")


def test_runtime_env_is_valid_and_uploads_only_the_code():
    env = load("runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert env["working_dir"] == "."
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    # Pack the checkout as `ray job submit` would, trusting the excludes alone (no .gitignore).
    from ray._private.runtime_env.packaging import create_package
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "package.zip"
        create_package(str(REPO), package, include_gitignore=False, excludes=env["excludes"])
        names = zipfile.ZipFile(package).namelist()
        assert "jobs/stylize/__main__.py" in names and "cdcore/transfer/stylize.py" in names
        assert not [n for n in names if n.startswith((".venv/", ".git/"))]
        assert package.stat().st_size < 20 * 2**20


def test_cluster_launcher_config():
    config = load("aws-gpu.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    gpu_workers = [n for n in nodes.values() if n["resources"].get("GPU", 0) >= 1]
    assert gpu_workers and all(n["min_workers"] == 0 < n["max_workers"] for n in gpu_workers)
    assert config["docker"]["image"] == RAY_IMAGE
    # The checkout is mounted and installed on every node; the token is there too.
    mounts = config["file_mounts"]
    checkout = next(remote for remote, local in mounts.items() if local == ".")
    assert any("pip install" in c and checkout in c for c in config["setup_commands"])
    assert mounts["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert ".venv" in config["rsync_exclude"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in config[key]), key


def test_rayjob_runs_jobs_stylize_on_gpu_workers_with_token_auth():
    job = load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    options = job_options(job["spec"]["entrypoint"])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token" and cluster["enableInTreeAutoscaling"]
    [group] = cluster["workerGroupSpecs"]
    [worker] = group["template"]["spec"]["containers"]
    limits = worker["resources"]["limits"]
    gpus, cpus = int(limits["nvidia.com/gpu"]), float(limits["cpu"])
    assert options.num_gpus_per_actor == gpus and options.cpus_per_actor <= cpus  # one actor per pod
    assert 0 < options.io_threads <= options.cpus_per_actor  # its I/O threads have CPUs reserved
    assert group["minReplicas"] == 0 and options.actors <= group["maxReplicas"]
    [head] = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["image"] == worker["image"]
    # The shared runtime env, less working_dir (the code is in the image).
    shared = load("runtime_env.yaml")
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"env_vars": shared["env_vars"]}


def test_dockerfile_builds_on_the_tested_ray_and_installs_the_project():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM {RAY_IMAGE}" in text and "pip install" in text
    assert all(f"COPY --chown=ray:users {d} {d}" in text for d in ("cdcore", "jobs"))


def readme_commands() -> list[str]:
    """The shell commands in cluster/README.md's code blocks, continuation lines joined."""
    text = (CLUSTER / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].strip()
            if command:
                commands.append(command)
    return commands


def test_readme_commands_use_real_options_and_files():
    commands = readme_commands()
    submits = [c for c in commands if "ray job submit" in c]
    assert len(submits) >= 2 and all("jobs.stylize" in c for c in submits)
    for command in submits:
        job_options(command)
        assert "--runtime-env cluster/runtime_env.yaml" in command and "RAY_AUTH_MODE=token" in command
    for path in set(re.findall(r"cluster/[\w.-]+", " ".join(commands))):
        assert (REPO / path).is_file(), path
