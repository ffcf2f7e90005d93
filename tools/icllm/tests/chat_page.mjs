// The chat page of `icllm serve` in headless Chromium (puppeteer-core):
// type a message, see the reply stream in (several updates), read its
// costs, stop a long reply, and save screenshots at desktop and phone
// widths. Run by tools/icllm/tests/serve.rs with ICLLM_URL (the server),
// CHROMIUM (the browser), PUPPETEER (puppeteer-core's directory) and
// SHOTS (where the screenshots go). Throws on any failed check.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const puppeteer = require(process.env.PUPPETEER);
const url = process.env.ICLLM_URL;
const shots = process.env.SHOTS;

function check(name, cond, detail = "") {
  if (!cond) throw new Error(`${name}: ${detail}`);
  console.log(`ok: ${name}`);
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("#health.ok", { timeout: 30000 });
  const health = await page.$eval("#health-text", (e) => e.textContent);
  check("health line names the model", health.includes("llama") && health.includes("ready"), health);

  // A greedy reply, counted as it streams in.
  await page.$eval("#temperature", (e) => (e.value = "0"));
  await page.$eval("#max-tokens", (e) => (e.value = "10"));
  await page.evaluate(() => {
    window.updates = 0;
    new MutationObserver(() => window.updates++).observe(document.getElementById("log"), {
      subtree: true, childList: true, characterData: true,
    });
  });
  await page.type("#input", "Joe loves writing");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".msg.assistant .stats", { timeout: 60000 });
  const reply = await page.$eval(".msg.assistant .text", (e) => e.textContent);
  check("the reply is the golden text", reply === ". He liked to play with his toy", JSON.stringify(reply));
  const updates = await page.evaluate(() => window.updates);
  check("the reply arrived in several updates", updates >= 3, updates);
  const stats = await page.$eval(".msg.assistant .stats", (e) => e.textContent);
  check("the reply shows its costs", /10 tokens · \d+ messages · [\d,]+ instructions · [\d,]+ cycles/.test(stats), stats);
  await page.screenshot({ path: path.join(shots, "chat-desktop.png") });

  // A long reply, stopped after its first text.
  await page.$eval("#temperature", (e) => (e.value = "1"));
  await page.$eval("#max-tokens", (e) => (e.value = "400"));
  // Clicked from inside the page as soon as the reply's bubble appears:
  // a few tokens into a reply of hundreds.
  await page.evaluate(() => {
    new MutationObserver((_, observer) => {
      if (document.querySelectorAll(".msg.assistant").length === 2) {
        observer.disconnect();
        document.getElementById("stop").click();
      }
    }).observe(document.getElementById("log"), { childList: true });
  });
  await page.type("#input", "Once upon a time");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#send:not([hidden])", { timeout: 30000 });
  const stopped = await page.$$eval(".msg.assistant", (all) => all[1].textContent);
  check("a stopped reply says so", stopped.includes("stopped"), stopped);
  let active = -1;
  for (let i = 0; i < 100 && active !== 0; i++) {
    active = (await (await fetch(new URL("/health", url))).json()).active_jobs;
    if (active !== 0) await new Promise((r) => setTimeout(r, 100));
  }
  check("stopping cancelled the job", active === 0, active);

  // Phone width.
  await page.setViewport({ width: 390, height: 844, isMobile: true, deviceScaleFactor: 2 });
  await page.screenshot({ path: path.join(shots, "chat-phone.png") });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  check("nothing overflows a phone's width", !overflow);
  console.log("all page checks passed");
} finally {
  await browser.close();
}
