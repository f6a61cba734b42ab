"""The deployment files, checked offline: compose by docker compose itself, the Kubernetes
manifests against Kubernetes' JSON schemas (kubernetes-validate) and KEDA's fields, the
Dockerfile by hadolint, the Grafana dashboard against the series /metrics exports, and every
DARKROOM_* name they set against the settings darkroom reads. No docker engine or cluster is
needed (nor exists on the test machines): nothing here builds an image or applies a manifest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import text

from darkroom.db.database import Database
from darkroom.settings import Settings

from .keda_schema import KEDA_SCHEMAS

# Starts processes (`make unit` leaves it out).
pytestmark = pytest.mark.process

DEPLOY = Path(__file__).parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.32.0"
SETTINGS = {f"DARKROOM_{name.upper()}" for name in Settings.model_fields}


def compose_command() -> list[str]:
    """docker compose (the plugin), or the standalone docker-compose; .ci/run installs one."""
    if shutil.which("docker"):
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if plugin.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose`: apt-get install docker-compose")


def compose_config(*extra: str) -> dict[str, Any]:
    files = [arg for name in ("compose.yaml", *extra) for arg in ("-f", str(DEPLOY / name))]
    done = subprocess.run(
        [*compose_command(), *files, "--env-file", str(DEPLOY / "env.example"), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only), whichever syntax the compose tool prints."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # docker-compose 1.x: "source:target[:mode]"
            source, target, *mode = volume.split(":")
            found[target] = (source, mode == ["ro"])
        else:
            found[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return found


def test_compose_is_valid_and_has_the_fleets_topology() -> None:
    services = compose_config()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    api, worker, migrate = services["api"], services["worker"], services["migrate"]
    assert api["deploy"]["replicas"] == 2
    for role in (api, worker):
        assert role["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        # Results are files on one volume the API replicas and the worker share.
        assert mounts(role)["/var/lib/darkroom"][0].endswith("data")
    assert migrate["command"] == ["darkroom", "migrate"]
    [gpu] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert mounts(worker)["/models/hf"][1]  # read-only: uid 10001 need not own the cache
    assert worker["environment"]["HF_HUB_OFFLINE"] == "1"
    assert worker.get("ports") is None  # only the API is published
    for name, service in services.items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)
    for role in (api, worker, migrate):
        env = role["environment"]
        assert env["DARKROOM_DATABASE_URL"].startswith("postgresql://darkroom:")
        assert "DARKROOM_STORAGE_URL" not in env
        unknown = {k for k in env if k.startswith("DARKROOM_")} - SETTINGS
        assert not unknown, f"not darkroom settings: {unknown}"


def test_compose_with_s3_puts_results_in_the_bucket() -> None:
    services = compose_config("compose.s3.yaml")["services"]
    for role in ("api", "worker", "migrate"):
        env = services[role]["environment"]
        assert env["DARKROOM_STORAGE_URL"].startswith("s3://")
        assert env["AWS_SECRET_ACCESS_KEY"]
        assert not {k for k in env if k.startswith("DARKROOM_")} - SETTINGS
        # What darkroom reads of it is valid (the example's placeholder secret aside).
        placeholders = {"DARKROOM_ENVIRONMENT", "DARKROOM_SIGNING_SECRET"}
        Settings(**{k[len("DARKROOM_"):].lower(): v for k, v in env.items()
                    if k.startswith("DARKROOM_") and v and k not in placeholders})  # fmt: skip


def test_compose_with_sglang_forwards_to_it() -> None:
    """compose.sglang.yaml: SGLang on the host's 2 GPUs, a forwarding worker (the API image, no
    GPU) pointed at it, the built-in GPU worker left off."""
    services = compose_config("compose.sglang.yaml")["services"]
    assert services["worker"]["profiles"] == ["builtin-engine"]  # never enabled: not started
    sglang, forwarder = services["sglang"], services["forwarder"]
    [gpus] = sglang["deploy"]["resources"]["reservations"]["devices"]
    args = sglang["command"]
    assert gpus["count"] == 2 and args[args.index("--num-gpus") + 1] == "2"
    assert "--tp-size" in args and not sglang["image"].endswith(":latest")
    assert "deploy" not in forwarder and forwarder["image"].split(":")[0].endswith("darkroom-api")
    env = forwarder["environment"]
    assert not {k for k in env if k.startswith("DARKROOM_")} - SETTINGS
    remote = Settings(models=json.loads(env["DARKROOM_MODELS"])).models["krea-2-turbo"].remote
    assert remote is not None and remote.flavor == "sglang"
    assert remote.url == "http://sglang:30000/v1"
    assert mounts(forwarder)["/var/lib/darkroom"][0].endswith("data")  # results, shared


def test_compose_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = subprocess.run(
        [*compose_command(), "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(empty),
         "config"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "set it in deploy/.env" in done.stderr


def kubernetes_documents(folder: Path = KUBERNETES) -> list[dict[str, Any]]:
    """The manifests as kustomize renders them (kubectl's built-in kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        rendered = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
        ).stdout
        return [d for d in yaml.safe_load_all(rendered) if d]
    # Without kubectl: the files the kustomization lists, as written.
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    return [d for name in listed for d in yaml.safe_load_all((folder / name).read_text()) if d]


