/**
 * `npm run demo`: airlock end to end on this machine, as a newcomer first meets it.
 *
 *   1. the hardened job runner, used directly;
 *   2. code review (a stand-in for Gerrit, in this process) and both tiers as separate processes
 *      (`airlock builder serve`, `airlock ci serve`), each with its own generated config, data dir
 *      and log under one demo root, on free ports;
 *   3. check: a sample project's three changes, uploaded to code review, each pass on their own;
 *      the CI votes Verified in code review;
 *   4. gate: approved in code review, the middle one fails on top of the first; the CI votes and
 *      asks code review to submit the other two, which code review merges in order;
 *   5. the CI's hint sender tells the trusted builder, which checks the review in code review
 *      itself, rebuilds, re-tests, signs (its provenance naming the approvers) and pushes;
 *   6. a compromised CI host's commit pushed past review, with a correctly signed hint, is refused
 *      ("no review"), and so is a hint for an older commit;
 *   7. skopeo, under the shipped consumer policy, accepts the signed image and refuses an unsigned one;
 * then a summary with the URLs of both services. It keeps both running until Ctrl-C; with `--once`
 * it stops when done, exiting 0 only if every step did what it should.
 *
 *   8. (`--security-team` only) the security team's embargo lane: a member's embargoed patch, built
 *      privately, verified and pulled with the team's login, and found in no public output;
 *
 *   tsx demo/demo.ts [--once] [--security-team] [--dir DIR]
 *
 * The demo root is a fresh temp directory, removed at the end; `--dir DIR` (empty or absent) is
 * kept. Both services are always stopped by pid (also on failure or Ctrl-C), and the images the
 * demo made are removed; the runner removes its own containers. Exit: 0 every step as it should,
 * 1 a step did not, 2 bad arguments, 3 the demo itself failed, 130 interrupted before the end.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { CiClient } from '../cli/ci-client.js';
import { createDocker } from '#shared/docker/client.js';
import { LABEL_ENV_PROJECT } from '../untrusted-ci/environments/image-cache.js';
import { compromisedAct, consumerAct, promotionAct, type Publication } from './builder-act.js';
import { checkAct, gateAct, type Merge } from './ci-act.js';
import { startCodeReview, type CodeReview } from './code-review.js';
import { preflight } from './preflight.js';
import { IMAGE, layout as demoLayout, PROJECT, prepareDemoRoot, writeCiConfig, type DemoLayout } from './demo-root.js';
import { runnerAct } from './runner-act.js';
import { securityTeamAct } from './security-team-act.js';
import { logTail, startService, type ServiceProcess } from './services.js';
import { Story } from './story.js';
import { Interrupted } from './wait.js';

const EXIT = { ok: 0, stepFailed: 1, badArgs: 2, internal: 3, interrupted: 130 } as const;

let args: { once: boolean; securityTeam: boolean; dir?: string };
try {
  const { values } = parseArgs({ options: { once: { type: 'boolean', default: false }, 'security-team': { type: 'boolean', default: false }, dir: { type: 'string' } } });
  args = { once: values.once ?? false, securityTeam: values['security-team'] ?? false, ...(values.dir ? { dir: resolve(values.dir) } : {}) };
} catch (e) {
  process.stderr.write(`demo: ${(e as Error).message}\nusage: tsx demo/demo.ts [--once] [--security-team] [--dir DIR]\n`);
  process.exit(EXIT.badArgs);
}

const story = new Story();
const stop = new AbortController();
let interruptedBy: string | undefined;
let interruptedAt = 0;
let root: string | undefined;
const onSignal = (signal: NodeJS.Signals): void => {
  if (interruptedBy) {
    // tsx may relay one Ctrl-C twice within milliseconds; a later one means "now": the exit hook
    // of services.ts SIGKILLs both services by pid, and the demo root stays.
    if (Date.now() - interruptedAt < 1000) return;
    story.line(`${signal} again: killing both services${root ? `; ${root} is left behind` : ''}`);
    process.exit(EXIT.interrupted);
  }
  interruptedBy = signal;
  interruptedAt = Date.now();
  story.line(`\n${signal}: stopping both services…`);
  stop.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

const started = Date.now();
const stateDir = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const docker = createDocker();
const problems = await preflight(docker);
if (problems.length > 0) {
  process.stderr.write(`demo: this machine is not ready (run \`npm run bootstrap\` as root):\n${problems.map((p) => `  - ${p}\n`).join('')}`);
  process.exit(EXIT.internal);
}
if (args.dir) {
  mkdirSync(args.dir, { recursive: true, mode: 0o700 });
  if (readdirSync(args.dir).length > 0) {
    process.stderr.write(`demo: ${args.dir} is not empty: give an empty or new directory\n`);
    process.exit(EXIT.badArgs);
  }
}
root = args.dir ?? mkdtempSync(join(tmpdir(), 'airlock-demo-'));
const demoRoot = root;
const imagesBefore = new Set((await docker.listImages()).map((i) => i.Id));
const services: ServiceProcess[] = [];
let review: CodeReview | undefined;
let stopping = false;
let failure: string | undefined;
let summaryPrinted = false;

try {
  story.line(story.bold('airlock demo: a public CI that gates merges, and a trusted builder that publishes signed images'));
  await between(() => runnerAct(story, { stateDir, scratch: demoRoot }));
  const layout = await between(startTiers);
  const client = new CiClient({ server: new URL(services[1]!.url) });
  const ctx = { story, client, review: review!, ciMirrors: join(layout.root, 'ci', 'data', 'git', 'mirrors'), signal: stop.signal };
  const changes = await between(() => checkAct(ctx));
  const merged = await between(() => gateAct(ctx, changes));
  const builderCtx = { story, layout, builderUrl: services[0]!.url, signal: stop.signal };
  const published = merged.length > 0 ? await between(() => promotionAct(builderCtx, merged)) : [];
  await between(() => compromisedAct({ ...builderCtx, review: review! }));
  const newest = published.at(-1);
  if (newest) await between(() => consumerAct(builderCtx, newest));
  else story.check('a signed image to verify', false, 'nothing was published');
  if (args.securityTeam) {
    if (newest) await between(() => securityTeamAct({ ...builderCtx, review: review!, published: published.map((p) => p.commit) }));
    else story.check("the security team's lane", false, 'nothing was published to build privately');
  }
  printSummary(layout, merged, published);
  if (!args.once && !stop.signal.aborted) {
    story.line(`\nBoth services keep running: open the pages above. Ctrl-C stops them${args.dir ? '' : ' and removes the demo root'}.`);
    await new Promise((r) => stop.signal.addEventListener('abort', r, { once: true }));
  }
} catch (e) {
  // A service that died shows first as a refused request: give its exit a moment to be seen.
  await Promise.race([...services.map((s) => s.exited), new Promise((r) => setTimeout(r, 500))]);
  if (failure === undefined && !(e instanceof Interrupted && interruptedBy)) {
    failure = (e as Error).stack ?? String(e);
    // The demo root goes away: what the services said goes with the error.
    for (const s of services) failure += `\n\nthe end of the ${s.name}'s log (${s.logFile}):\n${logTail(s.logFile)}`;
  }
} finally {
  await cleanUp();
}

if (failure) {
  process.stderr.write(`\ndemo: ${failure}\n`);
  process.exitCode = EXIT.internal;
} else if (interruptedBy && !summaryPrinted) {
  process.exitCode = EXIT.interrupted;
} else {
  process.exitCode = story.failures === 0 ? EXIT.ok : EXIT.stepFailed;
}
process.exit();

/** The next act, unless the demo is stopping. */
function between<T>(act: () => Promise<T>): Promise<T> {
  return stop.signal.aborted ? Promise.reject(new Interrupted()) : act();
}

