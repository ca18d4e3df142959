/**
 * What a follower replica forwards to the leader (leadership.ts): every request that changes
 * something (a submission, a cancel, a webhook) and every read of what only the leader holds in
 * memory (the gate's queues, the status page's data, live event streams and logs, the queue's
 * slots). A follower answers the rest from the database: builds, changes, the gate's outbox, the
 * page's files, metrics and health.
 *
 * The request goes as it came — method, path and query, the body's bytes (a webhook's signature is
 * over them), the headers that matter — and the leader's answer comes back as it is, streamed
 * (server-sent events pass through). No leader, or one that does not answer: 503 with Retry-After,
 * which the review system's webhook retries and a client understands. A request that was already
 * forwarded once is never forwarded again (two replicas that each think the other leads do not
 * bounce it).
 *
 * A forwarded request stays open only while the replica it went to leads: while any is open, the
 * lease is read again every `recheckMs`, and a request whose leader no longer holds it (another
 * replica took over, this one leads now, or the lease ran out) is ended. Before the leader's
 * answer began that is a 503, after it the answer is cut. A leader that stopped answering without
 * closing its connections (a machine cut off, a stopped process) would otherwise hold a long poll
 * (an executor host's claim) or an event stream until the client gives up, long after another
 * replica took over.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { InvalidInputError, NoLeaderError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import { toWire } from '#shared/http/wire.js';
import { WEBHOOK_SIGNATURE_HEADER } from '../sources/gerrit/verify.js';

export interface Forwarding {
  /** Whether this replica leads now (then nothing is forwarded). */
  isLeader(): boolean;
  /** The leader's base URL, if some replica leads. */
  leader(): Promise<string | undefined>;
  logger: Logger;
  /**
   * This replica's own token check (api/app.ts), made before a submission or a cancel is forwarded:
   * a replica that listens beyond loopback has its tokens (config.ts), the leader it forwards to
   * may have none (it may listen on loopback only, where that is allowed).
   */
  requireToken?: (authorization: string | undefined, action?: 'submit' | 'cancel') => void;
  /**
   * This replica's check of an executor host's token (api/routes/executors.ts), made before an
   * `/api/executor/…` request is forwarded: without it anyone could have a follower stream a body
   * to the leader.
   */
  requireExecutorToken?: (authorization: string | undefined) => void;
  /** How often the lease is read again while forwarded requests are open (default 1 s; the service gives a third of the lease). */
  recheckMs?: number;
  /** An executor host's artifacts upload (its token checked): let past the request timeout, to its own deadline (api/app.ts). */
  allowSlowUpload?: (req: FastifyRequest) => void;
}

/** Why a forwarded request was ended: the replica it went to no longer leads. */
class LeaderChanged extends Error {}

/** The forwarded requests that are open, each with the leader (origin) it went to. */
interface Open {
  origin: string;
  abort: AbortController;
}

const FORWARDED = 'x-airlock-forwarded';
/** Headers passed on, both ways; hop-by-hop ones and the host are not. */
const REQUEST_HEADERS = ['authorization', 'content-type', 'accept', 'last-event-id', WEBHOOK_SIGNATURE_HEADER, 'x-gerrit-event-signature', 'x-hub-signature-256', 'x-request-id', 'user-agent'];
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer', 'content-length']);

/** Paths a follower answers itself (GET): what the database holds. */
const LOCAL_GET = [/^\/api\/builds\/?$/, /^\/api\/builds\/[^/]+\/?$/, /^\/api\/changes(\/[^/]+)?\/?$/, /^\/api\/gate\/events\/?$/, /^\/healthz$/, /^\/metrics$/, /^\/openapi\.json$/];

const WARN_EVERY_MS = 10_000;
let lastWarned = 0;

export function isLocal(method: string, path: string): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  if (!path.startsWith('/api/') && !path.startsWith('/hooks/')) return true; // the page's files
  return LOCAL_GET.some((r) => r.test(path));
}

/**
 * The path as the leader will be asked for it: what the URL parser makes of it when the forwarded
 * URL is built (dot segments resolved, `\\` read as `/`), then percent-decoded (not `/`), leading
 * slashes as one (stricter than the leader's router, which takes `//api/…` for no route).
 */
function routed(path: string): string {
  let p = path;
  try {
    p = new URL(`http://leader${path.startsWith('/') ? '' : '/'}${path}`).pathname;
    p = decodeURI(`/${p.replace(/^\/+/, '')}`);
  } catch {
    // left as parsed: the router answers 400 or 404
  }
  return p;
}

/** Which token a request needs (the routes that call requireToken in api/routes/). */
export function tokenAction(method: string, path: string): 'submit' | 'cancel' | undefined {
  if (method !== 'POST') return undefined;
  const p = routed(path);
  if (/^\/api\/changes\/?$/i.test(p)) return 'submit';
  if (/^\/api\/builds\/[^/]+\/cancel\/?$/i.test(p)) return 'cancel';
  return undefined;
}

