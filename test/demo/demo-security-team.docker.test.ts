/**
 * `npm run demo -- --once --security-team` as the security team runs it: the normal story, then the
 * embargo lane (on in this mode only) driven as a member drives it: a submitted patch built
 * privately, verified, copied with the team's login under a policy requiring the builder's
 * signature, refused to the consumers' login, and its unique string in no public output. It must
 * exit 0 and leave nothing behind (no service process, no demo root, no image of the project).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const TSX = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));
const DEMO_TIMEOUT_MS = 5 * 60_000; // 5 min; about 40 s on an idle 2-core machine

function runDemo(): Promise<{ code: number | null; output: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(TSX, ['demo/demo.ts', '--once', '--security-team'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0' } });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (output += d.toString('utf8')));
    const timer = setTimeout(() => child.pid !== undefined && process.kill(child.pid, 'SIGINT'), DEMO_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output, ms: Date.now() - started });
    });
  });
}

describe('npm run demo -- --once --security-team', () => {
  it("adds the security team's act, every step as it should, and leaves nothing behind", async () => {
    const { code, output, ms } = await runDemo();
    expect(code, output).toBe(0);
    expect(output).not.toContain('✘');
    for (const line of [
      /embargo lane on: its key in the builder's store \(public half: \/\S+\/builder\/embargo-key\.pub\.asc\)/,
      /✔ skopeo copy docker:\/\/127\.0\.0\.1:5000\/demo\/greeter:[0-9a-f]{40}: signature accepted/,
      /▶ the security team's embargo lane/,
      /✔ airlock embargo submit --project demo\/greeter --patch fix\.patch: (emb-[0-9a-f]+)/,
      /✔ airlock embargo show emb-[0-9a-f]+: built privately on the published commit [0-9a-f]{10} — 127\.0\.0\.1:5001\/private\/demo\/greeter:[0-9a-f]{40}/,
      /✔ airlock embargo verify emb-[0-9a-f]+ --signing-key signing-key\.pub\.asc --lookaside DIR: signed by [0-9A-F]{16}/,
      /✔ skopeo copy docker:\/\/127\.0\.0\.1:5001\/private\/demo\/greeter:… with the team's login: signature accepted/,
      /✔ the consumers' login on 127\.0\.0\.1:5001: 401/,
      /✔ the patch's unique string is in no public output — the CI's log and data dir, the builder's log, the builder's public lookaside, the public registry's .*, the builder's page/,
      /demo: every step did what it should/,
    ]) {
      expect(output, output).toMatch(line);
    }
    console.log(`demo --once --security-team took ${(ms / 1000).toFixed(1)} s`);

    for (const m of output.matchAll(/: pid (\d+),/g)) expect(() => process.kill(Number(m[1]), 0), `pid ${m[1]} still runs`).toThrow();
    const root = /demo root (\/\S+):/.exec(output)?.[1];
    expect(root).toBeDefined();
    expect(existsSync(root!)).toBe(false);
    const images = await createDocker().listImages();
    const left = images.flatMap((i) => i.RepoTags ?? []).filter((t) => /^airlock-env\/demo-greeter:|^airlock-trusted(-env)?\/demo\/greeter:|demo\/greeter/.test(t));
    expect(left).toEqual([]);
  }, DEMO_TIMEOUT_MS + 30_000);
});
