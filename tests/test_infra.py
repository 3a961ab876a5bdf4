"""The deployment files are checked with the tools that will read them, as far as this machine can:

- ray_cluster.yaml: Ray's own cluster-launcher preparation and schema validation (the pinned Ray);
- the KubeRay manifests: they parse, their GPU groups have nvidia.com/gpu limits, token auth is on,
  nothing is exposed, and their entrypoints are valid command lines of the pipelines they run;
- infra/serve_config.yaml and the RayService's serveConfigV2: the same config, valid for Ray Serve's
  schema classes, whose import path builds a real Serve application;
- the container images install the project with the README's own command and the pinned versions.

No image is built and no cloud is reached here.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
import ray
import yaml

from conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
KUBERAY = INFRA / "kuberay"
IMAGE_ROOT = "/opt/srgan-ray"  # where infra/Dockerfile installs the project
# AWS instance types with 8 A100/H100-class GPUs, and with one GPU.
EIGHT_GPU_TYPES = {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge"}
ONE_GPU_TYPES = {f"{family}.{size}" for family in ("g5", "g6", "g6e") for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")}


def _readme_install_command() -> str:
    """The install part of the README's main command (what comes before running the demo)."""
    readme = (REPO_ROOT / "README.md").read_text()
    main = re.search(r"```bash\n(.*?)\n```", readme.split("<!-- main-command -->", 1)[1], re.S).group(1).strip()
    install, _, run = main.rpartition(" && ")
    assert run.startswith(".venv/bin/python pipelines/") and "pip install -e ." in install, main
    return install


def _yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pin(name: str, *, extra: str | None = None) -> str:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    for dep in deps:
        if re.split(r"[\[=<>;\s]", dep)[0].lower() == name:
            return dep.split("==", 1)[1].split(";")[0].strip()
    pytest.fail(f"{name} is not pinned in pyproject.toml")


# ------------------------------------------------------------------------------- ray_cluster.yaml


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared_cluster_config(cluster_config) -> dict:
    """What `ray up` checks before it contacts AWS: defaults merged, then Ray's schema and checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_config))
    validate_config(prepared)
    return prepared


def test_cluster_config_passes_rays_own_validation(prepared_cluster_config):
    assert prepared_cluster_config["provider"]["type"] == "aws"
    assert prepared_cluster_config["head_node_type"] in prepared_cluster_config["available_node_types"]


@pytest.mark.parametrize(
    "mutate,error",
    [
        (lambda c: c["available_node_types"]["gpu_train"].update(min_worker=1), "min_worker"),
        (lambda c: c.update(idle_timeout_minute=5), "idle_timeout_minute"),
        (lambda c: c["docker"].update(run_option=[]), "run_option"),
        (lambda c: c.update(max_workers=0), "max_workers"),
    ],
)
def test_the_validation_catches_mistakes(cluster_config, mutate, error):
    """The check above has teeth: a misspelt key or an impossible worker count fails it."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cluster_config)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=error):
        validate_config(prepare_config(broken))


