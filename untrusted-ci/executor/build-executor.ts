/**
 * CheckBuildExecutor: runs one build end to end on this host.
 *
 *   merger.prepare (change merged on the branch tip; conflict → result)
 *   → read .airlock.yaml from the merged commit and check all of it before anything runs: the
 *     file, its environment, the publish Dockerfile the trusted builder will build, the pipeline's
 *     jobs against the budget (absent or any error → config-error listing every issue at once)
 *   → environment ready and pinned (Dockerfile built once per content hash, or an allowlisted image)
 *   → compile jobs for the pipeline → export the merged tree as a tar
 *   → the jobs as a graph of their needs in the hardened runner: each as soon as the jobs it needs
 *     passed and an executor slot has room for its memory and CPUs, independent ones at once
 *     (skipped when a job it needs did not pass), each log streamed live to its own file and
 *     uploaded to the ArtifactStore, artifacts uploaded
 *   → result: passed when every voting job passed.
 * Everything it made (work dir, build ref, pin) is released whatever happens.
 *
 * Errors: an AirlockError that is the change's fault becomes a result here; a retryable one
 * (git, engine, storage) is thrown so the scheduler re-queues the build.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CancelledError, InvalidInputError, isAirlockError, PolicyViolationError, type Issue } from '#shared/errors.js';
import { phaseClock } from '#shared/phase-clock.js';
import type { Logger } from '#shared/logging.js';
import { AIRLOCK_YAML } from '#shared/repo-config/airlock-yaml.js';
import type { JobResult } from '#shared/runner/result.js';
import { runJobPlan, skipReason, type JobRunnerPort, type RunState } from '#shared/runner/job-plan.js';
import type { AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import type { BuildView, JobState } from '#shared/schemas/api/builds.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import type { JobSpec } from '#shared/schemas/job-spec.js';
import type { ArtifactStore } from '../storage/artifact-store.js';
import { artifactPrefix, logKey } from '../storage/keys.js';
import type { ProjectConfig } from '../config.js';
import type { EnvironmentPolicy } from '../schemas/environment-policy.js';
import type { BuildEvents } from '../logs/build-events.js';
import type { Merger } from '../merger/merger.js';
import type { BuildOutcome, BuildExecutor } from '../scheduler/scheduler.js';
import type { BuildStore } from '../store/build-store.js';
import { JobLog } from './job-log.js';
import { checkConfig, configErrorReason, planJobs, type RepoFiles } from './config-check.js';
import { Slots } from '../scheduler/slots.js';
import type { Egress, EgressRun } from '../egress/egress.js';
import { NO_EGRESS } from '../egress/policy.js';
import { jobNodes, type GateHooks } from '../pipelines/gate-runtime.js';
import type { RemoteJobs } from '../remote/dispatch.js';

const CONFIG_MAX_BYTES = 1024 * 1024; // 1 MiB, the YAML loader's own cap
/** Files and directories of a change's tree at most (a job's ext4 workspace of the default 2 GiB has about 131,000 inodes). */
const SOURCE_MAX_ENTRIES = 500_000;

/** What the environment step reads from the merged commit. */
export interface CommitReader {
  readFile(path: string, maxBytes: number): Promise<Buffer | undefined>;
  treeId(path: string): Promise<string | undefined>;
  archiveTree(path: string): Readable;
}

/** Makes a build environment ready and keeps it from the image GC until `release`. */
export interface EnvironmentProvider {
  prepare(req: {
    project: string;
    environment: AirlockYaml['environment'];
    commit: CommitReader;
    onLog: (line: string) => void;
    signal: AbortSignal;
  }): Promise<{ image: string; cached: boolean; release: () => void }>;
}

export interface CheckBuildExecutorOptions {
  store: BuildStore;
  events: BuildEvents;
  merger: Merger;
  runner: JobRunnerPort;
  environments: EnvironmentProvider;
  artifacts: ArtifactStore;
  policy: JobPolicy;
  /** The environment policy: the base-image allowlist the environment and publish Dockerfiles are checked against. */
  environmentPolicy: EnvironmentPolicy;
  projects: readonly ProjectConfig[];
  workDir: string;
  logger: Logger;
  /** Executor slots: taken around each job's container run, with room for its memory and CPUs. Absent: no limit beyond the scheduler's. */
  slots?: Slots;
  /** The gate, for gate builds: told when the job list is known and each job's result; starts each job. */
  gate?: GateHooks;
  /** Package sources for `network: packages` runs (policies/egress.yaml); absent: none, and a file that asks is refused. */
  egress?: Egress;
  /**
   * Executor hosts (remote/dispatch.ts): every job but a `network: packages` one runs on one of
   * them instead of `runner`, placed there by its memory and CPUs (the local slots are not taken).
   */
  remote?: RemoteJobs;
}

