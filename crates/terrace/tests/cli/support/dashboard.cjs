// Drives terrace serve's dashboard in a real Chromium (playwright-core)
// over the example homelab: every unit in its layer, approval through
// the page (tokens and a name asked for in prompts), a unit's page with
// its secret inputs shown as sensitive, the action log, a run's log
// streamed while it runs (PUSH makes a slow run and breaks a unit), the
// failing unit's blocked dependents, keyboard navigation, the dark theme
// and a phone's width. Every response body and every page is searched
// for the SECRETS. Screenshots go to SHOTS. Prints one JSON line; exits
// non-zero on the first failure.
//   PLAYWRIGHT=<playwright-core> CHROMIUM=/usr/bin/chromium URL=http://127.0.0.1:PORT/
//   READ=<token> WRITE=<token> PUSH=<script> UNITS='["a",...]' LAYERS='[...]'
//   SECRETS='["..."]' SHOTS=<dir> node dashboard.cjs
const { chromium } = require(process.env.PLAYWRIGHT);
const { execFileSync } = require("child_process");
const path = require("path");
const { URL, READ, WRITE, CHROMIUM, PUSH, SHOTS } = process.env;
const UNITS = JSON.parse(process.env.UNITS);
const LAYERS = JSON.parse(process.env.LAYERS);
const SECRETS = JSON.parse(process.env.SECRETS);

function check(ok, what) {
  if (!ok) throw new Error(what);
}
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, "dashboard-" + name + ".png"), fullPage: false });

