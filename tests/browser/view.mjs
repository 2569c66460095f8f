// Loads the live tag-validation page in headless Chromium, waits for it to
// go live, tells the Rust test (stdout "READY n") to send events, waits
// until at least 5 new ones appear in the live list, takes a screenshot,
// and prints "OK <count> bars=<n>".
//   node tests/browser/view.mjs URL SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url);
  await page.waitForFunction(() => /^live/.test(document.getElementById("status").textContent), null, { timeout: 15000 });
  const count = async () => Number((await page.textContent("#count")).replace(/\D/g, "")) || 0;
  const before = await count();
  console.log(`READY ${before}`);
  await page.waitForFunction((b) => Number(document.getElementById("count").textContent.replace(/\D/g, "")) >= b + 5, before, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll("#types rect").length > 0, null, { timeout: 10000 });
  await page.screenshot({ path: shot });
  const bars = await page.$$eval("#types rect", (r) => r.length);
  console.log(`OK ${await count()} bars=${bars}`);
} finally {
  await browser.close();
}
