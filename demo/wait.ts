/**
 * Polling with a deadline and the demo's stop signal: `until` calls `probe` every `everyMs` until
 * it returns a value, and throws (naming what it waited for) at the deadline or when `signal` aborts.
 */
export interface WaitOptions {
  signal: AbortSignal;
  timeoutMs: number;
  everyMs?: number;
}

export class Interrupted extends Error {
  constructor() {
    super('interrupted');
  }
}

export async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, o: WaitOptions): Promise<T> {
  const end = Date.now() + o.timeoutMs;
  for (;;) {
    if (o.signal.aborted) throw new Interrupted();
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`gave up after ${Math.round(o.timeoutMs / 1000)} s waiting for ${what}`);
    await sleep(o.everyMs ?? 200, o.signal);
  }
}

export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