export class CheckBuildExecutor implements BuildExecutor {
  /**
   * Jobs made ready (workspace filled, container created) and waiting for a slot: at most as many
   * as there are slots, so a build of many parallel jobs does not fill a workspace for each of
   * them at once.
   */
  private readonly ready: Slots | undefined;

  constructor(private readonly o: CheckBuildExecutorOptions) {
    this.ready = o.slots ? new Slots(o.slots.size) : undefined;
  }

  /** A queued check's branch and change are fetched while it waits for a slot (Merger.prefetch). */
  queued(build: BuildView): Promise<void> {
    const project = this.o.projects.find((p) => p.name === build.project);
    return project && build.pipeline === 'check' ? this.o.merger.prefetch(project, build.branch, build.change.ref) : Promise.resolve();
  }

  async execute(build: BuildView, signal: AbortSignal): Promise<BuildOutcome> {
    const { o } = this;
    o.events.begin(build.id);
    const work = join(o.workDir, String(build.id));
    const releases: (() => unknown)[] = [];
    try {
      const outcome = await this.run(build, signal, work, releases);
      o.events.publish(build.id, { type: 'build', state: 'finished', result: outcome.result, reason: outcome.reason });
      return outcome;
    } catch (e) {
      if (signal.aborted) throw new CancelledError('build cancelled', { cause: e });
      throw e;
    } finally {
      for (const r of releases.reverse()) await Promise.resolve(r()).catch((e: unknown) => o.logger.warn({ err: e }, 'cleanup failed'));
      await o.events.end(build.id);
    }
  }

