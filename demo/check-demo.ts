/**
 * The demo's second act: the public CI's check pipeline. A local git repository stands in for a
 * code-review system; the service runs with real SQLite, git mirrors, Docker and an on-disk
 * artifact store; changes arrive over HTTP like `airlock submit` sends them; the log of one build
 * is followed live over server-sent events. Returns the number of steps that did not do what they should.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createLogger } from '../shared/logging.js';
import { sanitizeForTerminal } from '../shared/runner/log-capture.js';
import { BuildView, type BuildResult } from '../shared/schemas/api/builds.js';
import { buildCiConfig } from '../untrusted-ci/config.js';
import { startCiService } from '../untrusted-ci/service.js';

const bold = (s: string): string => (process.stdout.isTTY ? `\u001b[1m${s}\u001b[0m` : s);

const CONFIG = `version: 1
environment: { dockerfile: ci/Dockerfile }
jobs:
  lint:
    command: echo lint ok
  test:
    command: sh ./test.sh
    needs: [lint]
    artifacts: [report.txt]
`;

export async function checkDemo(): Promise<number> {
  const root = mkdtempSync(join(tmpdir(), 'airlock-check-demo-'));
  const repo = join(root, 'upstream');
  const git = (...args: string[]): string =>
    execFileSync('git', ['-c', 'user.name=Demo', '-c', 'user.email=demo@example.com', '-c', 'init.defaultBranch=master', ...args], { cwd: repo, encoding: 'utf8' }).trim();
  const write = (files: Record<string, string>): void => {
    for (const [p, text] of Object.entries(files)) {
      mkdirSync(dirname(join(repo, p)), { recursive: true });
      writeFileSync(join(repo, p), text);
    }
  };
  /** A change as a ref of its own, on top of master, like Gerrit's refs/changes/NN/N/P. */
  const change = (n: number, files: Record<string, string>): string => {
    git('checkout', '-q', '-B', `change-${n}`, 'master');
    write(files);
    git('add', '-A');
    git('commit', '-q', '-m', `change ${n}`);
    const ref = `refs/changes/${String(n).padStart(2, '0').slice(-2)}/${n}/1`;
    git('update-ref', ref, 'HEAD');
    git('checkout', '-q', 'master');
    return ref;
  };
  mkdirSync(repo);
  git('init', '-q');
  write({
    '.airlock.yaml': CONFIG,
    'ci/Dockerfile': 'FROM airlock/base:busybox\nRUN echo "tools v1" > /etc/tools-version\n',
    'test.sh': 'cat /etc/tools-version\nexpr 6 \\* 7 > report.txt\ngrep -q 42 report.txt && echo "tests: ok"\n',
    'README.md': 'demo\n',
  });
  git('add', '-A');
  git('commit', '-q', '-m', 'initial');

  const loaded = buildCiConfig(
    { version: 1, dataDir: join(root, 'ci'), listen: { host: '127.0.0.1', port: 0 }, slots: 2, imageGcEveryMs: 0, projects: [{ name: 'demo/app', url: repo }] },
    'demo',
  );
  const ci = await startCiService(loaded, { logger: createLogger({ level: 'warn' }), workspacePool: 0 });
  const url = await ci.listen();
  console.log(`\n${bold('▶ the check pipeline')}: service at ${url}, project demo/app = ${repo}`);
  let failures = 0;
  const submit = async (ref: string, n: number): Promise<number> => {
    const r = await fetch(`${url}/api/changes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ project: 'demo/app', ref, change: String(n), author: 'demo' }) });
    const body = (await r.json()) as { builds: number[] };
    return body.builds[0]!;
  };
  const result = async (id: number): Promise<BuildView> => {
    for (;;) {
      const b = BuildView.parse(await (await fetch(`${url}/api/builds/${id}`)).json());
      if (b.state === 'finished') return b;
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const show = (title: string, b: BuildView, want: BuildResult): void => {
    const ok = b.result === want;
    if (!ok) failures++;
    console.log(`${ok ? '✓' : '✗'} ${title}: ${b.result} — ${b.reason}`);
    for (const j of b.jobs) console.log(`    ${j.name}: ${j.state}${j.reason ? ` (${j.reason})` : ''}`);
    for (const i of b.issues) console.log(`    ${i.file}: ${i.path ? `${i.path}: ` : ''}${i.message}`);
    if (b.environment) console.log(`    environment ${b.environment.image}${b.environment.cached ? ' (reused)' : ' (built)'}`);
  };

  // 1. A passing change, its log followed live over SSE from the start.
  const first = await submit(change(1, { 'README.md': 'demo, better\n' }), 1);
  console.log(`  following build ${first} live (GET /api/builds/${first}/events):`);
  const sse = await fetch(`${url}/api/builds/${first}/events`);
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of sse.body as unknown as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true });
    let cut: number;
    while ((cut = buffered.indexOf('\n\n')) >= 0) {
      const frame = buffered.slice(0, cut);
      buffered = buffered.slice(cut + 2);
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      const e = data ? (JSON.parse(data) as { type: string; job?: string; text?: string; state?: string }) : undefined;
      if (e?.type === 'log') process.stdout.write(`  │ [${e.job}] ${sanitizeForTerminal(e.text ?? '').replace(/\n(?=.)/g, `\n  │ [${e.job}] `)}`);
      if (e?.type === 'job') console.log(`  │ ${e.job} → ${e.state}`);
    }
  }
  show('a good change', await result(first), 'passed');

  // 2-4. A failing change, a broken config, a merge conflict: results, not crashes.
  const failing = await submit(change(2, { 'test.sh': 'echo "tests: 1 failure"; exit 1\n' }), 2);
  const broken = await submit(change(3, { '.airlock.yaml': 'version: 1\nenvironment: { image: ubuntu:latest }\njobs:\n  test:\n    command: make test\n    resources: { memory: 64g }\n    needs: [build]\n' }), 3);
  const conflicting = change(4, { 'README.md': 'mine\n' });
  write({ 'README.md': 'theirs\n' });
  git('commit', '-q', '-am', 'master moves on');
  const conflict = await submit(conflicting, 4);
  show('a change whose tests fail', await result(failing), 'failed');
  show('a change with a broken .airlock.yaml (every problem listed)', await result(broken), 'config-error');
  show('a change that conflicts with master', await result(conflict), 'merge-conflict');

  // 5. The environment is reused while its Dockerfile is unchanged.
  show('another good change (environment reused, not rebuilt)', await result(await submit(change(5, { 'docs.md': 'more\n' }), 5)), 'passed');
  const metrics = await (await fetch(`${url}/metrics`)).text();
  console.log(`  /metrics: ${metrics.split('\n').filter((l) => l.startsWith('airlock_ci_builds_total')).join(' · ')}`);
  await ci.close();
  rmSync(root, { recursive: true, force: true });
  return failures;
}