/** Code review, then both tiers, builder first (the CI's config names the builder's address). */
async function startTiers(): Promise<DemoLayout> {
  story.begin('code review and two tiers, two processes', `demo root ${demoRoot}: generated configs, keys and secrets, one data dir per service`);
  review = await startCodeReview(demoLayout(demoRoot, stateDir).review, PROJECT);
  story.check(`code review: ${review.gerrit.url} — a stand-in for Gerrit (its REST API, submit rules and webhooks, as airlock's tests use it), in this process`, true, `project ${PROJECT}; reviewers grace, linus; the CI's account airlock-ci may vote Verified and submit, nothing else`);
  const layout = await prepareDemoRoot(demoRoot, stateDir, review, { securityTeam: args.securityTeam });
  story.info(`signing key ${layout.fingerprint} (public half: ${layout.publicKeyFile})`);
  if (layout.securityTeam) story.info(`embargo lane on: its key in the builder's store (public half: ${layout.securityTeam.builderKeyFile}); the team: ${join(demoRoot, 'security-team', 'keys')}`);
  const env = { AIRLOCK_LOG_LEVEL: process.env.AIRLOCK_LOG_LEVEL ?? 'info' };
  const builder = await startService({ name: 'trusted builder', args: ['builder', 'serve', '--config', layout.builderConfig], logFile: layout.builderLog, env, signal: stop.signal });
  services.push(builder);
  watch(builder);
  story.check(`trusted builder: pid ${builder.pid}, ${builder.url}`, true, `airlock builder serve --config ${layout.builderConfig}`);
  writeCiConfig(layout, builder.url, review);
  const ci = await startService({ name: 'CI', args: ['ci', 'serve', '--config', layout.ciConfig], logFile: layout.ciLog, env, signal: stop.signal });
  services.push(ci);
  watch(ci);
  story.check(`untrusted CI: pid ${ci.pid}, ${ci.url}`, true, `airlock ci serve --config ${layout.ciConfig}`);
  // Code review's webhooks plugin posts every event there (the secret in the URL path).
  review.gerrit.addWebhook({ url: `${ci.url}/hooks/gerrit/${encodeURIComponent(review.hookSecret)}`, retryIntervalMs: 200 });
  return layout;
}

