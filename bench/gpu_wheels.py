"""The wheels the GPU machine needs for bench/gpu_bench.py, from this project's own dependencies.

The GPU machine (../shared/gpu/README.md) has Python 3.12, torch, transformers and a few more,
and no network. Everything else the benchmark imports (diffusers and torchao for the engine;
the worker's service dependencies for its last stage) travels with the checkout in `.whl/`:

    python bench/gpu_wheels.py            # here, where PyPI is reachable: fills .whl/core, .whl/svc

The list is not kept by hand: pip's resolver works out, for the GPU machine's Python and
platform, every package that pyproject.toml's runtime dependencies and the `engine`, `fp8` and
`moderation` extras need, with the GPU image's own packages pinned at its versions, less those
packages. What remains is downloaded without dependencies: `core` the engine's (diffusers,
torchao), `svc` the rest.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the GPU image holds, at its versions (../shared/gpu/README.md).
GPU_IMAGE = (
    "torch==2.11.0",
    "transformers==5.17.0",
    "accelerate==1.15.0",
    "huggingface_hub==1.33.0",
    "triton==3.6.0",
    "tokenizers",
    "safetensors",
    "httpx",
    "typer",
    "rich",
    "prometheus-client",
    "onnxruntime",
    "opencv-python-headless",
    "numpy",
    "pillow",
)
EXTRAS = ("server", "engine", "fp8", "moderation")
CORE = {"diffusers", "torchao"}  # the engine's own; the benchmark cannot start without them
TARGET = [
    "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
    *[f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                  "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                                  "manylinux2014_x86_64", "manylinux1_x86_64")],
]  # fmt: skip


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The runtime dependencies and the benchmark's extras, as pyproject.toml states them,
    less the GPU image's own packages (held at the image's versions instead)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in EXTRAS:
        wanted += project["optional-dependencies"][extra]
    image = {_name(r) for r in GPU_IMAGE}
    # An extra naming darkroom's own (`darkroom[server]`) is listed here already.
    return [r for r in wanted if _name(r) not in image | {"darkroom"}]


def resolve(requirements: list[str]) -> dict[str, str]:
    """name -> version pip would install on the GPU machine for `requirements` (no download
    of the wheels themselves: their metadata only)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--isolated", "--target", str(Path(tmp) / "site"), "--report", str(report),
             *TARGET, *requirements],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


# torch and what needs it are left out of the resolutions: their CUDA wheels' dependencies need
# not be on the registry this runs against, and nothing the project adds needs them resolved
# (diffusers and torchao import torch without declaring it).
NEEDS_TORCH = {"torch", "triton", "accelerate"}


def wheel_list() -> dict[str, str]:
    """The packages the GPU machine lacks: the project's closure less the image's own packages.

    Only the packages the image names are taken as there: what they need in turn is shipped
    too (pip's resolution says transformers and typer need pydantic, which the image lacks, so
    it was installed without all of its dependencies). A wheel the image already has costs a
    little space under /tmp/site; one it lacks is a failed run.
    """
    image = [r for r in GPU_IMAGE if _name(r) not in NEEDS_TORCH]
    present = {_name(r) for r in GPU_IMAGE}
    ours = resolve([*project_requirements(), *image])
    return {name: version for name, version in sorted(ours.items()) if name not in present}


def _name(requirement: str) -> str:
    return canonical(re.split(r"[<>=!~\[ ;]", requirement)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / ".whl"))
    parser.add_argument("--list", action="store_true", help="print the list, download nothing")
    args = parser.parse_args()
    wanted = wheel_list()
    for name, version in wanted.items():
        print(f"{'core' if name in CORE else 'svc '} {name}=={version}")
    if args.list:
        return
    for group, names in (("core", CORE), ("svc", set(wanted) - CORE)):
        pins = [f"{n}=={wanted[n]}" for n in sorted(names) if n in wanted]
        folder = Path(args.out) / group
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--isolated",
             "-d", str(folder), *TARGET, *pins],
            check=True,
        )  # fmt: skip
    print(f"wheels in {args.out} (ignored by git): name it in the device call's carry")


if __name__ == "__main__":
    main()
