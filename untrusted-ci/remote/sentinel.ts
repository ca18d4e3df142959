/**
 * The executor host's sentinel: a small child process that stops this host's job containers when
 * the executor can no longer do it. A job must not run on after the CI gave it to another host, and
 * the executor's own watchdog (executor-host.ts) needs the executor alive and scheduled. So:
 * - the executor tells the sentinel, on its stdin, how long each job's lease holds from now
 *   (`renew <job> <ms>`, after each good heartbeat) and when a job is over (`done <job>`);
 * - a job whose time ran out: the sentinel kills its containers (the engine's API, by the runner's
 *   labels: this runner's owner and that job's id). This covers an executor that is stopped
 *   (SIGSTOP), starved or stuck in a long pause;
 * - stdin closed (the executor died, even by SIGKILL): it kills every container of the runner's
 *   owner and exits.
 * It is plain JavaScript run by the same node (no TypeScript loader), talking HTTP to the engine's
 * socket, so it has nothing to load that could fail when it is needed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { DEFAULT_DOCKER_SOCKET } from '#shared/docker/client.js';
import { LABEL_JOB, LABEL_OWNER } from '#shared/runner/labels.js';

const SCRIPT = `
const http = require('node:http');
const { performance } = require('node:perf_hooks');
const target = JSON.parse(process.argv[1]);
const owner = process.argv[2];
const LABEL_OWNER = process.argv[3], LABEL_JOB = process.argv[4];
function req(method, path) {
  return new Promise((res) => {
    const r = http.request({ ...target, method, path, timeout: 5000 }, (m) => { let b = ''; m.on('data', (d) => (b += d)); m.on('end', () => res(b)); });
    r.on('error', () => res(''));
    r.on('timeout', () => r.destroy());
    r.end();
  });
}
async function kill(job) {
  const label = [LABEL_OWNER + '=' + owner].concat(job ? [LABEL_JOB + '=' + job] : []);
  let list = [];
  try { list = JSON.parse((await req('GET', '/containers/json?filters=' + encodeURIComponent(JSON.stringify({ label })))) || '[]'); } catch {}
  for (const c of Array.isArray(list) ? list : []) await req('POST', '/containers/' + encodeURIComponent(c.Id) + '/kill');
}
const deadlines = new Map();
let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const [cmd, job, ms] = buf.slice(0, i).split(' ');
    buf = buf.slice(i + 1);
    if (cmd === 'renew' && job) deadlines.set(job, performance.now() + Number(ms));
    else if (cmd === 'done' && job) deadlines.delete(job);
  }
});
process.stdin.on('end', () => kill().finally(() => process.exit(0)));
setInterval(() => {
  for (const [job, at] of deadlines) if (performance.now() > at) { deadlines.delete(job); void kill(job); }
}, 100);
`;

export interface Sentinel {
  /** The job's lease holds `ms` more from now. */
  renew(job: string, ms: number): void;
  done(job: string): void;
  close(): void;
}

/** The engine's unix socket, as node's http.request takes it (shared/docker/client.ts makes clients of nothing else). */
export function engineTarget(dockerHost: string | undefined): { socketPath: string } {
  return { socketPath: dockerHost?.startsWith('unix://') ? dockerHost.slice('unix://'.length) : DEFAULT_DOCKER_SOCKET };
}

export function startSentinel(target: { socketPath: string }, owner: string, onExit?: (code: number | null) => void): Sentinel {
  const child: ChildProcess = spawn(process.execPath, ['-e', SCRIPT, JSON.stringify(target), owner, LABEL_OWNER, LABEL_JOB], { stdio: ['pipe', 'ignore', 'inherit'] });
  child.on('error', () => undefined);
  child.on('exit', (code) => onExit?.(code));
  child.stdin?.on('error', () => undefined);
  const send = (line: string): void => {
    if (child.stdin?.writable) child.stdin.write(`${line}\n`);
  };
  return {
    renew: (job, ms) => send(`renew ${job} ${Math.max(0, Math.floor(ms))}`),
    done: (job) => send(`done ${job}`),
    close: () => child.stdin?.end(),
  };
}