def test_every_kubernetes_manifest_validates() -> None:
    documents = kubernetes_documents()
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted([
        "ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler", "Job", "Namespace",
        "PodDisruptionBudget", "ScaledObject", "Service", "TriggerAuthentication",
    ])  # fmt: skip
    for document in documents:
        if document["kind"] in KEDA_SCHEMAS:
            jsonschema.validate(document, KEDA_SCHEMAS[document["kind"]])
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_checks_can_fail() -> None:
    """A misspelt field is caught, in Kubernetes' kinds and in KEDA's."""
    [api] = [d for d in kubernetes_documents() if d["kind"] == "Deployment"][:1]
    api["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    api["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)
    [scaled] = [d for d in kubernetes_documents() if d["kind"] == "ScaledObject"]
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMAS["ScaledObject"])
    [scaled] = [d for d in kubernetes_documents() if d["kind"] == "ScaledObject"]
    scaled["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 4  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMAS["ScaledObject"])


def test_the_sglang_topology_validates_and_forwards_to_sglang() -> None:
    """deploy/kubernetes-sglang: the base with its worker made a forwarding worker (no GPU, the
    API image, the registry entry pointing at the SGLang Service) and SGLang over 2 GPUs."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl renders the overlay: install kubectl (its kustomize is built in)")
    documents = kubernetes_documents(DEPLOY / "kubernetes-sglang")
    for document in documents:
        assert document["kind"] not in KEDA_SCHEMAS  # a fixed engine: nothing scales on the queue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    by = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    assert all(
        d["metadata"].get("namespace") == "darkroom" for d in documents if d["kind"] != "Namespace"
    )
    worker = by[("Deployment", "darkroom-worker")]["spec"]["template"]["spec"]
    [container] = worker["containers"]
    assert "nvidia.com/gpu" not in str(container["resources"]) and not worker.get("tolerations")
    assert container["image"].split(":")[0].endswith("darkroom-api")  # no torch, no CUDA
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    models = Settings(
        models=json.loads(env["DARKROOM_MODELS"]), database_url="sqlite+aiosqlite:///x.db"
    ).models
    remote = models["krea-2-turbo"].remote
    assert remote is not None and remote.flavor == "sglang"
    service = by[("Service", "sglang")]["spec"]["ports"][0]["port"]
    assert remote.url == f"http://sglang:{service}/v1"
    sglang = by[("Deployment", "sglang")]["spec"]["template"]["spec"]["containers"][0]
    gpus = sglang["resources"]["limits"]["nvidia.com/gpu"]
    args = sglang["args"]
    assert args[args.index("--num-gpus") + 1] == str(gpus) == "2"
    assert "--tp-size" in args and ":latest" not in sglang["image"]


def test_the_vllm_omni_topology_pairs_a_replica_with_its_forwarder_per_gpu() -> None:
    """deploy/kubernetes-vllm-omni: each worker pod is one GPU's vLLM-Omni and a forwarding
    darkroom worker sending it tasks over localhost; KEDA scales the pairs on the queue."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl renders the overlay: install kubectl (its kustomize is built in)")
    documents = kubernetes_documents(DEPLOY / "kubernetes-vllm-omni")
    for document in documents:
        if document["kind"] in KEDA_SCHEMAS:
            jsonschema.validate(document, KEDA_SCHEMAS[document["kind"]])
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    by = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    assert by[("ScaledObject", "darkroom-worker")]["spec"]["scaleTargetRef"]["name"] == (
        "darkroom-worker"
    )
    pod = by[("Deployment", "darkroom-worker")]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    worker, engine = containers["worker"], containers["vllm-omni"]
    assert "nvidia.com/gpu" not in str(worker["resources"])
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1  # no TP/SP for Krea 2 there
    env = {e["name"]: e["value"] for e in worker["env"] if "value" in e}
    remote = Settings(models=json.loads(env["DARKROOM_MODELS"])).models["krea-2-turbo"].remote
    assert remote is not None and remote.flavor == "vllm-omni"
    port = engine["args"][engine["args"].index("--port") + 1]
    assert remote.url == f"http://127.0.0.1:{port}/v1"


