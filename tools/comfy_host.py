"""Start a real headless ComfyUI with this pack linked in, run API-format workflows, stop it by its PID.

Shared by the host tests (``tests/_host.py``) and the README's first command (``tools/run_workflow.py``), so both drive
ComfyUI the same way: ``main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <dir>`` with the pack symlinked
into ``<dir>/custom_nodes/``, the fixture folders (``models/mvdream``, ``input``) linked into the base directory, then
``POST /prompt``, the websocket for events, and ``GET /history`` for the outputs. Standard library + websocket-client only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

PACK_FOLDER = "dreamedit3d"  # the name the pack gets inside custom_nodes/


class HostError(RuntimeError):
    """The ComfyUI host could not be started or did not answer as expected."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link_or_copy(src: Path, dst: Path) -> None:
    """Symlink ``src`` at ``dst`` (copy if the filesystem refuses links)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        else:
            shutil.rmtree(dst)
    try:
        dst.symlink_to(src, target_is_directory=src.is_dir())
    except OSError:
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def prepare_base_directory(base: Path, pack_dir: Path, fixdir: Optional[Path] = None) -> Path:
    """Lay out a ComfyUI base directory: the pack in ``custom_nodes/``, and ``fixdir``'s ``models/*`` and ``input`` linked in.

    Args:
        base: the (new or empty) base directory.
        pack_dir: the repository root (the pack).
        fixdir: a folder made by ``tests/workflows/prepare_host.py`` (``models/<kind>/``, ``input/``), or None.
    """
    base = Path(base)
    for sub in ("custom_nodes", "user", "output", "temp", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link_or_copy(Path(pack_dir).resolve(), base / "custom_nodes" / PACK_FOLDER)
    if fixdir is not None:
        fixdir = Path(fixdir).resolve()
        for kind in sorted((fixdir / "models").iterdir()) if (fixdir / "models").is_dir() else []:
            link_or_copy(kind, base / "models" / kind.name)
        if (fixdir / "input").is_dir():
            link_or_copy(fixdir / "input", base / "input")
    (base / "input").mkdir(exist_ok=True)
    return base


@dataclass
class RunResult:
    """What one prompt did: its id, every websocket event for it, the /history entry, and how it ended."""

    prompt_id: str
    events: list = field(default_factory=list)  # (type, data) for JSON frames
    preview_frames: int = 0  # binary websocket frames (latent/step previews)
    history: dict = field(default_factory=dict)
    status: str = ""  # "success" | "error" | "interrupted" | "timeout"
    seconds: float = 0.0

    def of_type(self, kind: str) -> list:
        return [d for t, d in self.events if t == kind]

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    @property
    def error(self) -> Optional[dict]:
        errs = self.of_type("execution_error")
        return errs[0] if errs else None


class ComfyHost:
    """One ComfyUI server process.

    Args:
        comfy_path: the ComfyUI tree (holds ``main.py``).
        base: the base directory (see :func:`prepare_base_directory`).
        python: the interpreter to run ComfyUI with (the one that has ComfyUI's requirements).
        port: TCP port on 127.0.0.1 (a free one when None).
        cpu: run with ``--cpu``.
    """

    def __init__(self, comfy_path, base, python: str = sys.executable, port: Optional[int] = None, cpu: bool = True,
                 extra_args: tuple = ()):
        self.comfy_path = Path(comfy_path)
        if not (self.comfy_path / "main.py").is_file():
            raise HostError(f"{self.comfy_path} is not a ComfyUI tree (no main.py); set COMFYUI_PATH to your ComfyUI folder")
        self.base = Path(base)
        self.python = python
        self.port = port or free_port()
        self.cpu = cpu
        self.extra_args = tuple(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.base / "server.log"
        self.boot_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> "ComfyHost":
        args = [self.python, str(self.comfy_path / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base), "--disable-api-nodes", "--disable-auto-launch",
                "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}", *self.extra_args]
        if self.cpu:
            args.insert(2, "--cpu")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "2")
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.time()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=str(self.comfy_path), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise HostError(f"ComfyUI exited with code {self.proc.returncode} while booting; log:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                self.boot_seconds = time.time() - t0
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        self.stop()
        raise HostError(f"ComfyUI did not answer within {timeout:.0f} s; log:\n{self.log_tail()}")

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            self.get_json("/system_stats", timeout=5)
            return True
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server we started, by its PID (SIGINT, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ log
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def pack_import_failures(self, folder: str = PACK_FOLDER) -> list[str]:
        """Log lines that say our pack (or one of its modules) failed to import."""
        bad = []
        for line in self.log_text().splitlines():
            if folder in line and ("IMPORT FAILED" in line or "Cannot import" in line):
                bad.append(line.strip())
        return bad

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, route: str, body=None, timeout: float = 30.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def get_json(self, route: str, timeout: float = 30.0):
        status, body = self._request("GET", route, timeout=timeout)
        if status != 200:
            raise HostError(f"GET {route} -> {status}: {body}")
        return body

    def object_info(self, node_class: Optional[str] = None) -> dict:
        info = self.get_json("/object_info" + (f"/{node_class}" if node_class else ""), timeout=60)
        return info

    def post_prompt(self, prompt: dict, client_id: str = "", extra_data: Optional[dict] = None):
        """POST /prompt. Returns (http status, body) without raising, so callers can check 400s."""
        body = {"prompt": prompt, "client_id": client_id}
        if extra_data:
            body["extra_data"] = extra_data
        return self._request("POST", "/prompt", body)

    def interrupt(self, prompt_id: Optional[str] = None):
        return self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def history(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def view_url(self, item: dict) -> str:
        from urllib.parse import urlencode

        return self.url + "/view?" + urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})

    def output_file(self, item: dict) -> Path:
        """Local path of a history output item ({filename, subfolder, type})."""
        root = {"output": "output", "temp": "temp", "input": "input"}[item.get("type", "output")]
        return self.base / root / item.get("subfolder", "") / item["filename"]

    # ------------------------------------------------------------------ running
    def run(self, prompt: dict, timeout: float = 600.0, on_event: Optional[Callable[["ComfyHost", str, dict, RunResult], None]] = None,
            extra_data: Optional[dict] = None) -> RunResult:
        """POST ``prompt``, follow the websocket until it ends, return events + /history.

        Raises:
            HostError: the prompt was rejected (400); the body is in the message and in ``.body``.
        """
        import websocket  # websocket-client

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        t0 = time.time()
        try:
            status, body = self.post_prompt(prompt, client_id, extra_data)
            if status != 200:
                err = HostError(f"POST /prompt -> {status}: {json.dumps(body)[:4000]}")
                err.status, err.body = status, body
                raise err
            result = RunResult(prompt_id=body["prompt_id"])
            ws.settimeout(5.0)
            while True:
                if time.time() - t0 > timeout:
                    result.status = "timeout"
                    break
                try:
                    frame = ws.recv()
                except websocket.WebSocketTimeoutException:
                    if self.proc is not None and self.proc.poll() is not None:
                        raise HostError(f"ComfyUI died during the run; log:\n{self.log_tail()}")
                    continue
                if isinstance(frame, bytes):
                    result.preview_frames += 1
                    continue
                msg = json.loads(frame)
                kind, data = msg.get("type"), msg.get("data", {})
                if isinstance(data, dict) and data.get("prompt_id") not in (None, result.prompt_id):
                    continue
                result.events.append((kind, data))
                if on_event is not None:
                    on_event(self, kind, data, result)
                if kind == "execution_success":
                    result.status = "success"
                elif kind == "execution_error":
                    result.status = "error"
                elif kind == "execution_interrupted":
                    result.status = "interrupted"
                if result.status:
                    break
        finally:
            ws.close()
        result.seconds = time.time() - t0
        for _ in range(40):  # history is written right after the final event
            result.history = self.history(result.prompt_id)
            if result.history.get("status", {}).get("completed") is not None or result.history.get("outputs"):
                break
            time.sleep(0.25)
        return result
