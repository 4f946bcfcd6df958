// Drives headless Chromium for the Python tests: one JSON request per stdin line, one JSON answer
// per stdout line. Requests: {id, op, page?, ...}; answers: {id, ok: value} or {id, error: text}.
// Pages are numbered; each page's console messages and uncaught errors are kept so a failing
// test can show them.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
// --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
const pages = new Map();
let nextPage = 1;

function pageOf(request) {
  const entry = pages.get(request.page);
  if (!entry) throw new Error(`no page ${request.page}`);
  return entry;
}

const call = ({ script, arg }) => `(${script})(${JSON.stringify(arg ?? null)})`;

const ops = {
  // Each page gets a browser context (profile) of its own, or, with `sameContextAs`, shares that
  // page's: its storage and cookies, as two tabs of one browser do.
  async open({ url, width = 1280, height = 800, colorScheme = "light", sameContextAs = null }) {
    const context =
      sameContextAs === null
        ? await browser.newContext({ viewport: { width, height }, colorScheme })
        : pageOf({ page: sameContextAs }).context;
    const page = await context.newPage();
    page.setDefaultTimeout(10000);
    const id = nextPage++;
    const entry = { page, context, log: [] };
    page.on("console", (msg) => entry.log.push(`${msg.type()}: ${msg.text()}`));
    page.on("pageerror", (err) => entry.log.push(`pageerror: ${err.stack || err}`));
    pages.set(id, entry);
    if (url) await page.goto(url);
    return id;
  },
  async goto(request) {
    await pageOf(request).page.goto(request.url);
    return null;
  },
  // `script` is a function expression, called with `arg`; its (awaited) result is returned.
  // It is sent as an expression string: Playwright evaluates that through the DevTools protocol,
  // so the pages' Content-Security-Policy (no eval) stays in force for the pages themselves.
  async evaluate(request) {
    return await pageOf(request).page.evaluate(call(request));
  },
  // Polls from here rather than with waitForFunction, whose in-page polling needs eval (CSP).
  async wait(request) {
    const { page } = pageOf(request);
    const deadline = Date.now() + (request.timeout ?? 10000);
    let last;
    for (;;) {
      last = await page.evaluate(call(request));
      if (last) return last;
      if (Date.now() > deadline) throw new Error(`timed out after ${request.timeout ?? 10000} ms waiting for ${request.script} (last: ${JSON.stringify(last)})`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  },
  async fill(request) {
    await pageOf(request).page.fill(request.selector, request.value);
    return null;
  },
  async click(request) {
    await pageOf(request).page.click(request.selector);
    return null;
  },
  async press(request) {
    await pageOf(request).page.press(request.selector, request.key);
    return null;
  },
  async screenshot(request) {
    await pageOf(request).page.screenshot({ path: request.path, fullPage: request.fullPage ?? false });
    return request.path;
  },
  async log(request) {
    return pageOf(request).log;
  },
  async close(request) {
    const entry = pageOf(request);
    pages.delete(request.page);
    const shared = [...pages.values()].some((other) => other.context === entry.context);
    if (shared) await entry.page.close();
    else await entry.context.close();
    return null;
  },
};

const out = (message) => process.stdout.write(JSON.stringify(message) + "\n");
out({ ready: browser.version() });

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    out({ id: null, error: `not JSON: ${line.slice(0, 200)}` });
    return;
  }
  const op = ops[request.op];
  try {
    if (!op) throw new Error(`unknown op ${request.op}`);
    out({ id: request.id, ok: (await op(request)) ?? null });
  } catch (error) {
    out({ id: request.id, error: String(error && error.stack ? error.stack : error) });
  }
});
lines.on("close", async () => {
  await browser.close();
  process.exit(0);
});