def pod_specs(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in documents
        if d["kind"] in ("Deployment", "Job")
    }


@pytest.mark.parametrize("folder", ["kubernetes", "kubernetes-sglang", "kubernetes-vllm-omni"])
def test_releases_roll_and_reapply_safely(folder: str) -> None:
    """What re-applying a release, or rolling one onto a full GPU pool, needs of the files."""
    documents = kubernetes_documents(DEPLOY / folder)
    scaled = {
        d["spec"]["scaleTargetRef"]["name"]
        for d in documents
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    }
    for document in documents:
        if document["kind"] == "Deployment" and document["metadata"]["name"] in scaled:
            # An apply would reset what the autoscaler chose.
            assert "replicas" not in document["spec"], document["metadata"]["name"]
    for name, pod in pod_specs(documents).items():
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"]:
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                # `darkroom healthcheck` takes about a second: the 1 s default kills it.
                least = 5 if "exec" in probe else 2
                assert probe.get("timeoutSeconds", 1) >= least, (name, kind)
        if any("nvidia.com/gpu" in str(c["resources"]) for c in pod["containers"]):
            [gpu_deployment] = [
                d for d in documents
                if d["kind"] == "Deployment" and d["metadata"]["name"] == name
            ]  # fmt: skip
            strategy = gpu_deployment["spec"]["strategy"]
            # No surge pod on a full GPU pool: the old pod goes first (or Recreate).
            assert strategy["type"] == "Recreate" or strategy["rollingUpdate"]["maxSurge"] == 0
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    [api_image] = [i for i in kustomization["images"] if i["name"] == "darkroom-api"]
    [job] = [d for d in documents if d["kind"] == "Job"]
    # A Job's template cannot change: each release's migration is a Job of its own name.
    assert job["metadata"]["name"] == f"darkroom-migrate-{api_image['newTag']}"


