/**
 * Following one build to its end: its event stream (log pieces, job and build states), with the
 * build record polled alongside, because the stream alone is not always enough:
 * - the stream's `build finished` event comes a moment before the record says so (the executor
 *   publishes it, then the scheduler stores the result), so the final record is waited for;
 * - a build that ends by cancellation or an infrastructure error, or is queued again for another
 *   attempt, may leave the stream open with only heartbeats: when the record says finished, the
 *   stream is closed after a short grace; when it says a new attempt began, it is opened again
 *   (the server sends each attempt from its start).
 */
import { CancelledError, InternalError } from '#shared/errors.js';
import type { BuildEvent, BuildView } from '#shared/schemas/api/builds.js';
import type { CiClient } from './ci-client.js';

const POLL_MS = 1000;
/** After the record says finished, how long the stream may still deliver its last events. */
const GRACE_MS = 1500;
/** After the stream ended, how long the record may take to say finished. */
const SETTLE_MS = 10_000;

/** Calls `onEvent` for each event until the build is finished, then answers its final record; at once for a finished build. */
export async function followBuild(client: CiClient, id: number, onEvent: (e: BuildEvent) => void): Promise<BuildView> {
  for (;;) {
    const at = await client.build(id);
    // Already over: the stored logs tell the rest (and a stream would only replay them).
    if (at.state === 'finished') return at;
    const ac = new AbortController();
    let restarted = false;
    let runningAttempt = at.state === 'running' ? at.attempt : undefined;
    const stop = new AbortController();
    const watch = (async () => {
      while (!stop.signal.aborted && !ac.signal.aborted) {
        await sleep(POLL_MS, stop.signal);
        if (stop.signal.aborted) return;
        const b = await client.build(id).catch(() => undefined);
        if (!b) continue;
        if (b.state === 'running') runningAttempt ??= b.attempt;
        if (runningAttempt !== undefined && (b.attempt > runningAttempt || b.state === 'queued')) {
          restarted = true;
          ac.abort();
        } else if (b.state === 'finished') {
          await sleep(GRACE_MS, stop.signal);
          ac.abort();
        }
      }
    })();
    try {
      for await (const e of client.events(id, ac.signal)) onEvent(e);
    } catch (e) {
      if (!(e instanceof CancelledError && ac.signal.aborted)) throw e;
    } finally {
      stop.abort();
      ac.abort();
      await watch;
    }
    if (restarted) continue;
    return waitFinished(client, id);
  }
}

async function waitFinished(client: CiClient, id: number): Promise<BuildView> {
  const end = Date.now() + SETTLE_MS;
  for (;;) {
    const b = await client.build(id);
    if (b.state === 'finished') return b;
    if (Date.now() > end) throw new InternalError(`build #${id} is still ${b.state} after its event stream ended (is the CI shutting down?)`);
    await sleep(200);
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
