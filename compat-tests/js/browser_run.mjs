// Runs browser/page.mjs (matrix-js-sdk in a web page) in headless Chromium
// and reports what the page showed. Driven by compat-tests/test_browser.py.
//
// Input, one JSON object on stdin:
//   workdir      an empty temporary directory: the bundle, the page and
//                Chromium's profile go there
//   screenshot   where to write the PNG of the page at the end
//   timeout_ms   the bound on the page's whole run (login to done)
//   page         the page's own config (see browser/page.mjs): homeserver,
//                user, password, room_id, expect, send_body
//
// Steps: bundle page.mjs for the browser with esbuild; serve it from a small
// static server on a free 127.0.0.1 port — another origin than the
// homeserver's, so every Matrix request is cross-origin and needs CORS;
// start Debian's Chromium (never a downloaded one) through playwright-core
// with a fresh profile; open the page and wait until it says done or error,
// or the timeout passes.
//
// Output, one JSON object on stdout:
//   origin       the page's origin
//   state        #status's data-state at the end ("timeout" if none came)
//   status       #status's text (what went wrong, on error)
//   messages     [{event_id, sender, body, pending}] as #messages shows them
//   sent         the sent message's event ID (#sent), or null
//   console      the page's console lines and errors
//   failed       requests that failed in the browser (a CORS refusal shows
//                here as net::ERR_FAILED), with their method and URL
//   screenshot   the PNG's path

import { mkdir, readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

// The packages are where compat-tests/run installed them (COMPAT_JS_NODE_MODULES),
// or beside this file after a plain `npm ci` here; see sync_collect.mjs.
const here = path.dirname(fileURLToPath(import.meta.url));
const nodeModules = process.env.COMPAT_JS_NODE_MODULES || path.join(here, "node_modules");
const esbuild = await import(pathToFileURL(path.join(nodeModules, "esbuild/lib/main.js")));
const { chromium } = await import(pathToFileURL(path.join(nodeModules, "playwright-core/index.mjs")));

const CHROMIUM = process.env.COMPAT_CHROMIUM || "/usr/bin/chromium";
// Bounds of the steps around the page's own run.
const LAUNCH_TIMEOUT_MS = 60_000;
const GOTO_TIMEOUT_MS = 30_000;

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const config = JSON.parse(Buffer.concat(chunks).toString());

// 1. The bundle: matrix-js-sdk and the page script in one ES module.
const site = path.join(config.workdir, "site");
await mkdir(site, { recursive: true });
await esbuild.build({
    entryPoints: [path.join(here, "browser", "page.mjs")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    outfile: path.join(site, "page.js"),
    nodePaths: [nodeModules],
    logLevel: "warning",
});
await writeFile(
    path.join(site, "index.html"),
    `<!doctype html>
<html><head><meta charset="utf-8"><title>hungryserv browser test</title>
<style>body{font:14px sans-serif;margin:1em}li[data-pending=true]{color:#888}#status{font-weight:bold}</style>
</head><body>
<h1>matrix-js-sdk in Chromium</h1>
<p id="status" data-state="loading">loading</p>
<h2 id="room"></h2>
<ol id="messages"></ol>
<p id="sent"></p>
<script type="module" src="page.js"></script>
</body></html>
`,
);

// 2. The page's origin: a static server on a free port.
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".map": "application/json" };
const server = http.createServer(async (req, res) => {
    const name = path.normalize(new URL(req.url, "http://x").pathname).replace(/^\/+/, "") || "index.html";
    try {
        const body = await readFile(path.join(site, name));
        res.writeHead(200, { "content-type": types[path.extname(name)] ?? "application/octet-stream" });
        res.end(body);
    } catch {
        res.writeHead(404).end();
    }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

// 3. Chromium, headless, with a profile of its own.
const context = await chromium.launchPersistentContext(path.join(config.workdir, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    timeout: LAUNCH_TIMEOUT_MS,
    viewport: { width: 1000, height: 700 },
    args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ],
});
const result = { origin, console: [], failed: [], screenshot: config.screenshot };
try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (msg) => result.console.push(`${msg.type()}: ${msg.text()}`));
    page.on("pageerror", (err) => result.console.push(`pageerror: ${err.message}`));
    page.on("requestfailed", (req) =>
        result.failed.push(`${req.method()} ${req.url()}: ${req.failure()?.errorText}`),
    );
    const url = `${origin}/index.html?config=${encodeURIComponent(JSON.stringify(config.page))}`;
    await page.goto(url, { timeout: GOTO_TIMEOUT_MS });
    try {
        await page.waitForSelector("#status[data-state=done], #status[data-state=error]", {
            timeout: config.timeout_ms,
        });
    } catch {
        result.timed_out = true;
    }
    Object.assign(
        result,
        await page.evaluate(() => ({
            state: document.getElementById("status").dataset.state,
            status: document.getElementById("status").textContent,
            messages: [...document.querySelectorAll("#messages > li")].map((li) => ({
                event_id: li.dataset.eventId,
                sender: li.dataset.sender,
                body: li.querySelector(".body").textContent,
                pending: li.dataset.pending === "true",
            })),
            sent: document.getElementById("sent").dataset.eventId ?? null,
        })),
    );
    if (result.timed_out) result.state = "timeout";
    await mkdir(path.dirname(config.screenshot), { recursive: true });
    await page.screenshot({ path: config.screenshot, fullPage: true });
} finally {
    await context.close();
    server.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