def test_the_model_cache_is_filled_by_one_job_and_read_only_for_workers() -> None:
    """deploy/kubernetes-model-cache: the claim the workers mount read-only, and the Job that
    fills it with the model they serve, as their user, from the same release's image."""
    documents = kubernetes_documents(DEPLOY / "kubernetes-model-cache")
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    [claim] = [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # one writer, readers on every node
    [job] = [d for d in documents if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    [volume] = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    [fill] = pod["containers"]
    [mount] = fill["volumeMounts"]
    assert not mount.get("readOnly")
    assert fill["command"] == ["hf", "download", Settings.model_fields["model_path"].default]
    assert {e["name"]: e.get("value") for e in fill["env"]}["HF_HOME"] == mount["mountPath"]
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"

    [worker] = [
        d for d in kubernetes_documents()
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "darkroom-worker"
    ]  # fmt: skip
    worker_pod = worker["spec"]["template"]["spec"]
    [cache] = [v for v in worker_pod["volumes"] if "persistentVolumeClaim" in v]
    assert cache["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"],
        "readOnly": True,
    }
    [worker_container] = worker_pod["containers"]
    assert fill["image"] == worker_container["image"]  # the same release's huggingface_hub


def test_kubernetes_wiring() -> None:
    documents = kubernetes_documents()
    by = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    worker = by[("Deployment", "darkroom-worker")]["spec"]["template"]["spec"]
    [container] = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["terminationGracePeriodSeconds"] >= 120
    scaled = by[("ScaledObject", "darkroom-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "darkroom-worker"
    auth = scaled["triggers"][0]["authenticationRef"]["name"]
    assert ("TriggerAuthentication", auth) in by
    api = by[("Deployment", "darkroom-api")]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Secrets are referenced, never inlined; every DARKROOM_* set is a real setting.
    assert not [d for d in documents if d["kind"] == "Secret"]
    config = by[("ConfigMap", "darkroom-config")]["data"]
    assert not set(config) - SETTINGS, set(config) - SETTINGS
    assert not {"DARKROOM_DATABASE_URL", "DARKROOM_SIGNING_SECRET"} & set(config)
    for pod in (worker, by[("Deployment", "darkroom-api")]["spec"]["template"]["spec"]):
        refs = [s.get("secretRef", {}).get("name") for s in pod["containers"][0]["envFrom"]]
        assert "darkroom" in refs
        names = {e["name"] for e in pod["containers"][0].get("env", [])}
        assert not {n for n in names if n.startswith("DARKROOM_")} - SETTINGS


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_kedas_query_counts_the_queue_on_darkrooms_schema(db: Database) -> None:
    """The scaler's SQL runs against the real schema on PostgreSQL (what KEDA's scaler speaks)
    and counts unfinished tasks of the model."""
    from tests.helpers import add_task, make_account

    [scaled] = [d for d in kubernetes_documents() if d["kind"] == "ScaledObject"]
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    ids = await make_account(db)
    for _ in range(3):
        await add_task(db, ids)
    await add_task(db, ids, model="other-model")
    async with db.transaction() as conn:
        count = (await conn.execute(text(query))).scalar_one()
    assert count == 3


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    # Both images run as a numeric non-root user, with a healthcheck, and no weights inside.
    assert dockerfile.count("USER 10001:10001") == 2
    assert dockerfile.count("HEALTHCHECK") == 2
    assert "safetensors" not in dockerfile and "snapshot_download" not in dockerfile


# What dcgm-exporter exports by default (its default-counters.csv) that the dashboard graphs.
DCGM_SERIES = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}


def series_of(exposition: str) -> set[str]:
    """The series names a Prometheus text exposition declares (a histogram's three)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\w+) (\w+)", exposition, flags=re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{part}" for part in ("bucket", "sum", "count"))
    return names


async def test_the_dashboard_graphs_series_the_api_and_workers_export(
    client: httpx.AsyncClient,
) -> None:
    from prometheus_client import generate_latest

    from darkroom.metrics import WorkerMetrics

    dashboard = json.loads((DEPLOY / "grafana" / "darkroom.json").read_text())
    api = series_of((await client.get("/metrics")).text)
    worker = series_of(generate_latest(WorkerMetrics().registry).decode())
    assert "darkroom_http_request_duration_seconds_bucket" in api
    assert "darkroom_task_phase_seconds_bucket" in worker
    exported = api | worker | {"darkroom_gpu_memory_bytes"}  # a worker's, where CUDA is
    panels = dashboard["panels"]
    graphed = set()
    for panel in panels:
        for target in panel["targets"]:
            used = set(re.findall(r"\b(?:darkroom|DCGM)_\w+", target["expr"]))
            assert used and used <= exported | DCGM_SERIES, (panel["title"], used - exported)
            graphed |= used
    # Every figure darkroom exports is on the dashboard.
    assert {n.removesuffix("_bucket") for n in graphed} >= {
        "darkroom_tasks", "darkroom_http_request_duration_seconds", "darkroom_task_phase_seconds",
        "darkroom_task_attempts_total", "darkroom_callback_attempts_total",
        "darkroom_gpu_memory_bytes", *DCGM_SERIES,
    }  # fmt: skip


# What the images get besides darkroom's extras: torch and its CUDA libraries, from PyTorch's
# index (and setuptools, which torch's metadata names).
NOT_CONSTRAINED = ("torch", "triton", "setuptools", "nvidia-")


def _closure(extras: set[str]) -> set[str]:
    """darkroom[extras] and everything it requires, as this environment's metadata says."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, set[str]] = {}
    stack = [("darkroom", extras)]
    while stack:
        name, wanted = stack.pop()
        key = canonicalize_name(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | wanted
        for line in md.distribution(name).requires or []:
            req = Requirement(line)
            markers = [{"extra": e} for e in (wanted or {""})]
            if req.marker is None or any(req.marker.evaluate(m) for m in markers):
                stack.append((req.name, set(req.extras)))
    return {n for n in seen if n != "darkroom" and not n.startswith(NOT_CONSTRAINED)}


def test_one_constraints_file_pins_both_images_and_the_tests() -> None:
    """deploy/constraints.txt pins every package either image installs, at the versions this
    test environment runs (make setup installs with it), and both images install with it."""
    import importlib.metadata as md

    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[name] = version
    api = _closure({"server", "api", "redis", "s3", "remote"})
    worker = _closure({"server", "engine", "redis", "s3"})
    assert not (api | worker) - set(pins), sorted((api | worker) - set(pins))
    assert {"diffusers", "transformers", "huggingface-hub", "tokenizers"} <= set(pins)
    drift = {n: (v, md.version(n)) for n, v in pins.items() if md.version(n) != v}
    assert not drift, f"pinned, installed: {drift}"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n]*darkroom-\*\.whl", dockerfile)
    assert len(installs) == 2 and all("-c /constraints.txt" in i for i in installs), installs