  private async run(build: BuildView, signal: AbortSignal, work: string, releases: (() => unknown)[]): Promise<BuildOutcome> {
    const { o } = this;
    const project = o.projects.find((p) => p.name === build.project);
    if (!project) return { result: 'config-error', reason: `project ${build.project} is not registered with this CI` };
    const say = (text: string): void => o.events.publish(build.id, { type: 'log', job: 'setup', text });
    const { phases, phase } = phaseClock();
    releases.push(() => o.logger.debug({ build: build.id, phases }, 'build phases (ms)'));

    // 1. The change merged onto the current branch tip (a gate build: after the changes ahead of it).
    const gate = o.gate ? await o.store.gateBuild(build.id) : undefined;
    const prep = await o.merger.prepare({
      project,
      branch: build.branch,
      changes: gate ? gate.stack : [{ ref: build.change.ref, label: `${build.change.change},${build.change.patchset}` }],
      buildId: String(build.id),
      signal,
      // A check tests its change on the branch as it was when it was enqueued, or later (Zuul's
      // check pipeline does the same): what a fetch since then found is used without fetching
      // again. The gate always fetches: it merges onto the branch as it is.
      ...(gate ? {} : { fetchedSince: build.enqueuedAt }),
    });
    releases.push(() => o.merger.release(String(build.id), project));
    phase('merge');
    if (prep.kind === 'conflict') return { result: 'merge-conflict', reason: prep.message, issues: prep.files.map((f) => issue(f, '', 'changed on both sides')) };
    if (prep.kind === 'missing') return { result: 'config-error', reason: prep.message };
    const commit = prep.commit;
    // A gate build run again after an infrastructure error must test what its first attempt did:
    // the gate may already hold that attempt's results and will submit the recorded commit.
    if (gate?.commit && gate.commit !== commit) {
      return { result: 'error', reason: `retried on a different state (${commit.slice(0, 12)}, first ${gate.commit.slice(0, 12)}): the gate tests this change again` };
    }
    await o.store.setCommit(build.id, commit);
    // What the branch must still be at when the gate submits this change: the state just before it.
    if (gate) await o.store.setBase(build.id, prep.steps.length >= 2 ? prep.steps[prep.steps.length - 2]!.result : prep.branchTip);
    say(`merged ${build.change.ref} onto ${build.branch} at ${prep.branchTip.slice(0, 12)}: ${commit}\n`);
    const reader: CommitReader = {
      readFile: (path, max) => o.merger.readFile(project, commit, path, max, signal),
      treeId: (path) => o.merger.treeId(project, commit, path, signal),
      archiveTree: (path) => o.merger.archiveTree(project, commit, path, signal),
    };

    // 2. The repo's own config, every problem listed.
    let text: Buffer | undefined;
    try {
      text = await reader.readFile(AIRLOCK_YAML, CONFIG_MAX_BYTES);
    } catch (e) {
      if (isAirlockError(e) && !e.retryable) return { result: 'config-error', reason: e.message, issues: [issue(AIRLOCK_YAML, '', e.message)] };
      throw e;
    }
    if (!text) return { result: 'config-error', reason: `no ${AIRLOCK_YAML} in the repository`, issues: [issue(AIRLOCK_YAML, '', 'file not found')] };
    const checked = await checkConfig(text.toString('utf8'), { job: o.policy, environments: o.environmentPolicy, egress: o.egress?.policy ?? NO_EGRESS }, repoFiles(reader), { pipelines: [build.pipeline] });
    if (!checked.cfg) return configError(checked.issues);
    const cfg = checked.cfg;
    for (const w of checked.issues) say(`[airlock] warning: ${w.file}: ${w.path || '(root)'}: ${w.message}\n`);
    phase('config');

    // 3. The environment, pinned for the whole build.
    let env: { image: string; cached: boolean; release: () => void };
    try {
      env = await o.environments.prepare({ project: project.name, environment: cfg.environment, commit: reader, onLog: (line) => say(line), signal });
    } catch (e) {
      if (e instanceof PolicyViolationError) return configError([...e.issues]);
      if (isAirlockError(e) && e.code === 'AIRLOCK_E_ENVIRONMENT_BUILD_FAILED') return { result: 'failed', reason: `the build environment failed to build: ${e.message}` };
      if (isAirlockError(e) && !e.retryable && e.httpStatus < 500) return { result: 'config-error', reason: e.message, issues: [issue('environment', '', e.message)] };
      throw e;
    }
    releases.push(env.release);
    phase('environment');
    await o.store.setEnvironment(build.id, env.image, env.cached);
    say(env.cached ? `environment ${env.image} (cached)\n` : `environment ${env.image} (built)\n`);

    // 4. Jobs.
    const compiled = planJobs(cfg, o.policy, {
      buildId: build.id,
      attempt: build.attempt,
      pipeline: build.pipeline,
      image: env.image,
      vars: { project: project.name, branch: build.branch, change: build.change.change, patchset: build.change.patchset, commit },
    });
    if (compiled.issues.length > 0) return configError(compiled.issues);
    await o.store.planJobs(build.id, compiled.jobs.map((j) => ({ name: j.name, voting: j.voting, timeoutMs: j.spec.limits.timeout ?? o.policy.limits.timeout })));
    if (gate) o.gate?.prepared(build, { kind: 'ok', jobs: jobNodes(compiled.jobs) });

    await mkdir(work, { recursive: true });
    releases.push(() => rm(work, { recursive: true, force: true }));
    const tar = join(work, 'source.tar');
    // What cannot fit the job's workspace is not written out on this host either.
    const cap = { maxBytes: o.policy.limits.workspace, maxEntries: SOURCE_MAX_ENTRIES };
    try {
      await o.merger.exportTar(project, commit, tar, cap, signal);
    } catch (e) {
      if (e instanceof InvalidInputError) return { result: 'failed', reason: `the source tree cannot be used: ${e.message}`, issues: [...e.issues] };
      throw e;
    }
    phase('source');

    // The jobs as a graph of their needs (shared/runner/job-plan.ts): a job starts once the jobs it
    // needs passed, alongside any other ready job, each when the executor slots have room for its
    // limits (scheduler/slots.ts). Cancelled, even during the last job, it throws CancelledError
    // once the running jobs ended: the scheduler decides what that is (cancelled, superseded,
    // shutdown), not a failure.
    // A job that throws (the engine failed: the build is run again) stops its running siblings
    // too, rather than leaving the retry to wait for them: they see `jobs`, the build's signal or this.
    const stopJobs = new AbortController();
    const jobs = AbortSignal.any([signal, stopJobs.signal]);
    const plan = await runJobPlan(compiled.jobs, {
      signal,
      skipped: (job, blocked) => this.setJob(build.id, job.name, 'skipped', skipReason(blocked)),
      run: async (job) => {
        if (gate) await o.gate?.awaitStart(build, job.name, jobs);
        const state = await this.runJob(build.id, job.name, job.spec, tar, work, jobs).catch((e: unknown) => {
          stopJobs.abort(e);
          throw e;
        });
        // Before the plan learns the result: a job that needs this one then waits in awaitStart
        // until the model, told first, has started it.
        if (gate) o.gate?.jobDone(build, job.name, state);
        return state;
      },
    });
    phase('jobs'); // the jobs overlap: one figure for them all
    const failed = plan.failedVoting;
    if (failed.length === 0) return { result: 'passed', reason: `${plan.voting} voting job${plan.voting === 1 ? '' : 's'} passed` };
    return { result: 'failed', reason: `failed: ${failed.join(', ')}` };
  }

