/**
 * The untrusted CI service's configuration: one YAML file, validated once at startup against a strict
 * schema (unknown keys are errors, every problem is listed), deep-frozen and handed to constructors.
 * Nothing reads `process.env` after `loadCiConfig`. Defaults live in the schema, each with its unit.
 *
 * Credentials never appear in this file: the webhook secret, the API token, the hint key and the
 * review system's account are *paths* to files (mode 0600 by convention), read once here. None
 * writes a git ref (docs/review.md): the webhook secret only authenticates the code-review system
 * to us; the review account may vote Verified and ask for a submit, which the review system's own
 * rules decide.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { isAbsolute, resolve, dirname } from 'node:path';
import { deepFreeze } from '#shared/deep-freeze.js';
import { readConfigFile, readSecretFile, resolvedNote } from '#shared/config-file.js';
import { z } from 'zod';
import { DEFAULT_WINDOW, WindowConfig, windowProblems } from './pipelines/model/window.js';
import { InvalidInputError, type Issue } from '#shared/errors.js';
import { remoteUrlProblem } from '#shared/git/git.js';
import { zodIssues } from '#shared/schemas/issues.js';
import { Size } from '#shared/schemas/limits.js';
import { ArtifactStoreConfig } from './storage/config.js';
import { ExecutorName } from './remote/protocol.js';

/** A project URL that is a path on this host (no `scheme:` or `<transport>::`, not scp-like). */
const isLocalPath = (u: string): boolean => !/^[A-Za-z][A-Za-z0-9+.-]*:/.test(u) && !u.includes('@');

/** Project names are path segments of URLs, storage keys and image names: keep them boring. */
export const ProjectName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/, 'project names are letters, digits and . _ / -')
  .refine((n) => !n.split('/').some((s) => s === '' || s === '.' || s === '..'), 'no empty, . or .. segments');

export const ProjectConfig = z
  .object({
    name: ProjectName,
    /** What the merger fetches from (`remoteUrlProblem`): https://, ssh://, file://, scp-like, or a local path. */
    url: z
      .string()
      .min(1)
      .max(2048)
      .superRefine((u, ctx) => {
        // Checked here, at startup, by the merger's own rule; a relative path as the absolute path it becomes.
        const problem = remoteUrlProblem(isLocalPath(u) && !u.startsWith('-') ? `/${u}` : u);
        if (problem) ctx.addIssue({ code: 'custom', message: `not a fetchable git URL: ${problem}` });
      }),
    /** Branches whose changes are checked; empty: all. */
    branches: z.array(z.string().min(1).max(255)).max(256).default([]),
  })
  .strict();
export type ProjectConfig = z.infer<typeof ProjectConfig>;

const Vote = z.number().int().min(-100).max(100);
const KINDS = ['REWORK', 'TRIVIAL_REBASE', 'MERGE_FIRST_PARENT_UPDATE', 'NO_CODE_CHANGE', 'NO_CHANGE'] as const;

