"""Time from launch to the first 200: fwatchdog's GET /_/health against the echo baseline's GET /.

The probe loop runs in this process (no shell fork per try), so the figure is the server's start-up plus one
spawn from Python. Usage: python3 bench/startup.py TARGET_DIR [ROUNDS]
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def first_200(cmd, env, port, path):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited during start-up")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return (time.perf_counter() - start) * 1000
            except OSError:
                pass
    finally:
        proc.terminate()
        proc.wait()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main():
    target = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    cases = {
        "fwatchdog": lambda port: (
            [f"{target}/fwatchdog"],
            {"fprocess": "cat", "port": str(port), "metrics_port": "0", "healthcheck_interval": "0"},
            "/_/health",
        ),
        "baseline": lambda port: ([f"{target}/examples/echo_server", str(port)], {}, "/"),
    }
    for name, case in cases.items():
        times = []
        for _ in range(rounds):
            port = free_port()
            cmd, extra, path = case(port)
            env = {"PATH": os.environ["PATH"], "TMPDIR": tempfile.mkdtemp(), **extra}
            times.append(first_200(cmd, env, port, path))
            time.sleep(0.05)
        print(f"{name:10} first 200 after {statistics.median(times):.2f} ms (median of {rounds}, min {min(times):.2f})")


if __name__ == "__main__":
    main()
