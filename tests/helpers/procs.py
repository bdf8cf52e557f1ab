"""Starting and collecting the worker processes of the two-process CPU tests (jax.distributed
over gloo on loopback): one free port, N workers with 2 CPU devices each, their output on failure."""

import os
import socket
import subprocess
import sys


def start_workers(script: str, out_dir, num: int = 2) -> list:
    """``python script PROCESS_ID NUM PORT OUT_DIR`` for each process id, on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    return [subprocess.Popen([sys.executable, script, str(pid), str(num), str(port), str(out_dir)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for pid in range(num)]


def finish_workers(procs: list, *, timeout: float, tail: int = 4000) -> list:
    """Waits for every worker (killing the rest on a timeout); asserts each exited 0, showing the
    last ``tail`` characters of its output otherwise. Returns the outputs."""
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-tail:]
    return logs