export const ReviewConfig = z
  .object({
    kind: z.literal('gerrit'),
    /** The review system's base URL (`https://review.example.org`); no credentials in it. */
    url: z.string().url().max(2048),
    /**
     * A JSON file `{"username": …, "password": …}` (mode 0600): airlock's own account and its HTTP
     * password. In the review system it needs only to read changes, vote on the `votes.label` label
     * and submit; never to push.
     */
    credentialsFile: z.string().min(1),
    /**
     * What approves a change for the gate: `label` at `value` or more from someone other than airlock
     * and (unless `selfApproval`) other than the change's owner and its current uploader, and no
     * `-value`. Keep it in step with the builder's policy, which refuses what it would not accept.
     */
    approval: z
      .object({ label: z.string().min(1).max(100).default('Code-Review'), value: z.number().int().min(1).max(100).default(2), selfApproval: z.boolean().default(false) })
      .strict()
      .default({ label: 'Code-Review', value: 2, selfApproval: false }),
    /** airlock's votes: check pass/fail, gate pass/fail (the gate also sets 0 when it starts). */
    votes: z
      .object({
        label: z.string().min(1).max(100).default('Verified'),
        check: z.object({ pass: Vote.default(1), fail: Vote.default(-1) }).strict().default({ pass: 1, fail: -1 }),
        gate: z.object({ pass: Vote.default(2), fail: Vote.default(-2) }).strict().default({ pass: 2, fail: -2 }),
      })
      .strict()
      .default({ label: 'Verified', check: { pass: 1, fail: -1 }, gate: { pass: 2, fail: -2 } }),
    /** Patch set kinds on which the approval label's votes carry over (the review system's own rule; Gerrit's default). */
    copyOnKinds: z.array(z.enum(KINDS)).max(5).default(['TRIVIAL_REBASE', 'NO_CHANGE']),
    /** How often changes updated in the review system are read back (catch-up); 0: only at start. */
    catchUpEveryMs: z.number().int().min(0).default(5 * 60_000), // 5 min
    /** Deadline of one call to the review system. */
    timeoutMs: z.number().int().min(100).max(600_000).default(30_000), // 30 s
  })
  .strict();
export type ReviewConfig = z.infer<typeof ReviewConfig>;

