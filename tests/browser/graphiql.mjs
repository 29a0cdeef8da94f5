// Usage: node graphiql.mjs <base_url>
// Loads GraphiQL at <base_url>/graphql, runs its default query, and prints
// {"result": "...", "foreign": [...requests to other hosts]}.
import { chromium } from 'playwright-core';

const [base] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(base)) foreign.push(r.url()); });
  await page.goto(`${base}/graphql`);
  await page.waitForSelector('.graphiql-container', { timeout: 30000 });
  await page.locator('.graphiql-execute-button').click();
  const result = page.locator('.result-window');
  await page.waitForFunction(() => {
    const el = document.querySelector('.result-window');
    return el && el.textContent.includes('"data"');
  }, null, { timeout: 30000 });
  console.log(JSON.stringify({ result: await result.textContent(), foreign }));
} finally {
  await browser.close();
}
