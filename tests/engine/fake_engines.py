"""Small in-repo servers that hold the remote engine to SGLang Diffusion's and vLLM-Omni's
documented image APIs (shared/spec/REMOTE-ENGINES.md gives the sources; each behaviour below
names its section). They draw a picture that depends only on (prompt, seed, size, steps,
guidance), so a test sees whether the engine got what it was meant to get."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

SGLANG_DEFAULT_SEED = 1024  # §1.2: SamplingParams.seed, a constant
SERVED = "krea/Krea-2-Turbo"


def picture(prompt: str, seed: int, width: int, height: int, fmt: str, extra: str = "") -> bytes:
    """A deterministic picture: one colour from the inputs, in the format asked."""
    digest = hashlib.sha256(f"{prompt}|{seed}|{extra}".encode()).digest()
    image = Image.new("RGB", (width, height), tuple(digest[:3]))
    out = io.BytesIO()
    image.save(out, format="JPEG" if fmt in ("jpg", "jpeg") else fmt.upper())
    return out.getvalue()


@dataclass
class FakeEngine:
    flavor: str  # "sglang" or "vllm-omni"
    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    # What the next generations answer, in order; then `ok`: "ok", ("status", code, body),
    # ("size", w, h) (a picture of the wrong size).
    script: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    healthy: bool = True  # vLLM-Omni's /health: 503 once its engine is dead (§2.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            self.received.append(body)
            step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, tuple) and step[0] == "status":
            return step[1], step[2]
        return (self.sglang if self.flavor == "sglang" else self.vllm)(body, step)

    def sglang(self, body: dict[str, Any], step: Any) -> tuple[int, Any]:
        if body.get("response_format", "url") != "b64_json":  # §1.4: url needs cloud storage
            return 400, {"detail": "response_format='url' requires cloud storage to be configured."}
        width, height = 1024, 1024  # §1.2: an unparsable size is ignored: the default
        size = str(body.get("size", "1024x1024")).lower().replace(" ", "")
        if "x" in size and all(p.isdigit() for p in size.split("x")):
            width, height = (int(p) for p in size.split("x"))
        width, height = body.get("width") or width, body.get("height") or height  # they win
        seed = body.get("seed", SGLANG_DEFAULT_SEED)
        steps, guidance = body.get("num_inference_steps", 8), body.get("guidance_scale", 1.0)
        fmt = body.get("output_format") or "jpg"  # §1.2: JPEG unless asked
        if isinstance(step, tuple) and step[0] == "size":
            width, height = step[1], step[2]
        data = picture(body["prompt"], seed, width, height, fmt, f"{steps}|{guidance}")
        return 200, {
            "id": "req-1",
            "created": 1,
            "data": [
                {
                    "b64_json": base64.b64encode(data).decode(),
                    "revised_prompt": body["prompt"],
                    "file_path": None,
                }
            ],
            "inference_time_s": 0.01,
        }

    def vllm(self, body: dict[str, Any], step: Any) -> tuple[int, Any]:
        if "model" in body and body["model"] != SERVED:  # §2.2: must be the served name
            return 400, {"detail": f"Model mismatch: {body['model']} is not {SERVED}"}
        if body.get("response_format", "b64_json") == "url":  # §2.2: refused by a validator
            return 422, {"detail": [{"msg": "url is not supported"}]}
        width, height = (int(p) for p in str(body.get("size", "1024x1024")).split("x"))
        seed = body.get("seed", random.randint(0, 2**32 - 1))  # §2.2: random, not returned
        steps = body.get("num_inference_steps", 28)  # §2.2: the Raw model's defaults
        guidance = body.get("guidance_scale", 4.5)
        if isinstance(step, tuple) and step[0] == "size":
            width, height = step[1], step[2]
        data = picture(body["prompt"], seed, width, height, body.get("output_format", "png"),
                       f"{steps}|{guidance}")  # fmt: skip
        return 200, {
            "created": 1,
            "data": [{"b64_json": base64.b64encode(data).decode(), "url": None}],
            "output_format": "png",
        }

    def models(self) -> dict[str, Any]:
        owner = "sglang" if self.flavor == "sglang" else "vllm"
        return {"object": "list", "data": [{"id": SERVED, "object": "model", "created": 1,
                                            "owned_by": owner}]}  # fmt: skip


@contextmanager
def serving(flavor: str, script: list[Any] | None = None) -> Iterator[FakeEngine]:
    engine = FakeEngine(flavor, script=list(script or []))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, engine.models())
            elif self.path == "/health":
                if engine.healthy:
                    self._send(200, {"status": "ok"})
                else:
                    self._send(503, {"status": "unhealthy"})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            if self.path != "/v1/images/generations":
                self._send(404, {"detail": "Not Found"})
                return
            self._send(*engine.answer(body))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    engine.port = server.server_address[1]
    # Shut down within a twentieth of a second (the default poll is half a second per test).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        server.shutdown()
        server.server_close()