/** Whether a request is an executor host's (`/api/executor/…`, api/routes/executors.ts), as the leader will route it. */
export function isExecutorPath(path: string): boolean {
  return /^\/api\/executor\//i.test(routed(path));
}

export function registerForwarding(app: FastifyInstance, f: Forwarding): void {
  const open = new Set<Open>();
  let timer: NodeJS.Timeout | undefined;
  let checking = false;
  const recheck = async (): Promise<void> => {
    if (checking) return;
    checking = true;
    try {
      let now: string | undefined;
      if (!f.isLeader()) {
        try {
          const base = await f.leader();
          now = base ? new URL(base).origin : undefined;
        } catch {
          return; // the lease cannot be read now: nothing is known to have changed
        }
      }
      for (const o of open) {
        if (o.origin === now) continue;
        open.delete(o);
        o.abort.abort(new LeaderChanged(`the replica ${o.origin} no longer leads`));
      }
    } finally {
      checking = false;
    }
  };
  const watch = (o: Open): (() => void) => {
    open.add(o);
    timer ??= setInterval(() => void recheck(), Math.max(50, f.recheckMs ?? 1000)).unref();
    return () => {
      open.delete(o);
      if (open.size === 0 && timer) {
        clearInterval(timer);
        timer = undefined;
      }
    };
  };
  app.addHook('onClose', async () => {
    if (timer) clearInterval(timer);
    timer = undefined;
  });
  app.addHook('onRequest', async (req, reply) => {
    if (f.isLeader()) return;
    const path = req.url.split('?')[0] ?? '/';
    if (isLocal(req.method, path)) return;
    const action = tokenAction(req.method, path);
    if (action && f.requireToken) f.requireToken(req.headers.authorization, action);
    if (f.requireExecutorToken && isExecutorPath(path)) {
      f.requireExecutorToken(req.headers.authorization);
      if (req.method === 'PUT' && /^\/api\/executor\/runs\/[^/]+\/artifacts\/?$/i.test(routed(path))) f.allowSlowUpload?.(req);
    }
    return forward(req, reply, f, watch);
  });
}

async function forward(req: FastifyRequest, reply: FastifyReply, f: Forwarding, watch: (o: Open) => () => void): Promise<FastifyReply> {
  const unavailable = (message: string): FastifyReply =>
    reply.status(503).header('retry-after', '2').send(toWire(new NoLeaderError(message)));
  if (req.headers[FORWARDED]) return unavailable('this replica does not lead, and the request was forwarded to it as if it did; try again shortly');
  // Only an origin-form target (`/path?query`) is forwarded, and only to the leader's origin: a
  // request line of `http://elsewhere/…` or `//elsewhere/…`, resolved against the leader's URL,
  // would name another host, and the follower would send the body (and its credentials) there.
  if (!req.url.startsWith('/'))
    return reply.status(400).send(toWire(new InvalidInputError([{ file: 'request', path: '', message: 'the request target must be a path (/…)', severity: 'error' }])));
  const base = await f.leader().catch(() => undefined);
  if (!base) return unavailable('no replica leads at the moment (one takes over within seconds); try again shortly');
  let target: URL;
  let origin: string;
  try {
    origin = new URL(base).origin;
    target = new URL(`${origin}${req.url}`);
    if (target.origin !== origin) throw new Error(`the target ${target.origin} is not the leader's ${origin}`);
  } catch (err) {
    f.logger.warn({ err: (err as Error).message, leader: base }, 'a request could not be forwarded to the leader');
    return unavailable('the leading replica cannot be reached from here; try again shortly');
  }
  const headers: Record<string, string> = { [FORWARDED]: '1' };
  for (const h of REQUEST_HEADERS) {
    const v = req.headers[h];
    if (typeof v === 'string') headers[h] = v;
  }
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  // The client went away before the answer was sent, or the leader no longer leads: stop asking it.
  const abort = new AbortController();
  const unwatch = watch({ origin, abort });
  reply.raw.once('close', () => {
    unwatch();
    if (!reply.raw.writableFinished) abort.abort();
  });
  let res: Response;
  try {
    res = await fetch(target, {
      method: req.method,
      headers,
      ...(hasBody ? { body: Readable.toWeb(req.raw) as ReadableStream<Uint8Array>, duplex: 'half' } : {}),
      redirect: 'manual',
      signal: abort.signal,
    } as RequestInit);
  } catch (err) {
    if (abort.signal.reason instanceof LeaderChanged) return unavailable('the replica this request was forwarded to no longer leads; try again shortly');
    if (Date.now() - lastWarned > WARN_EVERY_MS) {
      lastWarned = Date.now();
      f.logger.warn({ err: (err as Error).message, leader: base, path: req.url.split('?')[0] }, 'the leader did not answer a forwarded request (said once per 10 s)');
    }
    return unavailable('the leading replica does not answer; try again shortly');
  }
  reply.status(res.status);
  res.headers.forEach((v, k) => {
    if (!HOP_BY_HOP.has(k)) void reply.header(k, v);
  });
  return reply.send(res.body ? Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>) : '');
}
