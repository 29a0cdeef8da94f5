// Usage: node swagger.mjs <base_url> [screenshot.png]
// Prints {"paths": [...], "status": "200", "body": "..."} after clicking through
// GET /health → Try it out → Execute in Swagger UI at <base_url>/docs.
import { chromium } from 'playwright-core';

const [base, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 2000 } });
  await page.goto(`${base}/docs`);
  await page.waitForSelector('.opblock', { timeout: 30000 });
  const paths = await page.$$eval('.opblock-summary-path', (els) =>
    els.map((e) => `${e.closest('.opblock').querySelector('.opblock-summary-method').textContent} ${e.getAttribute('data-path')}`));
  const health = page.locator('.opblock').filter({ has: page.locator('[data-path="/health"]') }).first();
  await health.locator('.opblock-summary').click();
  await health.locator('button.try-out__btn').click();
  await health.locator('button.execute').click();
  const status = health.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor({ timeout: 30000 });
  const body = await health.locator('.live-responses-table .response-col_description pre').first().textContent();
  if (shot) await page.screenshot({ path: shot, fullPage: false });
  console.log(JSON.stringify({ paths, status: (await status.textContent()).trim(), body }));
} finally {
  await browser.close();
}