(async () => {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  const bodies = [];
  const requests = [];
  const asked = [];
  const origin = new globalThis.URL(URL).origin;
  function watch(page) {
    page.on("dialog", async (d) => {
      asked.push(d.message());
      const m = d.message();
      await d.accept(m.startsWith("Write") ? WRITE : m.startsWith("Read") ? READ : "playwright-test");
    });
    page.on("request", (r) => requests.push(r.url()));
    page.on("response", async (r) => {
      // Streams (the run log) are read by the page; the rest is kept.
      if ((r.headers()["content-type"] || "").includes("event-stream")) return;
      try { bodies.push([r.url(), await r.text()]); } catch (_) { /* gone with a navigation */ }
    });
  }
  const pages = [];
  const keep = async (page, name) => pages.push([name, await page.content()]);
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    watch(page);
    await page.goto(URL);
    // Every unit, in its layer, the layers in order.
    for (const u of UNITS) await page.waitForSelector(`.unit[data-unit="${u}"]`, { timeout: 30000 });
    const drawn = await page.$$eval(".unit", (els) => els.length);
    check(drawn === UNITS.length, `${drawn} boxes for ${UNITS.length} units`);
    const order = await page.$$eval(".layer", (els) => els.map((e) => e.dataset.layer));
    check(JSON.stringify(order) === JSON.stringify(LAYERS), "layers in order: " + order);
    check(await page.isVisible("#approval"), "the approval banner shows");
    // The bootstrap chart applied once, and to whom it hands over.
    const once = await page.$eval('.unit[data-unit="pod-network"]', (e) => [e.dataset.state, e.title]);
    check(once[0] === "once" && once[1].includes("handed over to cni"), "pod-network is once: " + once);
    const waiting = await page.$$eval('.layer[data-layer="apps"] .unit', (els) => els.map((e) => e.dataset.state));
    check(waiting.includes("approval"), "apps wait for approval: " + waiting);
    // The filter, by name and by state.
    await page.fill("#filter", "postgres");
    let shown = await page.$$eval(".unit", (els) => els.map((e) => e.dataset.unit));
    check(JSON.stringify(shown) === '["postgres"]', "the filter keeps postgres: " + shown);
    await page.fill("#filter", "");
    await page.selectOption("#f-state", "approval");
    shown = await page.$$eval(".unit", (els) => els.map((e) => e.dataset.state));
    check(shown.length > 0 && shown.every((s) => s === "approval"), "the state filter: " + shown);
    await page.selectOption("#f-state", "");
    // A layer collapses.
    await page.click('.layer[data-layer="os"] h2 .title');
    check(!(await page.isVisible('.layer[data-layer="os"] .unit')), "os collapsed");
    await page.click('.layer[data-layer="os"] h2 .title');
    // Approve in the page: the daemon applies.
    await page.click("#approve");
    await page.waitForSelector('.unit[data-unit="web"][data-state="applied"]', { timeout: 60000 });
    await page.click('.unit[data-unit="web"]');
    await page.waitForSelector('aside dd:has-text("postgres")');
    check(await page.$eval('.unit[data-unit="postgres"]', (e) => e.classList.contains("upstream")), "postgres drawn as web's dependency");
    check((await page.$$("#edges path.up")).length >= 1, "web's dependency edges drawn");
    await shot(page, "graph");
    await keep(page, "graph");
    // Keys: arrows move between units, Enter opens, Escape goes back.
    await page.focus('.unit[data-unit="web"]');
    await page.keyboard.press("ArrowRight");
    const moved = await page.evaluate(() => document.activeElement.dataset.unit);
    check(moved && moved !== "web", "ArrowRight moved to " + moved);
    await page.keyboard.press("ArrowUp");
    const up = await page.evaluate(() => document.activeElement.closest(".layer").dataset.layer);
    check(up !== "apps", "ArrowUp left the apps layer: " + up);
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => location.hash.startsWith("#/unit/"));
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => location.hash === "#/");
    // The unit's page: the secret input is shown as sensitive.
    await page.goto(URL + "#/unit/web");
    await page.waitForSelector('#page td:has-text("db_password")', { timeout: 10000 });
    const row = await page.$eval('#page tr:has(td:text-is("db_password"))', (e) => e.textContent);
    check(row.includes("(sensitive)"), "db_password is sensitive: " + row);
    check(await page.isVisible('#page h3:has-text("Last plan")'), "the last plan");
    check(await page.isVisible('#page .mono'), "the last plan's changes");
    await shot(page, "unit");
    await keep(page, "unit");
    // The action log: who approved, and when.
    await page.goto(URL + "#/actions");
    await page.waitForSelector('#page td:has-text("playwright-test (write token)")', { timeout: 10000 });
    check(await page.isVisible('#page td:text-is("approve")'), "the approval is recorded");
    await keep(page, "actions");
    // A slow run: its log streams while it runs.
    execFileSync("bash", [PUSH]);
    await page.goto(URL + "#/runs");
    const deadline = Date.now() + 30000;
    let running = null;
    while (!running && Date.now() < deadline) {
      await page.waitForTimeout(300);
      await page.evaluate(() => route());
      running = await page.$eval("#page", (p) => {
        const row = [...p.querySelectorAll("tr")].find((r) => r.textContent.includes("running"));
        return row ? row.querySelector("a").getAttribute("href") : null;
      }).catch(() => null);
    }
    check(running, "a running run is listed");
    await page.goto(URL + running);
    await page.waitForFunction(() => (document.getElementById("log") || {}).textContent?.includes("step 1"), null, { timeout: 30000 });
    const live = await page.$eval("#log", (l) => ({ state: l.dataset.state, text: l.textContent }));
    check(live.state === "streaming" && !live.text.includes("step 8"), "seen while it runs: " + JSON.stringify(live));
    let streamed = 0;
    await page.waitForFunction(() => document.getElementById("log").dataset.state === "done", null, { timeout: 60000 });
    const done = await page.$eval("#log", (l) => l.textContent);
    check(done.includes("step 8"), "the whole log: " + done);
    for (let i = 1; i <= 8; i++) if (done.includes("step " + i)) streamed++;
    await shot(page, "run");
    await keep(page, "run");
    // The failing unit and what it blocks.
    await page.goto(URL + "#/");
    await page.waitForSelector('.unit[data-unit="postgres"][data-state="failed"]', { timeout: 30000 });
    await page.waitForSelector('.unit[data-unit="web"].blocked', { timeout: 10000 });
    check(await page.$eval('.unit[data-unit="web"]', (e) => e.dataset.blockedBy) === "postgres", "web is blocked by postgres");
    await page.click('.unit[data-unit="postgres"]');
    check((await page.$$("#edges path.blocks")).length >= 1, "the blocked path is drawn");
    await page.waitForSelector('aside dd:has-text("web")');
    await shot(page, "failing");
    await keep(page, "failing");
    await page.keyboard.press("t");
    const theme = await page.evaluate(() => document.documentElement.dataset.theme);
    check(theme === "dark" || theme === "light", "t switches the theme: " + theme);
    if (theme !== "dark") await page.keyboard.press("t");
    await shot(page, "dark");
    // A phone: nothing wider than the screen.
    const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
    watch(phone);
    await phone.goto(URL);
    await phone.waitForSelector('.unit[data-unit="web"]', { timeout: 30000 });
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 392, "fits a phone: " + width);
    await phone.screenshot({ path: path.join(SHOTS, "dashboard-phone.png") });
    await keep(phone, "phone");
    // Nothing left 127.0.0.1; no secret in any answer or page.
    const foreign = requests.filter((u) => !u.startsWith(origin));
    check(foreign.length === 0, "every request stays on the daemon: " + foreign);
    for (const s of SECRETS) {
      for (const [url, body] of bodies) {
        const at = body.indexOf(s);
        // Where it is, the value itself masked.
        check(at < 0, "a secret in " + url + ": …" + body.slice(Math.max(0, at - 300), at).replace(s, "<secret>") + "<secret>…");
      }
      for (const [name, html] of pages) check(!html.includes(s), "a secret in the " + name + " page");
    }
    console.log(JSON.stringify({ ok: true, asked, requests: requests.length, bodies: bodies.length, units: drawn, streamed }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(String((e && e.stack) || e));
  process.exit(1);
});