  private async runJob(buildId: number, name: string, spec: JobSpec, tar: string, work: string, signal: AbortSignal): Promise<RunState> {
    const { o } = this;
    const log = await JobLog.open(join(o.events.buildDir(buildId), 'logs', `${name}.log`));
    const artifactsDir = join(work, 'artifacts', name);
    let result: JobResult;
    let releaseSlot: (() => void) | undefined;
    let releaseReady: (() => void) | undefined;
    let packages: EgressRun | undefined;
    const remote = spec.network === 'packages' ? undefined : o.remote;
    const onLog = (data: Buffer): void => {
      log.write(data);
      o.events.publish(buildId, { type: 'log', job: name, text: data.toString('utf8') });
    };
    try {
      if (remote) {
        // On an executor host: running from the moment a host claims it with a free slot (again, if
        // it is taken back), or starts it after a claim ahead (a job waiting there for a slot is
        // still queued).
        result = await remote.run({
          build: buildId,
          job: name,
          spec,
          source: tar,
          ...(spec.artifacts.length > 0 ? { artifactsDir } : {}),
          signal,
          onLog,
          onClaimed: async (host, ahead) => {
            if (!ahead) await this.setJob(buildId, name, 'running');
            onLog(Buffer.from(ahead ? `[airlock] on executor host ${host}, made ready there while its slots are busy\n` : `[airlock] on executor host ${host}\n`));
          },
          onStarted: async () => this.setJob(buildId, name, 'running'),
        });
      } else {
        // A slot with room for the job's memory and CPUs, taken once the job's container is
        // ready (the runner's beforeStart): the next jobs' containers are made while the slots
        // run containers. A job larger than the host's whole capacity is refused at once (a
        // PolicyViolationError: the job fails with it, below). (The job's own limits where it
        // asked, the policy's elsewhere: what the runner gives it.)
        const need = { memory: spec.limits.memory ?? o.policy.limits.memory, cpus: spec.limits.cpus ?? o.policy.limits.cpus };
        o.slots?.refuseTooLarge(need);
        const say = (text: string) => onLog(Buffer.from(text));
        releaseReady = await this.ready?.acquire(signal);
        packages = spec.network === 'packages' ? o.egress?.forRun('jobs', say) : undefined;
        result = await o.runner.run(spec, {
          beforeStart: async () => {
            releaseSlot = await o.slots?.acquire(signal, need);
            releaseReady?.();
            // Running from the moment it has an executor slot: a job waiting for one is still queued.
            await this.setJob(buildId, name, 'running');
          },
          ...(packages ? { packages: packages.handlers } : {}),
          signal,
          source: { tar },
          includeLog: false,
          ...(spec.artifacts.length > 0 ? { artifactsDir } : {}),
          onLog: (chunk) => onLog(chunk.data),
        });
      }
    } catch (e) {
      await log.close();
      if (signal.aborted) throw e;
      if (isAirlockError(e) && !e.retryable) {
        // The job asked for something the runner refused: the change's fault, with the reason.
        await this.setJob(buildId, name, 'failed', e.message);
        return 'failed';
      }
      throw e;
    } finally {
      releaseReady?.();
      releaseSlot?.();
    }
    const text = packages?.summary();
    if (text) {
      log.write(Buffer.from(text));
      o.events.publish(buildId, { type: 'log', job: name, text });
    }
    const bytes = await log.close();
    await o.artifacts.putFile(logKey(String(buildId), name), log.file);
    let artifacts: { path: string; bytes: number }[] = [];
    if (result.artifacts.length > 0) {
      await o.artifacts.putDirectory(artifactPrefix(String(buildId), name), artifactsDir);
      artifacts = result.artifacts.filter((a) => a.kind === 'file').map((a) => ({ path: a.path, bytes: a.bytes }));
    }
    const state: RunState = result.passed ? 'passed' : result.cancelled ? 'cancelled' : 'failed';
    await o.store.updateJob(buildId, name, { state, reason: result.reason, exitCode: result.exitCode, logBytes: bytes, artifacts });
    o.events.publish(buildId, { type: 'job', job: name, state, reason: result.reason });
    return state;
  }

  private async setJob(buildId: number, name: string, state: JobState, reason?: string): Promise<void> {
    await this.o.store.updateJob(buildId, name, { state, ...(reason !== undefined ? { reason } : {}) });
    this.o.events.publish(buildId, { type: 'job', job: name, state, ...(reason !== undefined ? { reason } : {}) });
  }
}

/** The merged commit as the config checks read it. */
function repoFiles(reader: CommitReader): RepoFiles {
  return {
    readFile: async (path, maxBytes) => (await reader.readFile(path, maxBytes))?.toString('utf8'),
    isDirectory: async (path) => {
      try {
        return (await reader.treeId(path === '.' ? '' : path)) !== undefined ? true : undefined;
      } catch (e) {
        if (e instanceof InvalidInputError) return false; // there, but not a directory
        throw e;
      }
    },
  };
}

function issue(file: string, path: string, message: string): Issue {
  return { file, path, message, severity: 'error' };
}

function configError(issues: Issue[]): BuildOutcome {
  return { result: 'config-error', reason: configErrorReason(issues), issues };
}
