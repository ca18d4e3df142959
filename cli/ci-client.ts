/**
 * The CLI's client of the untrusted CI's HTTP API (Node's global fetch). Every answer is parsed
 * with the same zod schemas the server answers with (shared/schemas/api/builds.ts), so a value
 * past this file is typed, never `unknown`.
 *
 * Errors are AirlockErrors, so the CLI's `exitCodeFor` maps them: an error answer keeps the
 * server's code where it is one this airlock knows (404 → NotFoundError, exit 2), others become
 * InvalidInputError (4xx) or InternalError (5xx), their message naming the server's code. A server
 * that cannot be reached, or answers what does not parse, is an InternalError (exit 3).
 */
import { GateView } from '../untrusted-ci/api/schemas/gate.js';
import { z } from 'zod';
import {
  CancelledError,
  ConflictError,
  InternalError,
  InvalidInputError,
  NotFoundError,
  PayloadTooLargeError,
  PolicyViolationError,
  NoLeaderError,
  RateLimitedError,
  StorageFailedError,
  UnauthorizedError,
  type AirlockError,
  type Issue,
} from '#shared/errors.js';
import { BuildEvent, BuildView, ChangeLookup, QueueView, SubmitAnswer, type BuildState, type SubmitChange } from '#shared/schemas/api/builds.js';
import { parseSse } from './sse.js';

/** Deadline of one plain request (not of an event stream, which lasts as long as its build). */
const REQUEST_TIMEOUT_MS = 30_000; // 30 s

const WireErrorBody = z.object({ code: z.string(), message: z.string() });

export interface CiClientOptions {
  /** Base URL, e.g. http://127.0.0.1:8080 (checked by `parseServerUrl`). */
  server: URL;
  /** Sent as `Authorization: Bearer …` when given. */
  token?: string;
}

/** `--server`'s value as a URL, or InvalidInputError. */
export function parseServerUrl(value: string): URL {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new InvalidInputError([{ file: 'command line', path: 'server', message: `${JSON.stringify(value)} is not an http:// or https:// URL`, severity: 'error' }]);
  }
  return url;
}

export class CiClient {
  constructor(private readonly opts: CiClientOptions) {}

  get server(): string {
    return this.opts.server.href.replace(/\/$/, '');
  }

  submit(change: SubmitChange): Promise<SubmitAnswer> {
    return this.json('POST', '/api/changes', SubmitAnswer, change);
  }


  gate(): Promise<GateView> {
    return this.json('GET', '/api/gate', GateView);
  }

  build(id: number): Promise<BuildView> {
    return this.json('GET', `/api/builds/${id}`, BuildView);
  }

  async builds(q: { project?: string; state?: BuildState; limit?: number } = {}): Promise<BuildView[]> {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
    const query = params.size > 0 ? `?${params}` : '';
    return (await this.json('GET', `/api/builds${query}`, z.object({ builds: z.array(BuildView) }))).builds;
  }

  /** A change by its review-system id (`GET /api/changes?change=`): the projects that have it, its patch sets and their latest builds. */
  lookupChange(q: { change: string; project?: string; patchset?: number }): Promise<ChangeLookup> {
    const params = new URLSearchParams({ change: q.change });
    if (q.project !== undefined) params.set('project', q.project);
    if (q.patchset !== undefined) params.set('patchset', String(q.patchset));
    return this.json('GET', `/api/changes?${params}`, ChangeLookup);
  }

  queue(): Promise<QueueView> {
    return this.json('GET', '/api/queue', QueueView);
  }

  /** One job's whole log as text. */
  async log(id: number, job: string): Promise<string> {
    return (await this.request('GET', `/api/builds/${id}/logs/${encodeURIComponent(job)}`)).text();
  }

