"""docker/ cannot run here (no engine); check that the compose file says what the project does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import yaml

from framewatch.cli import parser
from tests.conftest import ROOT

COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_GPU = ROOT / "docker" / "compose.gpu.yaml"
DOCKERFILE_CUDA = ROOT / "docker" / "Dockerfile.cuda"


def test_compose_has_every_part_and_valid_commands() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "minio", "postgres", "detector", "worker", "extractor"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    for name in ("detector", "worker", "extractor"):
        parser().parse_args(services[name]["command"])  # exits on an option the CLI does not have
        assert services[name]["environment"]["FRAMEWATCH_BIND_HOST"] == "0.0.0.0"
    assert "admin123" not in COMPOSE.read_text() and "${POSTGRES_PASSWORD:?" in COMPOSE.read_text()
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"worker": ["${FRAMEWATCH_PUBLISH:-127.0.0.1}::6066"],  # any host port: workers scale
                         "minio": ["${FRAMEWATCH_PUBLISH:-127.0.0.1}:9000:9000"],  # presigned image URLs
                         "grafana": ["${FRAMEWATCH_PUBLISH:-127.0.0.1}:3000:3000"]}, "on loopback by default"
    for name in ("kafka", "minio", "postgres", "detector", "worker", "extractor"):
        assert services[name]["healthcheck"]["test"], f"{name} has a healthcheck"
    assert services["worker"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "/readyz" in " ".join(services["worker"]["healthcheck"]["test"])
    assert services["kafka"]["environment"]["CLUSTER_ID"] and services["kafka"]["environment"]["KAFKA_LOG_DIRS"]
    assert "USER framewatch" in (ROOT / "docker" / "Dockerfile").read_text(), "the image runs unprivileged"
    mounted = " ".join(services["grafana"]["volumes"])
    assert "grafana/dashboards" in mounted and "grafana/provisioning" in mounted
    app = services["worker"]["environment"]
    assert app["FRAMEWATCH_API_TOKEN"].startswith("${FRAMEWATCH_API_TOKEN:?"), "the API wants a token"
    assert app["FRAMEWATCH_MINIO_ACCESS_KEY"] != services["minio"]["environment"]["MINIO_ROOT_USER"]
    policy = json.loads((ROOT / "docker" / "minio-app-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::framewatch", "arn:aws:s3:::framewatch/*"}, "the app's user sees one bucket"
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        return  # `docker compose config` needs the compose plugin; where it is present, it must accept the file
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                            text=True, env={"MINIO_ROOT_PASSWORD": "x", "POSTGRES_PASSWORD": "y", "MINIO_APP_PASSWORD": "z",
                                 "FRAMEWATCH_API_TOKEN": "t", "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr


def test_gpu_override_runs_the_detector_on_the_cuda_image() -> None:
    """compose.gpu.yaml and Dockerfile.cuda (README, "On a GPU node"): the detector alone, on a GPU, with a model."""
    base = yaml.safe_load(COMPOSE.read_text())["services"]
    override = yaml.safe_load(COMPOSE_GPU.read_text())
    assert list(override) == ["services"] and list(override["services"]) == ["detector"]
    detector = override["services"]["detector"]
    args, base_args = parser().parse_args(detector["command"]), parser().parse_args(base["detector"]["command"])
    assert (args.command, args.port, args.service_id, args.advertise_url) == (
        base_args.command, base_args.port, base_args.service_id, base_args.advertise_url), "the same service, moved"
    assert args.model == "/models/model.onnx"
    assert detector["volumes"] == ["${FRAMEWATCH_MODEL:?set FRAMEWATCH_MODEL to your .onnx file}:/models/model.onnx:ro"]
    assert detector["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cuda"}
    assert detector["image"] != base["detector"]["image"], "the CPU image's tag stays the CPU image's"
    assert detector["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    dockerfile, cpu = DOCKERFILE_CUDA.read_text(), (ROOT / "docker" / "Dockerfile").read_text()
    user = "useradd --system --uid 10001 --home-dir /app framewatch"
    for line in ("USER framewatch", 'ENTRYPOINT ["framewatch"]', user):
        assert line in dockerfile and line in cpu, f"{line}: the CPU image's conventions"
    image = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu[\d.]+$", dockerfile, re.M)
    assert image is not None and "FROM ${CUDA_IMAGE}" in dockerfile, "NVIDIA's CUDA runtime with cuDNN"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=~!; ]", requirement)[0] for requirement in extras["gpu"]}
    major = image.group(1)
    assert {"onnxruntime-gpu", f"nvidia-nvimgcodec-cu{major}", f"cupy-cuda{major}x", "PyNvVideoCodec"} <= names, \
        f"the extra's wheels are for the image's CUDA {major}"
    assert "onnxruntime" not in names, "onnxruntime and onnxruntime-gpu install the same package"
    assert re.search(r'^RUN pip install --no-cache-dir "\.\[gpu\]"$', dockerfile, re.M), "gpu, never with onnx"
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        return
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "-f", str(COMPOSE_GPU), "config", "--quiet"],
                            capture_output=True, text=True,
                            env={"MINIO_ROOT_PASSWORD": "x", "POSTGRES_PASSWORD": "y", "MINIO_APP_PASSWORD": "z",
                                 "FRAMEWATCH_API_TOKEN": "t", "FRAMEWATCH_MODEL": "/dev/null", "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr
