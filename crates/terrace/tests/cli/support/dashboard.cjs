// Drives terrace serve's dashboard in a real Chromium (playwright-core),
// at a phone's size: the layers in order, each unit's state, the filter,
// a unit's detail, and approval through the page (tokens asked for in
// prompts). Prints one JSON line; exits non-zero on the first failure.
//   PLAYWRIGHT=<path to playwright-core> CHROMIUM=/usr/bin/chromium \
//   URL=http://127.0.0.1:PORT/ READ=<token> WRITE=<token> node dashboard.cjs
const { chromium } = require(process.env.PLAYWRIGHT);
const { URL, READ, WRITE, CHROMIUM } = process.env;

function check(ok, what) {
  if (!ok) throw new Error(what);
}

(async () => {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
    const asked = [];
    page.on("dialog", async (d) => {
      asked.push(d.message());
      await d.accept(d.message().startsWith("Write") ? WRITE : READ);
    });
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    await page.goto(URL);
    await page.waitForSelector('.layer[data-layer="base"] .unit[data-unit="a"][data-state="applied"]', { timeout: 20000 });
    await page.waitForSelector('.layer[data-layer="apps"] .unit[data-unit="b"][data-state="approval"]', { timeout: 20000 });
    const order = await page.$$eval(".layer", (els) => els.map((e) => e.dataset.layer));
    check(JSON.stringify(order) === JSON.stringify(["base", "apps"]), "layers in order: " + order);
    check(await page.isVisible("#approval"), "the approval banner shows");
    await page.fill("#filter", "approval");
    const shown = await page.$$eval(".unit", (els) => els.map((e) => e.dataset.unit));
    check(JSON.stringify(shown) === '["b"]', "the filter keeps b only: " + shown);
    await page.fill("#filter", "");
    await page.click('.unit[data-unit="b"]');
    await page.waitForSelector('aside dd:has-text("waiting for approval")', { timeout: 10000 });
    // Its dependency is drawn as such, and named.
    check(await page.$eval('.unit[data-unit="a"]', (e) => e.classList.contains("upstream")), "a is marked as b's dependency");
    await page.waitForSelector('aside dd:has-text("a")', { timeout: 10000 });
    await page.click("#approve");
    await page.waitForSelector('.unit[data-unit="b"][data-state="applied"]', { timeout: 30000 });
    const origin = new globalThis.URL(URL).origin;
    const foreign = requests.filter((u) => !u.startsWith(origin));
    check(foreign.length === 0, "every request stays on the daemon: " + foreign);
    console.log(JSON.stringify({ ok: true, asked, requests: requests.length }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
