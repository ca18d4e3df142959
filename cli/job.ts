/**
 * `airlock job run` and `airlock job reap`: one hardened job through the runner, from the shell.
 */
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { AirlockError } from '#shared/errors.js';
import { createDocker } from '#shared/docker/client.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import { JobSpec, type JobSpecInput } from '#shared/schemas/job-spec.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { sanitizeForTerminal } from '#shared/runner/log-capture.js';
import { createLogger } from '#shared/logging.js';

const collect = (v: string, prev: string[]): string[] => [...prev, v];

interface RunFlags {
  image: string;
  id?: string;
  memory?: string;
  cpus?: string;
  pids?: string;
  timeout?: string;
  logCap?: string;
  workspace?: string;
  workspaceSize?: string;
  artifacts: string[];
  artifactsDir: string;
  env: string[];
  runtime?: string;
  policy?: string;
  stateDir: string;
  json?: boolean;
}

export function registerJobCommands(program: Command): void {
  const job = program.command('job').description('run one hardened job (the runner both tiers use)');
  job
    .command('run')
    .description('run one job in a hardened container and report its result')
    .requiredOption('--image <image>', 'image to run (must be present on the engine)')
    .option('--id <id>', 'job id (default: a random one)')
    .option('--memory <size>', 'memory limit, e.g. 256m (swap = memory)')
    .option('--cpus <n>', 'CPU limit, e.g. 0.5')
    .option('--pids <n>', 'process/thread limit')
    .option('--timeout <duration>', 'wall-clock limit, e.g. 30s')
    .option('--log-cap <size>', 'log bytes kept, e.g. 1m')
    .option('--workspace <dir>', 'directory copied (as a tar) into /workspace before the command runs')
    .option('--workspace-size <size>', 'size of the writable /workspace filesystem, e.g. 512m')
    .option('--artifacts <glob>', 'artifact glob relative to /workspace (repeatable)', collect, [])
    .option('--artifacts-dir <dir>', 'where artifacts are written', './artifacts')
    .option('--env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('--runtime <runtime>', 'runc or runsc (gVisor)')
    .option('--policy <file>', 'job policy file (default: policies/untrusted-job.yaml)')
    .option('--state-dir <dir>', 'runner state directory', process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock')
    .option('--json', 'print the result as one JSON object on stdout (log included, capped)')
    .argument('<command...>', 'the command to run, after --')
    .action(async (command: string[], flags: RunFlags) => {
      process.exitCode = await runJob(command, flags);
    });
  job
    .command('reap')
    .description('remove containers, volumes and loop devices left by dead runners')
    .option('--state-dir <dir>', 'runner state directory', process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock')
    .action(async (flags: { stateDir: string }) => {
      const runner = await JobRunner.create({ docker: createDocker(), policy: loadJobPolicy(), stateDir: flags.stateDir, workspacePool: 0 });
      const report = await runner.reap(); // create() reaped once; this pass reports what is still left
      await runner.close();
      process.stdout.write(`${JSON.stringify(report)}\n`);
    });
}

function toSpec(command: string[], f: RunFlags): JobSpec {
  const env: Record<string, string> = {};
  for (const kv of f.env) {
    const i = kv.indexOf('=');
    env[i < 0 ? kv : kv.slice(0, i)] = i < 0 ? '' : kv.slice(i + 1);
  }
  const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  const limits: Record<string, unknown> = {
    memory: f.memory,
    cpus: num(f.cpus),
    pids: num(f.pids),
    timeout: f.timeout,
    logCap: f.logCap,
    workspace: f.workspaceSize,
  };
  const input: JobSpecInput = {
    id: f.id ?? `cli-${randomBytes(4).toString('hex')}`,
    image: f.image,
    command,
    env,
    artifacts: f.artifacts,
    limits: Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== undefined)) as JobSpecInput['limits'],
    ...(f.runtime ? { runtime: f.runtime as 'runc' } : {}),
  };
  return parseOrThrow(JobSpec, input, 'command line');
}

async function runJob(command: string[], f: RunFlags): Promise<number> {
  const spec = toSpec(command, f);
  const runner = await JobRunner.create({
    docker: createDocker(),
    policy: loadJobPolicy(f.policy),
    stateDir: f.stateDir,
    workspacePool: 0, // one job: a pool would only format a workspace nobody uses
    logger: createLogger({ level: process.env.AIRLOCK_LOG_LEVEL ?? 'warn' }),
  });
  const ac = new AbortController();
  const onSignal = () => ac.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const result = await runner.run(spec, {
      signal: ac.signal,
      artifactsDir: resolve(f.artifactsDir),
      ...(f.workspace ? { source: { dir: resolve(f.workspace) } } : {}),
      ...(f.json ? {} : { onLog: (c) => (c.stream === 'stderr' ? process.stderr : process.stdout).write(sanitizeForTerminal(c.data.toString('utf8'))) }),
      includeLog: Boolean(f.json),
    });
    if (f.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else {
      const ms = (result.durations.totalMs / 1000).toFixed(2);
      const art = result.artifacts.length ? `, ${result.artifacts.length} artifact(s) in ${f.artifactsDir}` : '';
      process.stderr.write(`airlock: job ${result.jobId}: ${result.reason} (${result.runtime}, ${ms} s${art})\n`);
    }
    return result.passed ? 0 : 1;
  } catch (e) {
    if (f.json && e instanceof AirlockError) process.stdout.write(`${JSON.stringify({ error: e.toWire() })}\n`);
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await runner.close();
  }
}