def test_cluster_has_a_cpu_head_and_gpu_worker_types(prepared_cluster_config):
    types = prepared_cluster_config["available_node_types"]
    head = types[prepared_cluster_config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))  # a CPU instance family
    roles = {t.get("labels", {}).get("srgan-role"): t for name, t in types.items() if name != prepared_cluster_config["head_node_type"]}
    assert roles["train"]["node_config"]["InstanceType"] in EIGHT_GPU_TYPES
    assert roles["serve"]["node_config"]["InstanceType"] in ONE_GPU_TYPES
    assert roles["bulk"]["node_config"]["InstanceType"] in ONE_GPU_TYPES
    assert roles["bulk"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in roles["train"]["node_config"] and "InstanceMarketOptions" not in roles["serve"]["node_config"]
    for t in roles.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert roles["serve"]["min_workers"] >= 1  # the endpoint never scales to zero
    assert sum(t["max_workers"] for t in roles.values()) <= prepared_cluster_config["max_workers"]
    assert prepared_cluster_config["idle_timeout_minutes"] > 0


def test_cluster_uses_instance_profiles_and_holds_no_keys(cluster_config):
    for name, node_type in cluster_config["available_node_types"].items():
        assert node_type["node_config"]["IamInstanceProfile"]["Name"], name
        assert node_type["node_config"]["MetadataOptions"]["HttpTokens"] == "required", name  # IMDSv2 only
    text = (REPO_ROOT / "ray_cluster.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}", text)
    assert not re.search(r"(?i)aws_(secret_access_key|access_key_id|session_token)", text)


def test_cluster_keeps_the_dashboard_private_and_token_auth_on(prepared_cluster_config, cluster_config):
    head_start = " ".join(prepared_cluster_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    everything = yaml.safe_dump(prepared_cluster_config)
    assert "0.0.0.0" not in everything  # Ray's AWS defaults would open the dashboard on every interface
    # The only inbound rule is SSH (`ray dashboard` tunnels over it), and not from the whole internet.
    rules = cluster_config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    assert "--env RAY_AUTH_MODE=token" in cluster_config["docker"]["run_options"]
    assert cluster_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_setup_is_the_readme_install_in_the_image(cluster_config):
    assert cluster_config["setup_commands"] == [f"cd {IMAGE_ROOT} && {_readme_install_command()}"]


def _header_commands(path: Path) -> str:
    """The leading comment block of a file, with its continuation lines joined."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines).replace("\\\n", " ")


def test_cluster_header_gives_the_lifecycle_with_valid_pipeline_commands(repo_root):
    header = _header_commands(repo_root / "ray_cluster.yaml")
    for step in ("ray up ray_cluster.yaml", "ray dashboard ray_cluster.yaml", "ray job submit", "serve deploy infra/serve_config.yaml", "ray down ray_cluster.yaml"):
        assert step in header, step
    submitted = [line.split(" -- ", 1)[1] for line in header.splitlines() if line.startswith("ray job submit")]
    assert {shlex.split(cmd)[1] for cmd in submitted} == {"pipelines/train.py", "pipelines/upscale.py"}
    for cmd in submitted:
        _check_pipeline_command(shlex.split(cmd)[1:], root=repo_root)


def test_operations_guide_commands_are_valid_pipeline_commands(repo_root):
    """Every ``python pipelines/...`` command in docs/cluster.md parses with that pipeline's own CLI."""
    text = (repo_root / "docs" / "cluster.md").read_text().replace("\\\n", " ")
    commands = re.findall(r"python (pipelines/\w+\.py [^`\n]*)", text)
    assert {shlex.split(c)[0] for c in commands} >= {"pipelines/train.py", "pipelines/upscale.py", "pipelines/evaluate.py"}
    for cmd in commands:
        _check_pipeline_command(shlex.split(cmd), root=repo_root)


# ------------------------------------------------------------------------- the pipelines' own CLIs


def _load_pipeline(path: Path):
    spec = importlib.util.spec_from_file_location(f"_pipeline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_pipeline_command(argv: list[str], *, root: Path) -> None:
    """``argv`` (script and flags, as a job runs them) parses with the script's own argparse, and a
    training command also builds a valid config (the checks train.py makes before Ray starts)."""
    script = Path(argv[0])
    local = root / script.relative_to(IMAGE_ROOT) if script.is_absolute() else root / script
    assert local.is_file(), f"{argv[0]} does not exist in the repository"
    flags = [a.replace(f"{IMAGE_ROOT}/", f"{root}/") for a in argv[1:]]
    args = _load_pipeline(local).parse_args(flags)
    if local.name == "train.py":
        from srgan.config import FLAG_FIELDS, build_config

        config_path = root / args.config if args.config and not Path(args.config).is_absolute() else args.config
        config = build_config(config_path, {k: getattr(args, k) for k in FLAG_FIELDS}, args.set)
        assert config.run.gpu and config.run.workers == 8 and config.data.train.startswith("s3://") and config.run.storage.startswith("s3://")
    if local.name == "upscale.py":
        assert args.gpu and args.input.startswith("s3://") and args.output.startswith("s3://") and args.model.startswith("models:/")


# --------------------------------------------------------------------------------------- KubeRay


@pytest.fixture(scope="module")
def kuberay() -> dict[str, dict]:
    """{metadata.name: manifest} for every ray.io resource under infra/kuberay/."""
    found = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in _yaml_docs(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            if doc["apiVersion"] == "ray.io/v1":
                found[doc["metadata"]["name"]] = doc
    return found


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def _pods(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, group["template"]["spec"]) for name, group in groups]


def test_kuberay_has_a_training_job_a_bulk_job_and_a_service(kuberay):
    kinds = sorted((doc["kind"], name) for name, doc in kuberay.items())
    assert kinds == [("RayJob", "srgan-train"), ("RayJob", "srgan-upscale"), ("RayService", "srgan-serve")]


def test_kuberay_clusters_have_gpu_groups_token_auth_and_nothing_public(kuberay):
    for name, doc in kuberay.items():
        spec = _cluster_spec(doc)
        assert spec["rayVersion"] == ray.__version__, name
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name
        assert "dashboard-host" not in spec["headGroupSpec"]["rayStartParams"], name
        assert spec["workerGroupSpecs"], name
        for group in spec["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                limits = container["resources"]["limits"]
                assert int(limits["nvidia.com/gpu"]) >= 1, (name, group["groupName"])
                assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        for group, pod in _pods(spec):
            assert pod["serviceAccountName"] == "srgan-ray", (name, group)  # S3 through the pod's IAM role
            for container in pod["containers"]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert not any(k.startswith("AWS_") and k != "AWS_REGION" for k in env), (name, group)
                assert env["MLFLOW_TRACKING_URI"].startswith("http://"), (name, group)
    for path in INFRA.rglob("*.yaml"):
        for doc in _yaml_docs(path):
            assert doc.get("kind") != "Ingress", path
            if doc.get("kind") == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path


def test_kuberay_groups_fit_their_work(kuberay):
    train = {g["groupName"]: g for g in _cluster_spec(kuberay["srgan-train"])["workerGroupSpecs"]}["gpu-train"]
    assert int(train["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 8
    bulk_spec = _cluster_spec(kuberay["srgan-upscale"])
    assert bulk_spec["enableInTreeAutoscaling"] and bulk_spec["workerGroupSpecs"][0]["minReplicas"] == 0
    assert bulk_spec["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"
    serve_group = _cluster_spec(kuberay["srgan-serve"])["workerGroupSpecs"][0]
    assert serve_group["minReplicas"] >= 1


@pytest.mark.parametrize("job", ["srgan-train", "srgan-upscale"])
def test_rayjob_entrypoints_are_valid_pipeline_commands(kuberay, job, repo_root):
    doc = kuberay[job]
    assert doc["spec"]["shutdownAfterJobFinishes"] is True and doc["spec"]["backoffLimit"] >= 1
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python"
    _check_pipeline_command(argv[1:], root=repo_root)


# ----------------------------------------------------------------------------------- Serve config


@pytest.fixture(scope="module")
def serve_configs(kuberay) -> tuple[dict, dict]:
    path = INFRA / "serve_config.yaml"
    assert path.is_file(), "infra/serve_config.yaml is missing"
    return yaml.safe_load(path.read_text()), yaml.safe_load(kuberay["srgan-serve"]["spec"]["serveConfigV2"])


def test_rayservice_serves_exactly_infra_serve_config(serve_configs):
    file_config, rayservice_config = serve_configs
    assert rayservice_config == file_config


def test_serve_configs_validate_and_build_real_applications(serve_configs):
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    for config in serve_configs:
        schema = ServeDeploySchema.model_validate(config)  # Ray Serve's own schema for `serve deploy` / KubeRay
        assert schema.applications
        for app in schema.applications:
            assert app.import_path.startswith("srgan."), app.import_path
            # What the Serve controller does with it: import, call the builder with the args, build.
            application = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
            built = build_app(application, name=app.name)
            names = {d.name for d in built.deployments}
            assert {d.name for d in app.deployments} <= names, (app.deployments, names)


# ------------------------------------------------------------------------------------ the images


def _dockerfile_runs(path: Path) -> list[str]:
    """The RUN instructions of a Dockerfile, continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    return [" ".join(line.split()[1:]) for line in text.splitlines() if line.startswith("RUN ")]


def _cuda_of_pinned_torch() -> str:
    """major.minor of the CUDA toolkit the installed torch wheel requires (its cu build)."""
    for req in requires("torch") or []:
        match = re.match(r"cuda-toolkit\S*==(\d+\.\d+)", req)
        if match:
            return match.group(1)
    pytest.fail("the installed torch declares no cuda-toolkit requirement")


def test_container_installs_the_project_with_the_readme_command():
    dockerfile = INFRA / "Dockerfile"
    install = _readme_install_command()
    runs = _dockerfile_runs(dockerfile)
    assert sum(install in run for run in runs) == 2, runs  # dependencies layer, then the project
    assert re.search(rf"^WORKDIR {IMAGE_ROOT}$", dockerfile.read_text(), re.M)
    # No other way in: nothing else is pip-installed.
    assert all(run.count("pip install") == run.count(".venv/bin/pip install -e .") for run in runs), runs
    assert "python3.11" in " ".join(runs)  # the README's Python


def test_container_base_matches_the_pinned_torch_cuda():
    base = re.search(r"^FROM (\S+)", (INFRA / "Dockerfile").read_text(), re.M).group(1)
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu22\.04", base)
    assert match, base
    assert match.group(1) == _cuda_of_pinned_torch(), (base, _cuda_of_pinned_torch())


def test_mlflow_image_pins_agree_with_pyproject():
    runs = " ".join(_dockerfile_runs(INFRA / "mlflow" / "Dockerfile"))
    assert f"mlflow=={_pin('mlflow')}" in runs and f"boto3=={_pin('boto3')}" in runs
    assert f'"psycopg[binary]=={_pin("psycopg", extra="dev")}"' in runs


def test_mlflow_manifest_runs_the_script_with_credentials_from_the_environment():
    docs = {doc["kind"]: doc for doc in _yaml_docs(INFRA / "mlflow" / "mlflow-server.yaml")}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://mlflow@")  # user, no password
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert not any(k.startswith("AWS_") and k != "AWS_REGION" for k in env)
    assert docs["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert "ENTRYPOINT [\"/usr/local/bin/mlflow-server.sh\"]" in (INFRA / "mlflow" / "Dockerfile").read_text()
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_infra_readme_maps_every_file():
    readme = (INFRA / "README.md").read_text()
    for path in sorted(INFRA.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(INFRA)) in readme, path
