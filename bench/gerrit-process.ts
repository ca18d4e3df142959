/**
 * The Gerrit stand-in (test/support/gerrit-rig.ts) in a process of its own, for benchmarks: a
 * real Gerrit is another server, and the stand-in's git work (synchronous, on every upload,
 * review, submit and event it raises) must not hold the event loop of the service being measured.
 *
 * Run as a script it starts the stand-in and answers calls of its methods: one JSON line per call
 * on stdin (`{id, method, args}`), one per answer on stdout (`{id, result}` or `{id, error}`); its
 * first line out is `{ready: {url, passwords, hookSecret}}`. `startGerritProcess()` starts it and
 * returns a client with the methods the benchmarks use.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { GerritDouble, WebhookRemote } from '../test/support/gerrit-double.js';
import { startGerrit } from '../test/support/gerrit-rig.js';

type Upload = Parameters<GerritDouble['upload']>[0];
type Uploaded = ReturnType<GerritDouble['upload']>;
type ChangeState = ReturnType<GerritDouble['changeState']>;

export interface GerritProcess {
  url: string;
  passwords: Record<string, string>;
  hookSecret: string;
  gitUrl(project: string): Promise<string>;
  createProject(name: string, files: Record<string, string>): Promise<string>;
  upload(o: Upload): Promise<Uploaded>;
  review(number: number, as: string, input: { labels?: Record<string, number>; message?: string }): Promise<void>;
  changeState(number: number): Promise<ChangeState>;
  addWebhook(w: WebhookRemote): Promise<void>;
  /** Resolves when every event raised so far was delivered (or given up). */
  settle(): Promise<void>;
  /** Whether the webhook post of `by`'s comment on change `number` was delivered (undefined: not raised yet). */
  commentDelivered(number: number, by: string): Promise<boolean | undefined>;
  close(): Promise<void>;
}

export async function startGerritProcess(): Promise<GerritProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let ready: (v: { url: string; passwords: Record<string, string>; hookSecret: string }) => void = () => undefined;
  const started = new Promise<{ url: string; passwords: Record<string, string>; hookSecret: string }>((resolve, reject) => {
    ready = resolve;
    child.once('exit', (code) => reject(new Error(`the Gerrit stand-in's process exited (${code})`)));
  });
  lines.on('line', (line) => {
    const m = JSON.parse(line) as { ready?: { url: string; passwords: Record<string, string>; hookSecret: string }; id?: number; result?: unknown; error?: string };
    if (m.ready) return ready(m.ready);
    const w = waiting.get(m.id!);
    waiting.delete(m.id!);
    if (m.error !== undefined) w?.reject(new Error(m.error));
    else w?.resolve(m.result);
  });
  let next = 0;
  const call = <T,>(method: string, ...args: unknown[]): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const id = ++next;
      waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      child.stdin!.write(`${JSON.stringify({ id, method, args })}\n`);
    });
  const info = await started;
  return {
    ...info,
    gitUrl: (project) => call('gitUrl', project),
    createProject: (name, files) => call('createProject', name, files),
    upload: (o) => call('upload', o),
    review: (number, as, input) => call('review', number, as, input),
    changeState: (number) => call('changeState', number),
    addWebhook: (w) => call('addWebhook', w),
    settle: () => call('settle'),
    commentDelivered: (number, by) => call('commentDelivered', number, by),
    async close() {
      await call('close').catch(() => undefined);
      child.stdin!.end();
      await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
    },
  };
}

async function serve(): Promise<void> {
  const rig = await startGerrit();
  const g = rig.gerrit;
  const methods: Record<string, (...args: never[]) => unknown> = {
    gitUrl: (p: string) => g.gitUrl(p),
    createProject: (n: string, f: Record<string, string>) => g.createProject(n, f),
    upload: (o: Upload) => g.upload(o),
    review: (n: number, as: string, input: { labels?: Record<string, number>; message?: string }) => g.review(n, as, input),
    changeState: (n: number) => g.changeState(n),
    addWebhook: (w: WebhookRemote) => g.addWebhook(w),
    settle: () => g.settle(),
    commentDelivered: (n: number, by: string) =>
      g.posted.find((p) => {
        const b = p.body as { change?: { number?: number }; author?: { username?: string } };
        return p.type === 'comment-added' && b.change?.number === n && b.author?.username === by;
      })?.delivered,
    close: () => g.close(),
  };
  const out = (m: object) => process.stdout.write(`${JSON.stringify(m)}\n`);
  out({ ready: { url: g.url, passwords: rig.passwords, hookSecret: rig.hookSecret } });
  for await (const line of createInterface({ input: process.stdin })) {
    const { id, method, args } = JSON.parse(line) as { id: number; method: string; args: never[] };
    try {
      const fn = methods[method];
      if (!fn) throw new Error(`no method ${method}`);
      out({ id, result: (await fn(...args)) ?? null });
    } catch (e) {
      out({ id, error: (e as Error).message });
    }
  }
  // stdin closed: the benchmark is done (or died): nothing may stay behind.
  await g.close().catch(() => undefined);
  process.exit(0);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await serve();