export const CiConfig = z
  .object({
    version: z.literal(1),
    listen: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(8080),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 8080 }),
    /** The service's own state: the SQLite database (the default engine), git mirrors, live logs, work files. */
    dataDir: z.string().min(1),
    /**
     * Where the CI's state lives (untrusted-ci/store/sql.ts): `sqlite` (default) is a file in
     * `dataDir`, for one host; `postgres` is a server several replicas share. Its URL, with the
     * password, is in `urlFile` (never in this file, never logged).
     */
    database: z
      .discriminatedUnion('engine', [
        z.object({ engine: z.literal('sqlite') }).strict(),
        z
          .object({
            engine: z.literal('postgres'),
            urlFile: z.string().min(1),
            /** Connections this process opens at most. */
            maxConnections: z.number().int().min(1).max(100).default(10),
          })
          .strict(),
      ])
      .default({ engine: 'sqlite' }),
    /** Where the job runner keeps workspaces and the runsc self-test (the bootstrap's directory). */
    runnerStateDir: z.string().min(1).default('/var/lib/airlock'),
    /** Job containers and environment builds at once on this host (a build's independent jobs each take one). */
    slots: z.number().int().min(1).max(256).default(2),
    /**
     * What the running jobs' limits may add up to on this host (untrusted-ci/scheduler/capacity.ts);
     * a job waits for room, and one larger than all of it fails. Absent figures come from the machine
     * at start: memory its total minus `reserve` (at least half of it), CPUs `availableParallelism()`.
     */
    capacity: z
      .object({
        memory: Size.optional(),
        reserve: Size.default(1024 ** 3),
        cpus: z.number().min(0.01).max(4096).optional(),
        /** How often later jobs that fit may pass one that waits for room, before they wait behind it (0: strict FIFO). */
        overtakes: z.number().int().min(0).max(1000).default(4),
      })
      .strict()
      .default({ reserve: 1024 ** 3, overtakes: 4 }),
    projects: z.array(ProjectConfig).max(10_000).default([]),
    artifactStore: ArtifactStoreConfig.optional(),
    policies: z
      .object({
        job: z.string().optional(),
        environments: z.string().optional(),
        retention: z.string().optional(),
        /** policies/egress.yaml: the package sources `network: packages` runs may reach (docs/dependencies.md). */
        egress: z.string().optional(),
      })
      .strict()
      .default({}),
    webhooks: z
      .object({
        /** File holding the shared secret that signs Gerrit webhook bodies; absent: the hook is off. */
        gerritSecretFile: z.string().optional(),
        /** Webhook requests per minute per client address. */
        ratePerMinute: z.number().int().min(1).max(1_000_000).default(600),
      })
      .strict()
      .default({ ratePerMinute: 600 }),
    api: z
      .object({
        /** File holding the bearer token POST /api/changes (a check) needs; absent: open (loopback only). */
        tokenFile: z.string().optional(),
        /** File holding another bearer token, the one POST /api/builds/:id/cancel needs; absent: cancel is open only when no token is set at all (loopback only). */
        cancelTokenFile: z.string().optional(),
        /** Largest request body accepted anywhere. */
        bodyLimit: Size.default(1024 * 1024), // 1 MiB
      })
      .strict()
      .default({ bodyLimit: 1024 * 1024 }),
    /** How often the image cache is trimmed to its budget (0: only by `airlock ci gc`). */
    imageGcEveryMs: z.number().int().min(0).default(10 * 60_000), // 10 min
    /**
     * Several replicas on one PostgreSQL database (untrusted-ci/leadership.ts): the leader holds a
     * lease of `leaseMs`; `advertiseUrl` is how the other replicas reach this one (default: the
     * listen address, with a wildcard host read as loopback).
     */
    replicas: z
      .object({
        leaseMs: z.number().int().min(1000).max(600_000).default(10_000),
        advertiseUrl: z.url({ protocol: /^https?$/ }).optional(),
      })
      .strict()
      .default({ leaseMs: 10_000 }),
    /**
     * Executor hosts (`airlock executor serve`, untrusted-ci/remote/): each named, with a token of
     * its own. With any listed, the jobs run on them (a `network: packages` job still runs on this
     * host); the leader takes a job back from a host that has not renewed its lease in `leaseMs`,
     * and a leader that starts (a restart, a takeover) hands out no job for one `leaseMs`.
     */
    executors: z
      .object({
        hosts: z
          .array(z.object({ name: ExecutorName, tokenFile: z.string().min(1) }).strict())
          .max(10_000)
          .default([]),
        leaseMs: z.number().int().min(1000).max(600_000).default(15_000),
      })
      .strict()
      .default({ hosts: [], leaseMs: 15_000 }),
    /**
     * Promotion hints to the trusted builder, one per gate merge (a durable outbox, retried). The
     * secret only authenticates the hint: the builder re-verifies everything a hint says.
     */
    hints: z
      .object({
        url: z
          .string()
          .url()
          .max(2048)
          .refine((u) => !/\/v1\/hints\/?$/.test(new URL(u).pathname), "the builder's base URL, without /v1/hints (hints go to <url>/v1/hints)"),
        secretFile: z.string().min(1),
      })
      .strict()
      .optional(),
    /**
     * The code-review system the projects live in: where votes and messages go, where approvals
     * come from, and who merges (the review system, asked by the gate). Absent: no votes, and
     * nothing enters the gate (airlock never merges by itself).
     */
    review: ReviewConfig.optional(),
    /** The CI's address as people reach it: links in the review system's messages. Default: http://<listen.host>:<listen.port>. */
    publicUrl: z.string().url().max(2048).optional(),
    /** The gate (Zuul's dependent pipeline). */
    gate: z
      .object({
        /** The active window of each change queue (Zuul's defaults: 20, floor 3, +1 per merge, halved per failure). */
        window: WindowConfig.default(DEFAULT_WINDOW),
        /** Shared change queues: name → projects gated together (a project in one queue at most). */
        queues: z.record(z.string().min(1).max(200), z.array(z.string().min(1).max(200)).min(1).max(10_000)).default({}),
      })
      .strict()
      .default({ window: DEFAULT_WINDOW, queues: {} }),
  })
  .strict();
export type CiConfig = z.infer<typeof CiConfig>;
export type CiConfigInput = z.input<typeof CiConfig>;

