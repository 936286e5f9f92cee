#!/usr/bin/env python3
"""Run Podman's healthchecks on a machine without systemd (CI, containers).

Podman does not probe a container by itself: on start it asks systemd for a transient timer that
runs `podman healthcheck run <id>` every interval. Without systemd (`unable to get systemd
connection to add healthchecks` in the service's log) no probe ever runs and a container with a
healthcheck stays `starting` for ever. This loop plays the timer: every running container that
has a healthcheck is probed once per its own interval (first probe one interval after it was
first seen, as systemd's timer does); Podman itself applies start period, retries and timeout.
Usage: scripts/podman-health-ticker.py   (runs until killed; scripts/test-podman.sh starts it)
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import time

DEFAULT_INTERVAL = 30.0  # seconds, Podman's default
SOCKET = os.environ.get("DOCKER_HOST", "unix:///run/podman/podman.sock").removeprefix("unix://")


class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def get(path):
    """GET path from the engine's compatible API (JSON), None on any failure."""
    try:
        c = Unix(SOCKET)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return json.loads(body) if r.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


def running_with_healthcheck(known):
    """{id: interval seconds} of the running containers that define a healthcheck (through
    the socket, not the CLI: cheap enough to ask twice a second). `known` caches intervals."""
    found = {}
    for c in get("/containers/json") or []:
        cid = c.get("Id")
        if not cid:
            continue
        if cid not in known:
            info = get(f"/containers/{cid}/json")
            if info is None:
                continue
            hc = (info.get("Config") or {}).get("Healthcheck") or {}
            test = hc.get("Test") or []
            ns = hc.get("Interval") or 0
            known[cid] = None if not test or test[0] == "NONE" else (ns / 1e9 if ns > 0 else DEFAULT_INTERVAL)
        if known[cid] is not None:
            found[cid] = known[cid]
    return found


def main():
    due, known, probes = {}, {}, []
    while True:
        now = time.monotonic()
        current = running_with_healthcheck(known)
        for cid in list(due):
            if cid not in current:
                del due[cid]
        for cid, interval in current.items():
            if cid not in due:
                due[cid] = now + interval
            elif now >= due[cid]:
                due[cid] = now + interval
                probes.append(
                    subprocess.Popen(
                        ["podman", "healthcheck", "run", cid],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        probes = [p for p in probes if p.poll() is None]
        time.sleep(0.5)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