/** A service that exits on its own ends the demo: nothing after it could work. */
function watch(s: ServiceProcess): void {
  void s.exited.then((e) => {
    if (stopping) return;
    failure ??= `the ${s.name} (pid ${s.pid}) exited unexpectedly (${e.code ?? e.signal}); the end of ${s.logFile}:\n${logTail(s.logFile)}`;
    stop.abort();
  });
}

function printSummary(layout: DemoLayout, merged: Merge[], published: Publication[]): void {
  summaryPrinted = true;
  const [builder, ci] = services;
  story.line(`\n${story.bold('What happened')}`);
  for (const l of story.summary()) story.line(l);
  story.line('');
  story.line(`  merged into master of ${PROJECT}: ${merged.map((m) => `change ${m.change} as ${m.commit.slice(0, 10)}`).join(', ') || 'nothing'}`);
  for (const p of published) {
    story.line(`  image      ${p.reference}`);
    story.line(`  digest     ${p.digest}`);
    story.line(`  signature  ${p.signature}`);
    story.line(`             ${p.signatureUrl}`);
  }
  story.line('');
  story.line(`  code review          ${review?.gerrit.url ?? "?"}/changes/?q=status:merged  (a stand-in for Gerrit; it stops with the demo)`);
  story.line(`  CI (untrusted)       ${ci!.url}/   status page · ${ci!.url}/api/gate · ${ci!.url}/metrics`);
  story.line(`  builder (trusted)    ${builder!.url}/ui (its page; user ${layout.dashboard.username}, password ${layout.dashboard.password}) · ${builder!.url}/lookaside/`);
  if (!args.once || args.dir) story.line(`  logs                 ${layout.ciLog} · ${layout.builderLog}`);
  if (!args.once) {
    story.line(`  try                  npx airlock gate --server ${ci!.url}`);
    story.line(`                       npx airlock status --server ${ci!.url}`);
    story.line(`                       npx airlock builder audit verify ${join(layout.builderData, 'audit.jsonl')}`);
    if (layout.securityTeam) story.line(`                       npx airlock embargo list --builder ${builder!.url} --key ${layout.securityTeam.memberKeyFile} --builder-key ${layout.securityTeam.builderKeyFile}`);
  }
  const seconds = Math.round((Date.now() - started) / 1000);
  story.line(`\n${story.bold(story.failures === 0 ? `demo: every step did what it should (${seconds} s)` : `demo: ${story.failures} step(s) did not do what they should (${seconds} s)`)}`);
}

/** Stop both services by pid, remove the images the demo made and (unless --dir) the demo root. */
async function cleanUp(): Promise<void> {
  stopping = true;
  for (const s of [...services].reverse()) await s.stop();
  await review?.close().catch(() => undefined);
  // The CI's environment images of the project, and what the builder built for it (it untags
  // those itself after each promotion; this catches one a stop cut short).
  const builderTag = new RegExp(`^airlock-trusted(-env)?/${IMAGE}:`);
  for (const img of await docker.listImages()) {
    if (imagesBefore.has(img.Id)) continue;
    const ours = img.Labels?.[LABEL_ENV_PROJECT] === PROJECT || (img.RepoTags ?? []).some((t) => builderTag.test(t));
    if (ours) await docker.getImage(img.Id).remove().catch((e: unknown) => story.line(`demo: cannot remove image ${img.Id}: ${(e as Error).message}`));
  }
  if (!args.dir) rmSync(demoRoot, { recursive: true, force: true });
  else story.line(`demo root kept: ${demoRoot}`);
}