/** A loaded config plus the secrets its files named, read once. */
export interface LoadedCiConfig {
  readonly config: Readonly<CiConfig>;
  /** The config file it was read from (for messages). */
  readonly file?: string;
  readonly gerritSecret?: Buffer;
  readonly apiToken?: string;
  readonly cancelToken?: string;
  /** The HMAC key of promotion hints (`hints.secretFile`). */
  readonly hintSecret?: Buffer;
  /** airlock's account in the review system (`review.credentialsFile`). */
  readonly reviewCredentials?: { username: string; password: string };
  /** The PostgreSQL URL (`database.urlFile`), with its password. */
  readonly databaseUrl?: string;
  /** Each executor host's token (`executors.hosts[].tokenFile`), by host name. */
  readonly executorTokens?: ReadonlyMap<string, string>;
}

const Credentials = z.object({ username: z.string().min(1).max(256), password: z.string().min(1).max(4096) }).strict();

/** Validate a config value (already parsed from YAML or built in code); relative paths resolve against `baseDir`. */
export function buildCiConfig(input: unknown, file: string, baseDir = process.cwd()): LoadedCiConfig {
  const r = CiConfig.safeParse(input);
  if (!r.success) throw new InvalidInputError(zodIssues(r.error, file));
  const config = r.data;
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));
  config.dataDir = abs(config.dataDir);
  config.runnerStateDir = abs(config.runnerStateDir);
  for (const k of ['job', 'environments', 'retention', 'egress'] as const) if (config.policies[k]) config.policies[k] = abs(config.policies[k]!);
  if (config.artifactStore?.kind === 'fs') config.artifactStore.root = abs(config.artifactStore.root);
  const issues: Issue[] = [];
  const names = new Set<string>();
  config.projects.forEach((p, i) => {
    if (names.has(p.name)) issues.push({ file, path: `projects[${i}].name`, message: `duplicate project ${p.name}`, severity: 'error' });
    names.add(p.name);
    if (isLocalPath(p.url)) p.url = abs(p.url);
  });
  const readSecret = (path: string | undefined, at: string): Buffer | undefined => (path ? readSecretFile(path, at, file, baseDir, issues) : undefined);

  const inQueue = new Map<string, string>();
  for (const [q, ps] of Object.entries(config.gate.queues)) {
    for (const p of ps) {
      if (inQueue.has(p)) issues.push({ file, path: `gate.queues.${q}`, message: `project ${p} is already in queue ${inQueue.get(p)}`, severity: 'error' });
      else if (!names.has(p)) issues.push({ file, path: `gate.queues.${q}`, message: `project ${p} is not registered`, severity: 'error' });
      inQueue.set(p, q);
    }
  }
  for (const p of windowProblems(config.gate.window)) issues.push({ file, path: 'gate.window', message: p, severity: 'error' });
  const gerritSecret = readSecret(config.webhooks.gerritSecretFile, 'webhooks.gerritSecretFile');
  const apiToken = readSecret(config.api.tokenFile, 'api.tokenFile')?.toString('utf8');
  const cancelToken = readSecret(config.api.cancelTokenFile, 'api.cancelTokenFile')?.toString('utf8');
  if (apiToken && cancelToken && apiToken === cancelToken) issues.push({ file, path: 'api.cancelTokenFile', message: 'must hold another token than api.tokenFile (who may submit must not thereby cancel)', severity: 'error' });
  // Beyond loopback, anyone who reaches the port could submit and cancel: both tokens are required.
  if (!isLoopback(config.listen.host)) {
    for (const [k, v] of [['tokenFile', config.api.tokenFile], ['cancelTokenFile', config.api.cancelTokenFile]] as const) {
      if (!v) issues.push({ file, path: `api.${k}`, message: `required when the service listens beyond loopback (listen.host ${config.listen.host})`, severity: 'error' });
    }
  }
  const hintSecret = config.hints ? readSecret(config.hints.secretFile, 'hints.secretFile') : undefined;
  let reviewCredentials: { username: string; password: string } | undefined;
  if (config.review) {
    const written = config.review.credentialsFile;
    config.review.credentialsFile = abs(written);
    try {
      const parsed = Credentials.safeParse(JSON.parse(readFileSync(config.review.credentialsFile, 'utf8')) as unknown);
      if (parsed.success) reviewCredentials = parsed.data;
      else issues.push({ file, path: 'review.credentialsFile', message: 'must hold JSON {"username": "…", "password": "…"}', severity: 'error' });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      issues.push({ file, path: 'review.credentialsFile', message: code ? `cannot read ${config.review.credentialsFile}: ${code}${resolvedNote(written, baseDir, file)}` : 'must hold JSON {"username": "…", "password": "…"}', severity: 'error' });
    }
  }
  let databaseUrl: string | undefined;
  if (config.database.engine === 'postgres') {
    const written = config.database.urlFile;
    config.database.urlFile = abs(written);
    try {
      databaseUrl = readFileSync(config.database.urlFile, 'utf8').trim();
      const proto = URL.canParse(databaseUrl) ? new URL(databaseUrl).protocol : '';
      if (proto !== 'postgres:' && proto !== 'postgresql:') {
        issues.push({ file, path: 'database.urlFile', message: `must hold one postgres://user:password@host:port/database URL (${config.database.urlFile} does not)`, severity: 'error' });
        databaseUrl = undefined;
      }
    } catch (e) {
      issues.push({ file, path: 'database.urlFile', message: `cannot read ${config.database.urlFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}${resolvedNote(written, baseDir, file)}`, severity: 'error' });
    }
  }
  const executorTokens = new Map<string, string>();
  config.executors.hosts.forEach((h, i) => {
    if (executorTokens.has(h.name)) issues.push({ file, path: `executors.hosts[${i}].name`, message: `duplicate executor host ${h.name}`, severity: 'error' });
    const t = readSecret(h.tokenFile, `executors.hosts[${i}].tokenFile`)?.toString('utf8');
    if (t === undefined) return;
    const others: [string, string | undefined][] = [
      ['the submit token (api.tokenFile)', apiToken],
      ['the cancel token (api.cancelTokenFile)', cancelToken],
      ['the webhook secret', gerritSecret?.toString('utf8')],
      ['the hint secret', hintSecret?.toString('utf8')],
    ];
    const same = [...executorTokens.entries()].find(([, v]) => v === t)?.[0] ?? others.find(([, v]) => v === t)?.[0];
    if (same) issues.push({ file, path: `executors.hosts[${i}].tokenFile`, message: `must hold a token of its own (the same as ${same}'s)`, severity: 'error' });
    executorTokens.set(h.name, t);
  });
  if (issues.length > 0) throw new InvalidInputError(issues);
  return {
    config: deepFreeze(config),
    ...(executorTokens.size > 0 ? { executorTokens } : {}),
    ...(databaseUrl ? { databaseUrl } : {}),
    file,
    ...(gerritSecret ? { gerritSecret } : {}),
    ...(apiToken ? { apiToken } : {}),
    ...(cancelToken ? { cancelToken } : {}),
    ...(hintSecret ? { hintSecret } : {}),
    ...(reviewCredentials ? { reviewCredentials } : {}),
  };
}

/** Whether a listen address is this host's loopback only. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** Read and validate the config file. */
/**
 * Read, validate and check `file`: a policy file it names must exist, or the error names the path,
 * what a relative one was resolved against, and the fix.
 */
export function loadCiConfig(file: string): LoadedCiConfig {
  const raw = readConfigFile(file);
  const baseDir = dirname(resolve(file));
  const loaded = buildCiConfig(raw, file, baseDir);
  const written = CiConfig.shape.policies.safeParse((raw as { policies?: unknown }).policies);
  const issues: Issue[] = [];
  for (const k of ['job', 'environments', 'retention', 'egress'] as const) {
    const p = loaded.config.policies[k];
    if (p && !(existsSync(p) && statSync(p).isFile())) {
      issues.push({ file, path: `policies.${k}`, message: `${p} is not a readable file${resolvedNote(written.success ? written.data[k] : undefined, baseDir, file)}`, severity: 'error' });
    }
  }
  if (issues.length > 0) throw new InvalidInputError(issues);
  return loaded;
}
