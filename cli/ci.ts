/**
 * The untrusted CI from the shell:
 *
 *   airlock ci serve --config FILE           run the service until SIGINT/SIGTERM
 *   airlock ci gc --config FILE              retention, image cache and git housekeeping, once
 *   airlock submit --project P --ref R       submit a change (--wait: follow it to its result)
 *   airlock status [BUILD]                   the queue and recent builds, or one build in detail
 *   airlock logs BUILD [-f]                  job logs, or the live stream of a running build
 *
 * BUILD is the CI's build id (`#17` or `17`, as `submit` prints it), or `--change N[,PS]` with
 * `--project P` (cli/build-ref.ts: the one place a build reference is parsed and resolved).
 *
 * Client commands talk to `--server` (default $AIRLOCK_SERVER, else http://127.0.0.1:8080); the
 * environment is read once, when the commands are registered. Exit codes as in main.ts; the
 * commands that end with a build (`submit --wait`, `logs`) exit 0 when it passed and 1 otherwise.
 * With `--json`, stdout carries only JSON (an error too, as `{"error": {code, message, statusCode}}`).
 */
import { serveUntilSignal } from './serve.js';
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { AirlockError, InvalidInputError, NotFoundError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import { sanitizeForTerminal } from '#shared/runner/log-capture.js';
import { SubmitChange, type BuildEvent, type BuildView, type SubmitChangeInput } from '#shared/schemas/api/builds.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import { loadCiConfig } from '../untrusted-ci/config.js';
import { runCiGc, type CiGcReport } from '../untrusted-ci/gc.js';
import { startCiService } from '../untrusted-ci/service.js';
import { CiClient, parseServerUrl } from './ci-client.js';
import { buildName, checkBuildProject, describeRef, parseBuildRef, resolveChangeRef, type BuildRef } from './build-ref.js';
import { buildStatus, formatBuild, formatDuration, formatOverview } from './ci-render.js';
import { followBuild } from './follow.js';
import { createProgress } from './progress.js';

export const DEFAULT_SERVER = 'http://127.0.0.1:8080';
/** The pseudo-job whose log is the build's preparation (merge, environment); it only exists in the event stream. */
const SETUP_JOB = 'setup';

interface ClientFlags {
  server: string;
  json?: boolean;
}
interface RefFlags extends ClientFlags {
  project?: string;
  change?: string;
}
interface SubmitFlags extends ClientFlags {
  project: string;
  ref: string;
  branch?: string;
  change?: string;
  patchset?: string;
  author?: string;
  subject?: string;
  pipeline?: string;
  tokenFile?: string;
  wait?: boolean;
}

export function registerCiCommands(program: Command): void {
  const env = { server: process.env.AIRLOCK_SERVER ?? DEFAULT_SERVER, logLevel: process.env.AIRLOCK_LOG_LEVEL };
  const serverOption = ['--server <url>', 'the CI to talk to (env AIRLOCK_SERVER)', env.server] as const;

  const ci = program.command('ci').description('run the untrusted CI service and its housekeeping');
  ci.command('serve')
    .description('run the CI service (HTTP API, scheduler, jobs) until SIGINT or SIGTERM')
    .requiredOption('--config <file>', 'the service config (YAML)')
    .action(async (f: { config: string }) => serve(f.config, env.logLevel));
  ci.command('gc')
    .description('delete expired logs and artifacts, orphaned build trees and unused environment images; safe while the service runs')
    .requiredOption('--config <file>', 'the service config (YAML)')
    .option('--dry-run', 'only report what retention would delete (no image or git GC)')
    .option('--no-images', 'leave the environment image cache alone')
    .option('--json', 'print the report as one JSON object')
    .action(async (f: { config: string; dryRun?: boolean; images: boolean; json?: boolean }) =>
      withJsonErrors(f.json, async () => {
        const logger = createLogger({ name: 'airlock-gc', level: env.logLevel ?? 'warn' });
        const report = await runCiGc(loadCiConfig(f.config), { logger, images: f.images, ...(f.dryRun ? { dryRun: true } : {}) });
        process.stdout.write(f.json ? `${JSON.stringify(report)}\n` : formatGc(report, Boolean(f.dryRun)));
      }),
    );

  program
    .command('submit')
    .description('submit a change to the CI (and with --wait, follow its build to the result)')
    .option(...serverOption)
    .requiredOption('--project <name>', 'the project, as registered with the CI')
    .requiredOption('--ref <ref>', 'what to test: a full ref (refs/changes/…, refs/heads/…) or a commit id')
    .option('--branch <branch>', 'the branch the change targets (default master)')
    .option('--change <id>', 'the change id in the review system (default: the ref)')
    .option('--patchset <n>', 'the patchset number (default 1)')
    .option('--author <name>', 'who wrote the change')
    .option('--subject <text>', "the change's subject line")
    .option('--token-file <file>', 'file holding the API token, if the CI requires one')
    .option('--wait', 'follow the build; exit 0 if it passed, 1 otherwise')
    .option('--json', 'print JSON: the submit answer, or with --wait the finished build')
    .action(async (f: SubmitFlags) => withJsonErrors(f.json, async () => (process.exitCode = await submit(f))));

  program
    .command('gate')
    .description("the gate's change queues: each item, what it is tested on, its jobs, the window")
    .option(...serverOption)
    .option('--json', 'print JSON')
    .action(async (f: ClientFlags) =>
      withJsonErrors(f.json, async () => {
        const view = await clientFor(f.server).gate();
        if (f.json) return void process.stdout.write(`${JSON.stringify(view)}\n`);
        const lines: string[] = [];
        for (const q of view.queues) {
          lines.push(`queue ${q.name} (window ${q.window}): ${q.items.length === 0 ? 'empty' : ''}`);
          for (const i of q.items) {
            const jobs = i.jobs.map((j) => `${j.name}:${j.result ?? 'running'}`).join(' ');
            const failing = i.failing.length > 0 ? ` FAILING (${i.failing.join('; ')})` : '';
            lines.push(`  ${i.change},${i.patchset} ${i.active ? '' : '(inactive) '}on [${i.state.join(' ')}] ${jobs}${failing}`);
          }
        }
        process.stdout.write(`${lines.join('\n')}\n`);
      }),
    );

  program
    .command('status')
    .description('the queue and recent builds, or one build with its jobs')
    .argument('[build]', "a build: the CI's id, #17 or 17")
    .option(...serverOption)
    .option('--change <N[,PS]>', "instead of an id: the latest build of change N's current patch set, or of patch set PS")
    .option('--project <name>', 'the project of --change; without --change, only builds of this project')
    .option('--limit <n>', 'how many recent builds', '20')
    .option('--json', 'print JSON: the build, or {queue, builds}')
    .action(async (build: string | undefined, f: RefFlags & { limit: string }) =>
      withJsonErrors(f.json, async () => {
        const client = clientFor(f.server);
        const ref = parseBuildRef(refArgs(build, f), false);
        if (ref !== undefined) {
          const b = await client.build(await resolveBuild(client, ref));
          process.stdout.write(f.json ? `${JSON.stringify(b)}\n` : formatBuild(b, Date.now()));
          return;
        }
        const limit = Number(f.limit);
        if (!Number.isInteger(limit) || limit < 1 || limit > 500) throw badFlag('limit', 'must be a whole number from 1 to 500');
        const [queue, builds] = await Promise.all([client.queue(), client.builds({ limit, ...(f.project ? { project: f.project } : {}) })]);
        process.stdout.write(f.json ? `${JSON.stringify({ queue, builds })}\n` : formatOverview(queue, builds, Date.now()));
      }),
    );

  program
    .command('logs')
    .description("a build's job logs; with -f, follow it live to its end (exit 0 if it passed, 1 otherwise)")
    .argument('[build]', "a build: the CI's id, #17 or 17 (or --change)")
    .option(...serverOption)
    .option('--change <N[,PS]>', "instead of an id: the latest build of change N's current patch set, or of patch set PS")
    .option('--project <name>', 'the project of --change')
    .option('-f, --follow', 'stream the log as the build runs, with its progress on stderr')
    .option('--job <name>', 'only this job')
    .option('--json', 'print each build event as one JSON line')
    .action(async (build: string | undefined, f: RefFlags & { follow?: boolean; job?: string }) =>
      withJsonErrors(f.json, async () => {
        const client = clientFor(f.server);
        const ref = parseBuildRef(refArgs(build, f), true)!;
        const id = await resolveBuild(client, ref);
        const b = f.follow ? await followLogs(client, id, f) : await printLogs(client, id, f);
        if (!f.json) process.stderr.write(`airlock: build ${buildName(b.id)} ${summary(b)}\n`);
        process.exitCode = b.result === 'passed' ? 0 : 1;
      }),
    );
}

async function serve(configFile: string, logLevel: string | undefined): Promise<void> {
  const loaded = loadCiConfig(configFile);
  const logger = createLogger({ name: 'airlock-ci', ...(logLevel ? { level: logLevel } : {}) });
  const service = await startCiService(loaded, {
    logger,
    // A replica that stopped leading exits (its supervisor starts it again, as a follower): its
    // leader parts are not started twice in one process.
    onLeadershipLost: (why) => {
      logger.fatal({ why }, 'this replica stopped leading; it exits to start again as a follower');
      // Closing may hang on the database that cost the lease: exit after a while regardless.
      setTimeout(() => process.exit(75), 10_000).unref();
      void service.close().finally(() => process.exit(75));
    },
  });
  await serveUntilSignal(service, { name: 'CI', address: `${loaded.config.listen.host}:${loaded.config.listen.port}`, onClose: 'running builds will run again at the next start' });
}

async function submit(f: SubmitFlags): Promise<number> {
  const input: SubmitChangeInput = {
    project: f.project,
    ref: f.ref,
    ...(f.branch !== undefined ? { branch: f.branch } : {}),
    ...(f.change !== undefined ? { change: f.change } : {}),
    ...(f.patchset !== undefined ? { patchset: Number(f.patchset) } : {}),
    ...(f.author !== undefined ? { author: f.author } : {}),
    ...(f.subject !== undefined ? { subject: f.subject } : {}),
  };
  const change = parseOrThrow(SubmitChange, input, 'command line');
  const client = clientFor(f.server, f.tokenFile ? readToken(f.tokenFile) : undefined);
  const answer = await client.submit(change);
  const id = answer.builds[0];
  if (!f.wait || id === undefined) {
    const text = answer.builds.map((b) => `build ${buildName(b)} queued: ${change.pipeline} of ${change.project} change ${answer.change.change},${answer.change.patchset}\n`).join('');
    process.stdout.write(f.json ? `${JSON.stringify(answer)}\n` : text);
    return 0;
  }
  // On stderr also with --json: the id is known before the wait ends (or is interrupted).
  process.stderr.write(`airlock: build ${buildName(id)} queued: ${change.project} change ${answer.change.change},${answer.change.patchset}; following it (${client.server}/api/builds/${id})\n`);
  const b = await followWithProgress(client, id, { json: f.json, printLog: false });
  process.stdout.write(f.json ? `${JSON.stringify(b)}\n` : formatBuild(b, Date.now()));
  return b.result === 'passed' ? 0 : 1;
}

/** `logs` without -f: each job's stored log, with a `==> job <==` header when there are several. */
async function printLogs(client: CiClient, id: number, f: { job?: string; json?: boolean }): Promise<BuildView> {
  const b = await client.build(id);
  const jobs = f.job !== undefined ? [f.job] : b.jobs.filter((j) => j.state !== 'waiting' && j.state !== 'skipped').map((j) => j.name);
  const logs: { job: string; text: string }[] = [];
  for (const job of jobs) {
    try {
      logs.push({ job, text: await client.log(id, job) });
    } catch (e) {
      // A job that never got to write a log (cancelled before it ran) is not an error unless asked for by name.
      if (!(e instanceof NotFoundError) || f.job !== undefined) throw e;
    }
  }
  for (const { job, text } of logs) {
    if (f.json) process.stdout.write(`${JSON.stringify({ type: 'log', job, text } satisfies BuildEvent)}\n`);
    else process.stdout.write((logs.length > 1 ? `==> ${job} <==\n` : '') + sanitizeForTerminal(text) + (logs.length > 1 && !text.endsWith('\n') ? '\n' : ''));
  }
  if (f.json) process.stdout.write(`${JSON.stringify(finalEvent(b))}\n`);
  return b;
}

/**
 * `logs -f`: the live stream. Job logs go to stdout, the setup log (merge, environment) and the
 * progress to stderr; with --json every event goes to stdout. A build that is already finished is
 * shown as `logs` without -f shows it.
 */
async function followLogs(client: CiClient, id: number, f: { job?: string; json?: boolean }): Promise<BuildView> {
  const b = await client.build(id);
  if (b.state === 'finished') return printLogs(client, id, f);
  return followWithProgress(client, id, { json: f.json, printLog: true, ...(f.job !== undefined ? { job: f.job } : {}) });
}

async function followWithProgress(client: CiClient, id: number, o: { json?: boolean; printLog: boolean; job?: string }): Promise<BuildView> {
  const wanted = (e: BuildEvent): boolean => e.type === 'build' || o.job === undefined || e.job === o.job;
  if (o.json) return followBuild(client, id, (e) => o.printLog && wanted(e) && process.stdout.write(`${JSON.stringify(e)}\n`));
  const progress = createProgress({ build: await client.build(id), out: process.stderr });
  try {
    return await followBuild(client, id, (e) => {
      if (e.type !== 'log') progress.update(e);
      else if (o.printLog && wanted(e)) {
        const out = e.job === SETUP_JOB ? process.stderr : process.stdout;
        progress.log(e.text, (t) => out.write(sanitizeForTerminal(t)), out === process.stderr || Boolean(process.stdout.isTTY));
      }
    });
  } finally {
    progress.close();
  }
}

/** Runs a command body; with --json, an AirlockError is also printed as JSON on stdout before main.ts reports it. */
export async function withJsonErrors(json: boolean | undefined, body: () => Promise<unknown>): Promise<void> {
  try {
    await body();
  } catch (e) {
    if (json && e instanceof AirlockError) process.stdout.write(`${JSON.stringify({ error: e.toWire() })}\n`);
    throw e;
  }
}

function clientFor(server: string, token?: string): CiClient {
  return new CiClient({ server: parseServerUrl(server), ...(token !== undefined ? { token } : {}) });
}

function readToken(file: string): string {
  let token: string;
  try {
    token = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new InvalidInputError([{ file, path: '', message: `cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, severity: 'error' }]);
  }
  if (!token) throw new InvalidInputError([{ file, path: '', message: 'the token file is empty', severity: 'error' }]);
  return token;
}

function refArgs(build: string | undefined, f: RefFlags): { build?: string; change?: string; project?: string } {
  return { ...(build !== undefined ? { build } : {}), ...(f.change !== undefined ? { change: f.change } : {}), ...(f.project !== undefined ? { project: f.project } : {}) };
}

/** The CI's id of the build a reference names, asking the CI for a `--change` one; a note (an outdated patch set) goes to stderr. */
async function resolveBuild(client: CiClient, ref: BuildRef): Promise<number> {
  if (ref.kind === 'id') {
    if (ref.project !== undefined) checkBuildProject(ref, await client.build(ref.id));
    return ref.id;
  }
  const lookup = await client.lookupChange({ change: ref.change, ...(ref.project !== undefined ? { project: ref.project } : {}), ...(ref.patchset !== undefined ? { patchset: ref.patchset } : {}) });
  const { id, note } = resolveChangeRef(ref, lookup);
  if (note) process.stderr.write(`airlock: note: ${describeRef(ref)}: ${note}\n`);
  return id;
}

const badFlag = (path: string, message: string): InvalidInputError => new InvalidInputError([{ file: 'command line', path, message, severity: 'error' }]);

function finalEvent(b: BuildView): BuildEvent {
  return { type: 'build', state: b.state, ...(b.result ? { result: b.result } : {}), ...(b.reason ? { reason: b.reason } : {}) };
}

function summary(b: BuildView): string {
  const took = b.startedAt !== undefined && b.finishedAt !== undefined ? ` in ${formatDuration(b.finishedAt - b.startedAt)}` : '';
  return `${buildStatus(b)}${b.reason ? `: ${b.reason}` : ''}${took}`;
}

function formatGc(r: CiGcReport, dryRun: boolean): string {
  const t = r.retention;
  const verb = dryRun ? 'would delete' : 'deleted';
  const lines = [
    `retention: ${verb} the logs of ${t.logs.length} build(s), the artifacts of ${t.artifacts.length} job(s), ${t.orphans.length} orphaned build tree(s)` +
      (dryRun ? '' : `: ${t.deletedObjects} object(s), ${t.eventDirs} local event dir(s)`),
  ];
  if (r.images) {
    const mib = (r.images.freedBytes / 1024 / 1024).toFixed(1);
    lines.push(`images: removed ${r.images.removed.length} (${mib} MiB), kept ${r.images.kept}, pruned ${r.images.prunedDangling} dangling, removed ${r.images.removedContainers} dead container(s)`);
  } else lines.push(`images: ${dryRun ? 'not collected in a dry run' : 'skipped'}`);
  if (r.git) lines.push('git: gc --auto in every mirror');
  return lines.join('\n') + '\n';
}
