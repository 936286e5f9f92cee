#!/usr/bin/env python3
"""A stand-alone fake of the Cloudflare API for benchmarks (the tests use the in-process Rust fake).

Serves the real envelope and pagination for /accounts, /accounts/{id}/access/apps[/{app}] and
counts requests (GET /__stats, POST /__reset). Options:
  --apps N           number of applications (the target host is the last one)
  --ignore-filter    answer as if the `domain` filter did not exist (every app, paginated)
  --toggle           alternate the target's AUD on every app request (every sync then writes)
Prints the port it listens on (127.0.0.1 only) as its first line.
"""
import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ACCOUNT = "0123456789abcdef0123456789abcdef"
HOST = "api.example.com"


def app(n, host, aud):
    return {"id": f"{n:08x}-0000-4000-8000-000000000000", "name": f"App {n}", "aud": aud,
            "type": "self_hosted", "domain": host,
            "destinations": [{"type": "public", "uri": host}], "self_hosted_domains": [host],
            "session_duration": "24h", "policies": []}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=1)
    ap.add_argument("--ignore-filter", action="store_true")
    ap.add_argument("--toggle", action="store_true")
    args = ap.parse_args()
    apps = [app(i + 100, f"svc{i}.example.com", "ab" * 32) for i in range(args.apps - 1)]
    apps.append(app(1, HOST, "cd" * 32))
    stats = {"requests": 0, "flip": 0}
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            if self.path == "/__reset":
                with lock:
                    stats["requests"] = 0
                return self.send(200, {"ok": True})
            self.send(404, {"success": False, "errors": [{"code": 7000, "message": "No route"}], "result": None})

        def do_GET(self):
            u = urlparse(self.path)
            if u.path == "/__stats":
                return self.send(200, stats)
            with lock:
                stats["requests"] += 1
                if args.toggle and "/access/apps" in u.path:
                    stats["flip"] ^= 1
                    apps[-1]["aud"] = "cd" * 32 if stats["flip"] else "ef" * 32
            if self.headers.get("authorization") != "Bearer bench-token":
                return self.send(403, {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}], "result": None})
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            seg = u.path.strip("/").split("/")
            if seg == ["accounts"]:
                return self.page([{"id": ACCOUNT, "name": "Bench"}], q)
            if len(seg) == 4 and seg[2:] == ["access", "apps"]:
                items = apps
                if "domain" in q and not args.ignore_filter:
                    items = [a for a in apps if a["domain"] == q["domain"]]
                return self.page(items, q)
            if len(seg) == 5 and seg[2:4] == ["access", "apps"]:
                for a in apps:
                    if a["id"] == seg[4]:
                        return self.send(200, {"success": True, "errors": [], "messages": [], "result": a})
                return self.send(404, {"success": False, "errors": [{"code": 12130, "message": "application not found"}], "result": None})
            self.send(404, {"success": False, "errors": [{"code": 7000, "message": "No route"}], "result": None})

        def page(self, items, q):
            page = max(1, int(q.get("page", 1)))
            per = max(1, min(1000, int(q.get("per_page", 25))))
            total_pages = max(1, -(-len(items) // per))
            chunk = items[(page - 1) * per: page * per]
            self.send(200, {"success": True, "errors": [], "messages": [], "result": chunk,
                            "result_info": {"page": page, "per_page": per, "count": len(chunk),
                                            "total_count": len(items), "total_pages": total_pages}})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