  /**
   * The build's events from its start, then live ones, until the server's `end`. Ends early when
   * `signal` aborts. The stream ending without `end` (the server went away) is an InternalError.
   */
  async *events(id: number, signal?: AbortSignal): AsyncGenerator<BuildEvent> {
    const res = await this.request('GET', `/api/builds/${id}/events`, undefined, { stream: true, ...(signal ? { signal } : {}) });
    if (!res.body) throw new InternalError(`${this.server} answered the event stream of build #${id} with no body`);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let rest = '';
    try {
      for (;;) {
        const { done, value } = await reader.read().catch((e: unknown) => {
          if (signal?.aborted) return { done: true as const, value: undefined };
          throw this.unreachable(e);
        });
        const parsed = parseSse(rest, done ? decoder.decode() : decoder.decode(value, { stream: true }), done);
        rest = parsed.rest;
        for (const e of parsed.events) {
          if (e.event === 'end') return;
          if (e.event !== 'log' && e.event !== 'job' && e.event !== 'build') continue; // a later server's new kinds
          yield this.parse(BuildEvent, jsonOf(e.data), `an event of build #${id}`);
        }
        if (done) {
          if (signal?.aborted) return;
          throw new InternalError(`the event stream of build #${id} from ${this.server} ended before the build did`);
        }
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
  }

  private async json<S extends z.ZodType>(method: 'GET' | 'POST' | 'DELETE', path: string, schema: S, body?: unknown): Promise<z.infer<S>> {
    const res = await this.request(method, path, body);
    let value: unknown;
    try {
      value = await res.json();
    } catch (e) {
      throw new InternalError(`${this.server} answered ${method} ${path} with something that is not JSON: ${(e as Error).message}`);
    }
    return this.parse(schema, value, `the answer to ${method} ${path}`);
  }

  private parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
    const r = schema.safeParse(value);
    if (!r.success) throw new InternalError(`${this.server} sent ${what} that this airlock does not understand: ${r.error.issues[0]?.message ?? 'invalid'}`);
    return r.data;
  }

  private async request(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, o: { stream?: boolean; signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = { accept: o.stream ? 'text/event-stream' : 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    const signals = [...(o.stream ? [] : [AbortSignal.timeout(REQUEST_TIMEOUT_MS)]), ...(o.signal ? [o.signal] : [])];
    let res: Response;
    try {
      res = await fetch(new URL(path, this.opts.server), {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(signals.length > 0 ? { signal: AbortSignal.any(signals) } : {}),
      });
    } catch (e) {
      if (o.signal?.aborted) throw new CancelledError(`${method} ${path} cancelled`);
      throw this.unreachable(e);
    }
    if (res.ok) return res;
    const text = await res.text().catch(() => '');
    throw errorFromAnswer(res.status, text, `${method} ${path}`);
  }

  private unreachable(e: unknown): AirlockError {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    const why = (e as Error).name === 'TimeoutError' ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : (cause?.code ?? cause?.message ?? (e as Error).message);
    return new InternalError(`cannot reach the CI at ${this.server}: ${why}`, { cause: e });
  }
}

/**
 * An error answer as the AirlockError it stands for. Codes match across HTTP, never classes:
 * the codes the API answers with map to their classes; any other keeps its code in the message.
 */
export function errorFromAnswer(status: number, body: string, what: string): AirlockError {
  const wire = WireErrorBody.safeParse(jsonOf(body));
  const message = wire.success ? wire.data.message : `${what} answered ${status}${body ? `: ${body.slice(0, 200)}` : ''}`;
  switch (wire.success ? wire.data.code : undefined) {
    case 'AIRLOCK_E_INVALID_INPUT':
      return new InvalidInputError(issuesOf(message));
    case 'AIRLOCK_E_POLICY_VIOLATION':
      return new PolicyViolationError(issuesOf(message));
    case 'AIRLOCK_E_NOT_FOUND':
      return new NotFoundError(message);
    case 'AIRLOCK_E_UNAUTHORIZED':
      return new UnauthorizedError(message);
    case 'AIRLOCK_E_CONFLICT':
      return new ConflictError(message);
    case 'AIRLOCK_E_RATE_LIMITED':
      return new RateLimitedError(message);
    case 'AIRLOCK_E_UNAVAILABLE':
      return new NoLeaderError(message);
    case 'AIRLOCK_E_PAYLOAD_TOO_LARGE':
      return new PayloadTooLargeError(message);
    case 'AIRLOCK_E_STORAGE_FAILED':
      return new StorageFailedError(message);
    case 'AIRLOCK_E_INTERNAL':
      return new InternalError(message);
  }
  const named = wire.success ? `${wire.data.code}: ${message}` : message;
  if (status >= 400 && status < 500) return new InvalidInputError([{ file: what, path: '', message: named, severity: 'error' }]);
  return new InternalError(named);
}

/** Issues back from their formatted lines (`file: path: message`, see formatIssues). */
export function issuesOf(message: string): Issue[] {
  return message.split('\n').map((line) => {
    const m = /^([^:]*): ([^:]*): (.*)$/s.exec(line);
    if (!m) return { file: 'server', path: '', message: line, severity: 'error' as const };
    return { file: m[1]!, path: m[2] === '(root)' ? '' : m[2]!, message: m[3]!, severity: 'error' as const };
  });
}

function jsonOf(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
