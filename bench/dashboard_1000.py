#!/usr/bin/env python3
"""The dashboard at 1,000 units, in the Chromium the browser tests use:
how long the page takes to draw every unit (from navigation, and the
draw itself), a filter, every dependency edge at once, and the page's
weight compressed.

Goals (issue 17): the graph of 1,000 units drawn in under 500 ms; the
page under 300 KB compressed. Printed beside those budgets as a ratio
(Argo CD's UI, the tool users compare with, cannot run offline here: its
own bundle is about 2.5 MB minified, which is not measured here).

Needs: a release build (cargo build --release -p terrace, or TERRACE),
node, chromium and playwright-core (scripts/setup-tools.sh installs
them). UNITS (default 1000), RUNS (default 5).
"""
import gzip, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERRACE = os.environ.get("TERRACE", os.path.join(ROOT, "target/release/terrace"))
UNITS = int(os.environ.get("UNITS", "1000"))
RUNS = int(os.environ.get("RUNS", "5"))
LAYERS = ["bootstrap", "infra", "os", "platform", "services", "apps"]
PLAYWRIGHT = os.environ.get("TERRACE_PLAYWRIGHT",
                            os.path.expanduser("~/.cache/terrace-tools/node/node_modules/playwright-core"))
CHROMIUM = next((p for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] if os.path.exists(p)), None)


def generate(work):
    """UNITS units over six layers; each depends on one or two units of
    the layer below (a graph as deep as a homelab's, 1,000 wide)."""
    with open(os.path.join(work, "terrace.yaml"), "w") as f:
        f.write(f"name: bench\nlayers: [{', '.join(LAYERS)}]\ntargets:\n  k8s: {{ type: cluster }}\n")
    per = UNITS // len(LAYERS)
    names = {}
    n = 0
    for li, layer in enumerate(LAYERS):
        count = per if li < len(LAYERS) - 1 else UNITS - per * (len(LAYERS) - 1)
        names[layer] = []
        for j in range(count):
            name = f"{layer[:3]}{j:04d}"
            names[layer].append(name)
            deps = []
            if li:
                below = names[LAYERS[li - 1]]
                deps = sorted({below[j % len(below)], below[(j * 7 + 3) % len(below)]})
            d = os.path.join(work, layer, name)
            os.makedirs(d)
            dep = f"dependsOn: [{', '.join(deps)}]\n" if deps else ""
            open(os.path.join(d, "unit.yaml"), "w").write(f"layer: {layer}\nkind: manifests\n{dep}")
            open(os.path.join(d, "cm.yaml"), "w").write(
                f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: \"1\"\n")
            n += 1
    return n


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MEASURE = r"""
const { chromium } = require(process.env.PLAYWRIGHT);
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ["--no-sandbox"] });
  const out = [];
  for (let i = 0; i < Number(process.env.RUNS); i++) {
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    await page.goto(process.env.URL);
    await page.waitForFunction((n) => window.__terrace && window.__terrace.units === n, Number(process.env.UNITS), { timeout: 60000 });
    const first = await page.evaluate(() => window.__terrace);
    const boxes = await page.$$eval(".unit", (els) => els.length);
    await page.fill("#filter", "apps");
    const filter = await page.evaluate(() => window.__terrace.renderMs);
    await page.fill("#filter", "");
    const edges = await page.evaluate(() => {
      const t = performance.now();
      document.getElementById("all-edges").click();
      return { ms: performance.now() - t, paths: document.querySelectorAll("#edges path").length };
    });
    out.push({ drawnAt: first.at, draw: first.renderMs, boxes, filter, edges: edges.ms, paths: edges.paths });
    await page.close();
  }
  await browser.close();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def main():
    if not (CHROMIUM and os.path.isdir(PLAYWRIGHT)):
        sys.exit("needs chromium and playwright-core: bash scripts/setup-tools.sh")
    if not os.path.exists(TERRACE):
        sys.exit(f"no {TERRACE}: cargo build --release -p terrace (or set TERRACE)")
    work = tempfile.mkdtemp(prefix="terrace-dash-")
    try:
        n = generate(work)
        port = free_port()
        server = subprocess.Popen([TERRACE, "dashboard", "--listen", f"127.0.0.1:{port}"], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/units", timeout=5) as r:
                        if len(json.load(r)) == n:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    sys.exit("the dashboard did not come up")
                time.sleep(0.2)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                page = r.read()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/units", timeout=5) as r:
                units_json = r.read()
            script = os.path.join(work, "measure.cjs")
            open(script, "w").write(MEASURE)
            env = dict(os.environ, PLAYWRIGHT=PLAYWRIGHT, CHROMIUM=CHROMIUM, URL=f"http://127.0.0.1:{port}/",
                       UNITS=str(n), RUNS=str(RUNS))
            o = subprocess.run(["node", script], env=env, capture_output=True, text=True, check=True)
            runs = json.loads(o.stdout)
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    assert all(r["boxes"] == n for r in runs), runs
    med = lambda k: statistics.median(r[k] for r in runs)
    weight = len(gzip.compress(page, 9))
    data = len(gzip.compress(units_json, 9))
    print(f"dashboard, {n} units in {len(LAYERS)} layers, Chromium headless, median of {RUNS} loads")
    print(f"{'figure':44} {'terrace':>10} {'budget':>10} {'ratio':>7}")
    rows = [
        ("every unit drawn, from navigation (ms)", med("drawnAt"), 500.0),
        ("the draw itself (ms)", med("draw"), 500.0),
        ("a filter, drawn again (ms)", med("filter"), 500.0),
        (f"all {runs[0]['paths']} edges drawn (ms)", med("edges"), 500.0),
        ("page weight, gzip (KB)", weight / 1000, 300.0),
    ]
    for name, ours, budget in rows:
        print(f"{name:44} {ours:10.1f} {budget:10.1f} {ours / budget:6.2f}x")
    print(f"(the units' JSON for {n} units: {data / 1000:.1f} KB gzip, {len(units_json) / 1000:.0f} KB raw)")


if __name__ == "__main__":
    main()
