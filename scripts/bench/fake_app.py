"""A minimal stand-in for GET /accounts/{id}/access/apps/{app} for the engine benchmarks
(bench-recreate.sh, bench-downtime.sh, bench-compose-pass.sh): answers with the AUD in the file
named by argv[1], read anew on every request; prints its port on the first line."""
import http.server, json, sys, pathlib
aud_file = pathlib.Path(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        app = {"id": "00000001-0000-4000-8000-000000000000", "name": "bench", "type": "self_hosted",
               "domain": "api.example.com", "aud": aud_file.read_text().strip(),
               "destinations": [{"type": "public", "uri": "api.example.com"}]}
        body = json.dumps({"success": True, "errors": [], "messages": [], "result": app}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_port, flush=True)
srv.serve_forever()
