"""Native mesh steps that cannot poll for interruption (xatlas charting and packing, quadric decimation), run in a child
Python process on big meshes, so a user's interrupt stops them at once.

Both libraries hold the GIL for their whole call (measured: a polling thread did not run once during a 12 s xatlas
``generate``), so neither a loop nor a watcher thread in this process can stop them; a child process can be killed. The
child is this file run as a script: it imports numpy and the one library it needs, never torch, ComfyUI or this package,
and exchanges ``.npz`` bytes over its stdin/stdout (nothing is written to disk). Small meshes run in-process (starting a
child costs a few tenths of a second).
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

import numpy as np

#: Seconds between interruption checks while a child runs.
POLL_S = 0.05
#: Meshes with fewer faces run in-process: their native step takes well under a second.
IN_PROCESS_FACES = 20_000


def _decimate(arrays: dict) -> dict:
    import fast_simplification

    v, f = fast_simplification.simplify(arrays["verts"].astype(np.float32), arrays["faces"].astype(np.int32),
                                        target_count=int(arrays["target"]))
    return {"verts": np.asarray(v, np.float64), "faces": np.asarray(f, np.int64)}


def _atlas(arrays: dict) -> dict:
    """xatlas charts of the meshes ``verts{i}``/``faces{i}`` packed into one ``texture_size`` atlas: per mesh
    ``vmap{i}`` (int64 into its vertices), ``faces{i}`` (int64 into the new vertices) and ``uv{i}`` (float32)."""
    import xatlas

    count = int(arrays["count"])
    size = int(arrays["texture_size"])
    atlas = xatlas.Atlas()
    for i in range(count):
        atlas.add_mesh(arrays[f"verts{i}"].astype(np.float32), arrays[f"faces{i}"].astype(np.uint32))
    chart = xatlas.ChartOptions()
    # no chart-growing refinement passes: 3-5x faster on 50k-face hull meshes for ~25% more charts (measured)
    chart.max_iterations = 0
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = max(2, size // 256)
    pack.bilinear = True
    pack.bruteForce = False
    pack.blockAlign = True
    atlas.generate(chart, pack)
    out = {}
    for i in range(count):
        vmap, idx, uv = atlas[i]
        out[f"vmap{i}"] = np.asarray(vmap, np.int64)
        out[f"faces{i}"] = np.asarray(idx, np.int64)
        out[f"uv{i}"] = np.asarray(uv, np.float32)
    return out


OPERATIONS = {"decimate": _decimate, "atlas": _atlas}


def _pack(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def run_native(operation: str, arrays: dict, num_faces: int,
               check_interrupt: Optional[Callable[[], None]] = None) -> dict:
    """Run ``operation`` ("decimate" or "atlas") on ``arrays``; in a child process when the mesh has at least
    ``IN_PROCESS_FACES`` faces and there is an interruption check to honour.

    ``check_interrupt`` is polled every ``POLL_S`` seconds while the child runs; when it raises, the child is killed
    and the exception propagates.

    Raises:
        LiftError: the child failed (its last error line is quoted).
    """
    from ..errors import LiftError

    if check_interrupt is None or num_faces < IN_PROCESS_FACES:
        return OPERATIONS[operation](arrays)
    try:
        proc = subprocess.Popen([sys.executable, __file__, operation], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError:  # no separate Python to start (an embedded interpreter): run here, uninterruptible
        return OPERATIONS[operation](arrays)
    # stdin is fed and stdout/stderr drained by threads (a big mesh overflows a pipe's buffer both ways), while this
    # thread polls for the end or an interrupt; Popen.communicate cannot resume sending input after a timeout
    payload, out, err = _pack(arrays), [], []

    def feed():
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except OSError:  # the child died or was killed: its exit status says why
            pass

    threads = [threading.Thread(target=feed, daemon=True),
               threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for t in threads:
        t.start()
    try:
        while proc.poll() is None:
            check_interrupt()
            time.sleep(POLL_S)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for t in threads:
            t.join()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
    out, err = b"".join(out), b"".join(err)
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines() or [f"exit status {proc.returncode}"]
        raise LiftError(f"the {operation} step failed in its worker process: {lines[-1]}")
    return _unpack(out)


def _main() -> None:
    operation = sys.argv[1]
    result = OPERATIONS[operation](_unpack(sys.stdin.buffer.read()))
    sys.stdout.buffer.write(_pack(result))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _main()
