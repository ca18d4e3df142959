/**
 * `airlock executor serve --config executor.yaml`: an executor host (untrusted-ci/remote/
 * executor-host.ts) until SIGINT/SIGTERM. It claims jobs from the CI named in its config and runs
 * them on this host's Docker engine.
 */
import { availableParallelism, totalmem } from 'node:os';
import type { Command } from 'commander';
import { createDocker } from '#shared/docker/client.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { loadExecutorConfig } from '../untrusted-ci/remote/executor-config.js';
import { ExecutorHost, offeredRuntimes } from '../untrusted-ci/remote/executor-host.js';
import { capacityFor } from '../untrusted-ci/scheduler/capacity.js';
import { engineTarget, startSentinel } from '../untrusted-ci/remote/sentinel.js';

export function registerExecutorCommands(program: Command): void {
  const executor = program.command('executor').description('an executor host: runs the CI\'s jobs on this host\'s Docker engine');
  executor
    .command('serve')
    .description('claim jobs from the CI and run them until SIGINT/SIGTERM')
    .requiredOption('--config <file>', 'executor.yaml')
    .action(async (f: { config: string }) => serveExecutor(f.config, process.env.AIRLOCK_LOG_LEVEL));
}

async function serveExecutor(file: string, logLevel: string | undefined): Promise<void> {
  const { config: c, token } = loadExecutorConfig(file);
  const logger = createLogger({ name: 'airlock-executor', ...(logLevel ? { level: logLevel } : {}) });
  const docker = createDocker(c.docker);
  const policy = loadJobPolicy(c.policies.job);
  const runner = await JobRunner.create({ docker, policy, stateDir: c.stateDir, logger, workspacePool: Math.min(c.slots, 4) });
  // The runtimes this host offers: the policy's, where the engine has them (runc always does), and
  // runsc only where it passed this host's self-test (executor-host.ts, offeredRuntimes).
  const info = (await docker.info()) as { Runtimes?: Record<string, unknown> };
  const runtimes = offeredRuntimes(policy, Object.keys(info.Runtimes ?? {}), c.stateDir);
  // Stops this host's job containers should this process die or stall (untrusted-ci/remote/sentinel.ts).
  const sentinel = startSentinel(engineTarget(c.docker ?? process.env.DOCKER_HOST), runner.owner, (code) => logger.error({ code }, 'the sentinel exited'));
  const cap = capacityFor(c.slots, { ...c.capacity, overtakes: 0 }, { memory: totalmem(), cpus: availableParallelism() });
  const host = new ExecutorHost({
    name: c.name,
    ciUrl: c.ci.url,
    token,
    docker,
    runner,
    policy,
    capacity: { slots: cap.slots, memory: cap.memory, cpus: cap.cpus },
    runtimes,
    workDir: c.workDir,
    imagesKept: c.imagesKept,
    claimAhead: c.claimAhead ?? cap.slots,
    logger,
    sentinel,
  });
  await host.start();
  process.stderr.write(`airlock: executor host ${c.name} claiming jobs from ${c.ci.url} (${cap.slots} slots)\n`);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  process.stderr.write(`airlock: ${signal}: stopping (running jobs are stopped; the CI runs them again elsewhere)\n`);
  const force = (): void => process.exit(3);
  process.once('SIGINT', force);
  process.once('SIGTERM', force);
  await host.close();
  await runner.close();
  sentinel.close();
  process.exit(0);
}
