#!/usr/bin/env python3
"""A small fake of the Kubernetes API over plain HTTP, for the CLI tests
of the live-cluster path (kubeconfig, discovery, server-side apply with
dry-run, GET, DELETE) where no API server exists.

Usage: fake_apiserver.py PORT_FILE [--not-ready]
Binds 127.0.0.1 on a free port and writes the port to PORT_FILE. Every
request is appended to PORT_FILE.log as one JSON line. Workloads report
ready unless --not-ready is given. Serves until killed.
"""
import base64
import copy
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SERVED = {
    "v1": {"Namespace": ("namespaces", False), "ConfigMap": ("configmaps", True),
           "Secret": ("secrets", True), "Service": ("services", True)},
    "apps/v1": {"Deployment": ("deployments", True), "StatefulSet": ("statefulsets", True)},
    "networking.k8s.io/v1": {"Ingress": ("ingresses", True)},
    "batch/v1": {"Job": ("jobs", True)},
    "apiextensions.k8s.io/v1": {"CustomResourceDefinition": ("customresourcedefinitions", False)},
}
OBJECTS = {}
STATE = {"version": 0, "ready": "--not-ready" not in sys.argv}


def status_body(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": code, "reason": reason, "message": message}


def controllers(obj):
    kind = obj.get("kind")
    if kind == "CustomResourceDefinition":
        # Established on the first read after creation; its kind served.
        spec = obj["spec"]
        obj["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
        for v in spec.get("versions", []):
            gv = spec["group"] + "/" + v["name"]
            SERVED.setdefault(gv, {})[spec["names"]["kind"]] = (
                spec["names"]["plural"], spec.get("scope") == "Namespaced")
    elif kind == "Namespace":
        obj["status"] = {"phase": "Active"}
    elif kind in ("Deployment", "StatefulSet"):
        want = obj.get("spec", {}).get("replicas", 1)
        have = want if STATE["ready"] else 0
        obj["status"] = {"observedGeneration": obj["metadata"].get("generation", 1),
                         "replicas": want, "updatedReplicas": want, "readyReplicas": have,
                         "availableReplicas": have, "currentRevision": "r1", "updateRevision": "r1"}


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, and each answer in one write (no Nagle stalls).
    protocol_version = "HTTP/1.1"
    wbufsize = -1

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def handle_any(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with open(sys.argv[1] + ".log", "a") as log:
            log.write(json.dumps({"method": self.command, "path": url.path,
                                  "query": url.query, "body": body}) + "\n")
        parts = url.path.strip("/").split("/")
        if url.path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        if url.path == "/apis":
            groups = {}
            for gv in SERVED:
                if "/" in gv:
                    g, v = gv.split("/")
                    groups.setdefault(g, []).append({"groupVersion": gv, "version": v})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in groups.items()]})
        gv = None
        if len(parts) == 2 and parts[0] == "api":
            gv = parts[1]
        elif len(parts) == 3 and parts[0] == "apis":
            gv = parts[1] + "/" + parts[2]
        if gv is not None:
            kinds = SERVED.get(gv)
            if not kinds:
                return self.reply(404, status_body(404, "NotFound", "not found"))
            return self.reply(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": [
                {"name": plural, "kind": kind, "namespaced": ns, "verbs": ["get", "patch", "delete"]}
                for kind, (plural, ns) in kinds.items()]})
        path = url.path
        plurals = {p for kinds in SERVED.values() for (p, _) in kinds.values()}
        if self.command == "GET" and parts[-1] in plurals:
            items = []
            for p, obj in list(OBJECTS.items()):
                if p.startswith(path + "/") and "/" not in p[len(path) + 1:]:
                    controllers(obj)
                    item = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
                    items.append(item)
            return self.reply(200, {"kind": "List", "items": items})
        if self.command == "GET":
            obj = OBJECTS.get(path)
            if obj is None:
                return self.reply(404, status_body(404, "NotFound", "not found"))
            controllers(obj)
            return self.reply(200, obj)
        if self.command == "DELETE":
            if OBJECTS.pop(path, None) is None:
                return self.reply(404, status_body(404, "NotFound", "not found"))
            return self.reply(200, {"kind": "Status", "status": "Success"})
        if self.command == "PATCH":
            if self.headers.get("Content-Type") != "application/apply-patch+yaml":
                return self.reply(415, status_body(415, "UnsupportedMediaType", "apply patches only"))
            live = OBJECTS.get(path)
            nxt = copy.deepcopy(body)
            meta = nxt.setdefault("metadata", {})
            if nxt.get("kind") == "Secret" and "stringData" in nxt:
                data = nxt.setdefault("data", {})
                for k, v in nxt.pop("stringData").items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
            if nxt.get("kind") == "Service":
                nxt.setdefault("spec", {}).setdefault("clusterIP", "10.0.0.10")
            if live is not None:
                for k in ("uid", "creationTimestamp", "resourceVersion", "generation"):
                    meta[k] = live["metadata"][k]
                if "status" in live and "status" not in body:
                    nxt["status"] = live["status"]
                changed = {k: v for k, v in nxt.items() if k != "status"} != \
                    {k: v for k, v in live.items() if k != "status"}
                if changed and nxt.get("spec") != live.get("spec"):
                    meta["generation"] = live["metadata"]["generation"] + 1
            else:
                meta.update({"uid": "uid-" + path, "creationTimestamp": "2026-11-22T00:00:00Z",
                             "generation": 1, "resourceVersion": "0"})
                changed = True
            if changed and "dryRun=All" not in url.query:
                STATE["version"] += 1
                meta["resourceVersion"] = str(STATE["version"])
            meta["managedFields"] = [{"manager": "terrace", "operation": "Apply"}]
            if "dryRun=All" not in url.query:
                OBJECTS[path] = nxt
            return self.reply(200, nxt)
        return self.reply(405, status_body(405, "MethodNotAllowed", self.command))

    do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = handle_any


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
