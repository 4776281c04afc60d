// Opens the balancer page in Debian's headless Chromium (driven by npm's
// playwright-core, which brings no browser of its own) and prints what the
// page shows once rendered, as JSON, for t/32_balancer_page.t:
//   node t/page/page.mjs URL SCREENSHOT.png
// Every request the page makes is recorded: a self-contained page makes
// none but its own.
import { chromium } from 'playwright-core';

const [url, shot] = process.argv.slice(2);
const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // root in CI: Chromium's sandbox needs user namespaces it may not have
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    timeout: 60000,
});
try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 700 } });
    const requests = [];
    const problems = [];
    page.on('request', (req) => requests.push(req.url()));
    page.on('console', (msg) => { if (msg.type() === 'error') problems.push(msg.text()); });
    page.on('pageerror', (err) => problems.push(String(err)));
    const response = await page.goto(url, { waitUntil: 'load', timeout: 30000 });

    const rows = () => page.$$eval('tr.member', (trs) => trs.map((tr) => ({
        route: tr.dataset.route,
        state: tr.querySelector('.state').textContent,
        stateColor: getComputedStyle(tr.querySelector('.state')).backgroundColor,
        countdown: tr.querySelector('.countdown')?.textContent ?? null,
        why: tr.querySelector('.why').textContent,
        bars: [...tr.querySelectorAll('.bar span')].map((s) => s.style.width),
        charts: [...tr.querySelectorAll('svg.chart')].map((svg) => ({
            kind: svg.classList[1],
            total: Number(svg.dataset.total),
            bars: svg.querySelectorAll('rect').length,
            title: svg.querySelector('title').textContent,
        })),
    })));
    const first = await rows();
    await page.waitForTimeout(1500);
    const later = await rows();
    await page.screenshot({ path: shot, fullPage: true });
    const result = {
        status: response.status(),
        title: await page.title(),
        heading: await page.textContent('h1'),
        manager: await page.getAttribute('#manager', 'href'),
        keys: await page.$$eval('table.keys tr', (trs) => trs.slice(1).map(
            (tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent))),
        first, later, requests, problems,
    };
    console.log(JSON.stringify(result));
} finally {
    await browser.close();
}
