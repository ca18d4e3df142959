/**
 * The browser tests' Chromium: Debian's `chromium` driven by playwright-core (no browser
 * download), and what a page did while a test looked at it — dialogs, console and page errors,
 * requests, responses and loads — for the tests' "nothing of the data ran" assertions.
 */
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
}

export interface PageWatch {
  /** Messages of dialogs the page opened (each dismissed). */
  dialogs: string[];
  /** Console errors and uncaught page errors. */
  errors: string[];
  /** Paths requested. */
  requests: string[];
  /** Every response: status and path. */
  responses: { status: number; path: string; url: string }[];
  /** How often the page (re)loaded. */
  readonly loads: number;
}

export function watchPage(page: Page): PageWatch {
  let loads = 0;
  const w = {
    dialogs: [] as string[],
    errors: [] as string[],
    requests: [] as string[],
    responses: [] as { status: number; path: string; url: string }[],
    get loads() {
      return loads;
    },
  };
  page.on('dialog', (d) => {
    w.dialogs.push(d.message());
    void d.dismiss();
  });
  page.on('console', (m) => {
    if (m.type() === 'error') w.errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => w.errors.push(`page error: ${e.message}`));
  page.on('response', (r) => w.responses.push({ status: r.status(), path: new URL(r.url()).pathname, url: r.url() }));
  page.on('request', (r) => w.requests.push(new URL(r.url()).pathname));
  page.on('load', () => loads++);
  return w;
}
