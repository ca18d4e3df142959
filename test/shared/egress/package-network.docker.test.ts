/**
 * A job's package network on the real engine (shared/egress/package-network.ts): the two loopback
 * ports answer with the caller's handlers, and nothing else is reachable — not the host's
 * services (the registry on 127.0.0.1:5000), not the host's other addresses, not the internet.
 * Without `network: packages` a job sees only its own loopback, as before.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import { networkInterfaces } from 'node:os';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type Docker from 'dockerode';
import type { PackageHandlers } from '#shared/egress/package-network.js';
import type { JobRunner } from '#shared/runner/job-runner.js';
import { BUSYBOX, expectNothingLeft, makeRunner, spec } from '../../support/docker.js';

let docker: Docker;
let runner: JobRunner;
beforeAll(async () => {
  ({ docker, runner } = await makeRunner());
});
afterAll(async () => {
  await expectNothingLeft(docker, runner.owner, runner);
});

/** The host's own non-loopback IPv4 addresses (a job must reach none of them). */
function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((a) => a && a.family === 'IPv4' && !a.internal)
    .map((a) => a!.address);
}

function handlers(seen: string[]): PackageHandlers {
  const answer = (kind: string) => (req: IncomingMessage, res: ServerResponse) => {
    seen.push(`${kind} ${req.method} ${req.url}`);
    res.end(`${kind}-answer`);
  };
  return { apt: answer('apt'), npm: answer('npm'), connect: (req) => seen.push(`connect ${req.url}`) };
}

describe('package network', () => {
  it('carries the two ports to the handlers, the proxy variables are set, and nothing else is reachable', async () => {
    const seen: string[] = [];
    const targets = ['127.0.0.1:5000', ...hostAddresses().map((a) => `${a}:5000`), '10.1.2.3:80'];
    const script = [
      // (busybox wget ignores no_proxy; npm honours it)
      'env -u http_proxy wget -q -O - "$npm_config_registry"is-number; echo',
      // busybox wget honours http_proxy: an absolute-form request reaches the apt handler
      'wget -q -O - http://deb.debian.org/debian/dists/bookworm/InRelease; echo',
      'echo "proxy=$http_proxy"',
      ...targets.map((t) => `if env -u http_proxy -u HTTP_PROXY wget -q -T 3 -O /dev/null http://${t}/ 2>/dev/null; then echo "reached ${t}"; else echo "unreachable ${t}"; fi`),
      'cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d " "',
    ].join('\n');
    const r = await runner.run(spec({ image: BUSYBOX, command: ['sh', '-c', script], network: 'packages' }), { packages: handlers(seen) });
    expect(r.exitCode, r.log).toBe(0);
    expect(r.log).toContain('npm-answer');
    expect(r.log).toContain('apt-answer');
    expect(r.log).toContain('proxy=http://127.0.0.1:3142');
    for (const t of targets) expect(r.log).toContain(`unreachable ${t}`);
    expect(r.log?.trim().split('\n').slice(-1)[0]).toBe('lo'); // the only interface
    expect(seen).toContain('npm GET /is-number');
    expect(seen).toContain('apt GET http://deb.debian.org/debian/dists/bookworm/InRelease');
  });

  it('a job without network: packages reaches neither port', async () => {
    const r = await runner.run(spec({ image: BUSYBOX, command: ['sh', '-c', 'wget -q -T 2 -O - http://127.0.0.1:4873/ && echo reached || echo unreachable'] }), { packages: handlers([]) });
    expect(r.log).toContain('unreachable');
  });

  it('a job that asks for packages where none are served is refused, naming why', async () => {
    await expect(runner.run(spec({ image: BUSYBOX, command: ['true'], network: 'packages' }))).rejects.toThrow(/network: packages/);
  });

  it('removes the holder and the relays when the job ends', async () => {
    const r = await runner.run(spec({ image: BUSYBOX, command: ['true'], network: 'packages' }), { packages: handlers([]) });
    expect(r.exitCode).toBe(0);
    await runner.drain();
    // Other tests may hold package networks now: a leak is a relay whose run's directory is gone.
    const orphans = () =>
      execFileSync('sh', ['-c', 'pgrep -af "[U]NIX-CONNECT:" || true'])
        .toString()
        .split('\n')
        .map((l) => /UNIX-CONNECT:(\S+)/.exec(l)?.[1])
        .filter((path): path is string => path !== undefined && !existsSync(dirname(path)));
    for (let i = 0; i < 20 && orphans().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(orphans()).toEqual([]);
    expect(await docker.listContainers({ all: true, filters: { label: [`airlock.job=${r.jobId}`] } })).toEqual([]);
  });
});
