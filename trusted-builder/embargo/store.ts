/**
 * The embargo store: embargoed patches, their logs and artifacts, and what happened to them, in the
 * builder's data dir (`<dataDir>/embargo/files/`), every byte sealed (sealed-files.ts: encrypted to
 * the embargo key and every team key, signed by the embargo key). Nothing about an embargo is in
 * clear on disk: file names are random, unrelated to embargo ids; the index that maps ids to
 * projects, digests and files is itself a sealed file (`index.pgp`), decrypted into memory at open.
 *
 * The audit log is readable by the builder's operators, who are not the security team, so even a
 * project name is sensitive there (it tells that the project has an undisclosed vulnerability):
 * the store's audit records (kind `embargo`) carry the embargo id, the patch digest and who acted,
 * never a project, a commit (it names a repository), a reason, a file name or patch content.
 *
 * Single writer (one builder process per data dir, like the audit log). Operations run one at a
 * time in call order; a mutation writes its sealed files, then the index, then changes memory, so
 * a failure leaves the store as it was (files written before a failed index write are swept at
 * the next open). At open the store also re-encrypts every file when the team changed since the
 * files were written (a removed member's key then reads nothing new or old in this directory).
 */
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { z } from 'zod';
import { ConflictError, NotFoundError, PayloadTooLargeError, StorageFailedError } from '#shared/errors.js';
import { ProjectName } from '#shared/schemas/events/trigger.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import type { AuditLog } from '../audit/audit-log.js';
import type { EmbargoKey } from './embargo-key.js';
import { SealedFiles } from './sealed-files.js';
import type { SecurityTeam } from './team.js';
import { ArtifactInfo, BreakInfo, BuildInfo, EmbargoSummary, PatchText, ReplacedInfo, RetiredInfo, type BreakStep, type EmbargoDetail, type EmbargoState } from './wire.js';

/** Breaks kept per embargo (the newest). */
const MAX_BREAKS = 50;
/** Log kept per embargo: the newest chunks up to this many bytes. */
const MAX_LOG_BYTES = 16 * 1024 * 1024; // 16 MiB
const MAX_ARTIFACT_BYTES = 256 * 1024 * 1024; // 256 MiB
const INDEX = 'index';
/** Who retires an embargo when nobody asked: the builder, finding the fix in the public history. */
const AUTOMATIC = 'airlock (automatic)';
const FileName = z.string().regex(/^[0-9a-f]{32}$/);

/** An embargo in the index: the summary the team sees (its last break is `breaks`' last), and where its files are. */
const Entry = EmbargoSummary.omit({ lastBreak: true, lastBuild: true }).extend({
  patchFile: FileName,
  breaks: z.array(BreakInfo),
  build: BuildInfo.optional(),
  logs: z.array(z.strictObject({ file: FileName, bytes: z.number().int().min(0) })),
  artifacts: z.array(ArtifactInfo.extend({ file: FileName })),
  replaced: z.array(ReplacedInfo).optional(),
});
type Entry = z.infer<typeof Entry>;
const Index = z.strictObject({ version: z.literal(1), recipients: z.array(z.string()), embargoes: z.array(Entry) });
type Index = z.infer<typeof Index>;

/** What the promoter applies: an active embargo of one project, with its patch. */
export interface ActiveEmbargo {
  id: string;
  project: string;
  patch: string;
  digest: string;
  submittedBy: string;
  submittedAt: string;
}

export interface EmbargoStatus {
  id: string;
  project: string;
  state: EmbargoState;
  /** The last break is newer than the last patched image (or there is no patched image yet). */
  broken: boolean;
  lastBreak?: BreakInfo;
  lastBuild?: BuildInfo;
  retired?: RetiredInfo;
}

export interface EmbargoStoreOptions {
  /** `<dataDir>/embargo`. */
  dir: string;
  key: EmbargoKey;
  team: SecurityTeam;
  audit: Pick<AuditLog, 'append'>;
  now?: () => number;
}

/** `sha256:<hex>` of the patch's UTF-8 bytes. */
export function patchDigest(patch: string): string {
  return `sha256:${createHash('sha256').update(patch, 'utf8').digest('hex')}`;
}

export class EmbargoStore {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly files: SealedFiles,
    private readonly o: EmbargoStoreOptions,
    private index: Index,
  ) {}

  /** Open (or create) the store; re-encrypts it when the team changed; sweeps unreferenced files. */
  static async open(o: EmbargoStoreOptions): Promise<EmbargoStore> {
    const files = new SealedFiles(join(o.dir, 'files'), o.key, o.team.keys);
    const recipients = [o.key.fingerprint, ...o.team.fingerprints];
    const names = new Set(await files.names());
    if (!names.has(INDEX)) {
      // Files without their index: embargoes would silently vanish; an operator must look.
      if (names.size > 0) throw new StorageFailedError(`embargo store ${o.dir}: ${names.size} sealed files but no index; refusing to start an empty store over them`);
      const store = new EmbargoStore(files, o, { version: 1, recipients, embargoes: [] });
      await store.writeIndex(store.index);
      return store;
    }
    const parsed = Index.safeParse(jsonOf(Buffer.from(await files.read(INDEX)).toString('utf8')));
    if (!parsed.success) throw new StorageFailedError(`embargo store ${o.dir}: the index is not one this airlock understands: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
    const store = new EmbargoStore(files, o, parsed.data);
    const referenced = new Set([INDEX, ...store.index.embargoes.flatMap(filesOf)]);
    for (const name of names) if (!referenced.has(name)) await files.remove(name);
    if (store.index.recipients.join(',') !== recipients.join(',')) await store.rekey(recipients);
    return store;
  }

  /** The embargo key's public half (armored): what the security team encrypts requests to. */
  get publicKey(): string {
    return this.o.key.publicArmored;
  }

  /** Store a patch for `project`; the same active patch submitted again answers its existing id. */
  async submit(project: string, patch: string, by: string): Promise<{ id: string; digest: string; existing: boolean }> {
    parseOrThrow(ProjectName, project, 'project');
    parseOrThrow(PatchText, patch, 'patch');
    return this.serial(async () => {
      const digest = patchDigest(patch);
      const same = this.index.embargoes.find((e) => e.project === project && e.digest === digest && e.state === 'active');
      if (same) return { id: same.id, digest, existing: true };
      let id: string;
      do id = `emb-${randomBytes(8).toString('hex')}`;
      while (this.index.embargoes.some((e) => e.id === id));
      const patchFile = SealedFiles.newName();
      await this.files.write(patchFile, Buffer.from(patch, 'utf8'));
      const entry: Entry = { id, project, digest, state: 'active', submittedBy: by, submittedAt: this.time(), patchFile, breaks: [], logs: [], artifacts: [] };
      await this.commit({ ...this.index, embargoes: [...this.index.embargoes, entry] });
      await this.o.audit.append('embargo', { event: 'submitted', embargo: id, digest, by });
      return { id, digest, existing: false };
    });
  }

  /** The active embargoes of `project`, oldest first, each with its patch (checked against its digest). */
  active(project: string): Promise<ActiveEmbargo[]> {
    return this.serial(async () => {
      const out: ActiveEmbargo[] = [];
      for (const e of this.index.embargoes.filter((x) => x.project === project && x.state === 'active')) {
        out.push({ id: e.id, project: e.project, patch: await this.patchOf(e), digest: e.digest, submittedBy: e.submittedBy, submittedAt: e.submittedAt });
      }
      return out;
    });
  }

  /** Every embargo (or one project's), oldest first, without patches. */
  list(filter: { project?: string } = {}): EmbargoSummary[] {
    return this.index.embargoes.filter((e) => filter.project === undefined || e.project === filter.project).map(summaryOf);
  }

  /** One embargo with its patch, breaks and artifact list; NotFoundError for an unknown id. */
  get(id: string): Promise<EmbargoDetail> {
    return this.serial(async () => {
      const e = this.entry(id);
      return { ...summaryOf(e), patch: await this.patchOf(e), breaks: e.breaks, artifacts: e.artifacts.map(({ file: _f, ...a }) => a), ...(e.replaced ? { replaced: e.replaced } : {}), logBytes: e.logs.reduce((n, l) => n + l.bytes, 0) };
    });
  }

  status(id: string): EmbargoStatus {
    const e = this.entry(id);
    const lastBreak = e.breaks.at(-1);
    const broken = lastBreak !== undefined && (e.build === undefined || lastBreak.at >= e.build.at);
    return { id, project: e.project, state: e.state, broken, ...(lastBreak ? { lastBreak } : {}), ...(e.build ? { lastBuild: e.build } : {}), ...(e.retired ? { retired: e.retired } : {}) };
  }

  /** Retire an embargo (a member, or the builder when the public history has the fix). Idempotent. */
  retire(id: string, reason: string, by = AUTOMATIC): Promise<EmbargoSummary> {
    return this.serial(async () => {
      const e = this.entry(id);
      if (e.state === 'retired') return summaryOf(e);
      const retired = parseOrThrow(RetiredInfo, { at: this.time(), by, reason }, 'retirement');
      const next = this.replace({ ...e, state: 'retired', retired });
      await this.commit(next);
      await this.o.audit.append('embargo', { event: 'retired', embargo: id, digest: e.digest, by });
      return summaryOf(this.entry(id));
    });
  }

  /**
   * Replace an active embargo's patch (a rebase after it broke): same id, project, submitter and
   * log; the new patch is applied from the next private build on, the old digest is kept in
   * `replaced`. Refused (ConflictError, saying what to do) for a retired embargo, the same patch,
   * or a patch another active embargo of the project already carries.
   */
  replacePatch(id: string, patch: string, by: string): Promise<{ digest: string; previous: string }> {
    parseOrThrow(PatchText, patch, 'patch');
    return this.serial(async () => {
      const e = this.entry(id);
      const digest = patchDigest(patch);
      if (e.state !== 'active') throw new ConflictError(`embargo ${id} is retired: submit the new patch with airlock embargo submit`);
      if (digest === e.digest) throw new ConflictError(`that patch is already embargo ${id}'s (${digest}): nothing to replace`);
      const twin = this.index.embargoes.find((x) => x.id !== id && x.project === e.project && x.digest === digest && x.state === 'active');
      if (twin) throw new ConflictError(`that patch is already embargoed as ${twin.id}: retire one of the two instead`);
      const patchFile = SealedFiles.newName();
      await this.files.write(patchFile, Buffer.from(patch, 'utf8'));
      const replaced = [...(e.replaced ?? []), parseOrThrow(ReplacedInfo, { at: this.time(), by, digest: e.digest }, 'replacement')].slice(-MAX_BREAKS);
      await this.commit(this.replace({ ...e, digest, patchFile, replaced }));
      await this.files.remove(e.patchFile);
      await this.o.audit.append('embargo', { event: 'replaced', embargo: id, digest, previous: e.digest, by });
      return { digest, previous: e.digest };
    });
  }

  /** A public commit the patch does not apply to, or whose patched tests fail. */
  recordBreak(id: string, b: { commit: string; step?: BreakStep; reason: string }): Promise<void> {
    return this.serial(async () => {
      const e = this.entry(id);
      const entry = parseOrThrow(BreakInfo, { at: this.time(), commit: b.commit, ...(b.step ? { step: b.step } : {}), reason: b.reason }, 'break');
      await this.commit(this.replace({ ...e, breaks: [...e.breaks, entry].slice(-MAX_BREAKS) }));
      await this.o.audit.append('embargo', { event: 'break', embargo: id, digest: e.digest });
    });
  }

  /** A patched image was pushed for a public commit (`digest`: the image's manifest digest). */
  recordBuild(id: string, b: { commit: string; reference: string; digest: string }): Promise<void> {
    return this.serial(async () => {
      const e = this.entry(id);
      const build = parseOrThrow(BuildInfo, { at: this.time(), commit: b.commit, reference: b.reference, digest: b.digest }, 'build');
      await this.commit(this.replace({ ...e, build }));
      await this.o.audit.append('embargo', { event: 'built', embargo: id, digest: e.digest });
    });
  }

  /** Add to the embargo's private log; the oldest chunks go once it holds more than 16 MiB. */
  appendLog(id: string, text: string): Promise<void> {
    return this.serial(async () => {
      const e = this.entry(id);
      let bytes = Buffer.from(text, 'utf8');
      if (bytes.length > MAX_LOG_BYTES) bytes = Buffer.concat([Buffer.from(`[… ${bytes.length - MAX_LOG_BYTES} bytes dropped]\n`), bytes.subarray(bytes.length - MAX_LOG_BYTES)]);
      const file = SealedFiles.newName();
      await this.files.write(file, bytes);
      const logs = [...e.logs, { file, bytes: bytes.length }];
      let total = logs.reduce((n, l) => n + l.bytes, 0);
      const dropped: string[] = [];
      while (logs.length > 1 && total > MAX_LOG_BYTES) {
        const old = logs.shift()!;
        total -= old.bytes;
        dropped.push(old.file);
      }
      await this.commit(this.replace({ ...e, logs }));
      for (const f of dropped) await this.files.remove(f);
    });
  }

  /** The embargo's log, oldest first (what is kept of it). */
  logs(id: string): Promise<string> {
    return this.serial(async () => {
      const parts: Buffer[] = [];
      for (const l of this.entry(id).logs) parts.push(Buffer.from(await this.files.read(l.file)));
      return Buffer.concat(parts).toString('utf8');
    });
  }

  /** Store (or replace) an artifact of the embargo's private build. */
  putArtifact(id: string, name: string, bytes: Uint8Array): Promise<ArtifactInfo> {
    return this.serial(async () => {
      const e = this.entry(id);
      if (bytes.byteLength > MAX_ARTIFACT_BYTES) throw new PayloadTooLargeError(`artifact of ${bytes.byteLength} bytes: the embargo store keeps at most ${MAX_ARTIFACT_BYTES}`);
      const file = SealedFiles.newName();
      const info = parseOrThrow(ArtifactInfo, { name, size: bytes.byteLength, sha256: createHash('sha256').update(bytes).digest('hex'), at: this.time() }, 'artifact');
      await this.files.write(file, bytes);
      const old = e.artifacts.find((a) => a.name === name);
      await this.commit(this.replace({ ...e, artifacts: [...e.artifacts.filter((a) => a.name !== name), { ...info, file }] }));
      if (old) await this.files.remove(old.file);
      return info;
    });
  }

  artifact(id: string, name: string): Promise<Uint8Array> {
    return this.serial(async () => {
      const a = this.entry(id).artifacts.find((x) => x.name === name);
      if (!a) throw new NotFoundError(`embargo ${id} has no artifact ${JSON.stringify(name)}`);
      return this.files.read(a.file);
    });
  }

  /** Waits for pending operations. The store holds no handle. */
  async close(): Promise<void> {
    await this.queue;
  }

  private entry(id: string): Entry {
    const e = this.index.embargoes.find((x) => x.id === id);
    if (!e) throw new NotFoundError(`no embargo ${JSON.stringify(id)}`);
    return e;
  }

  private replace(e: Entry): Index {
    return { ...this.index, embargoes: this.index.embargoes.map((x) => (x.id === e.id ? e : x)) };
  }

  private async patchOf(e: Entry): Promise<string> {
    const patch = Buffer.from(await this.files.read(e.patchFile)).toString('utf8');
    if (patchDigest(patch) !== e.digest) throw new StorageFailedError(`embargo ${e.id}: the stored patch does not match its digest`);
    return patch;
  }

  private async commit(next: Index): Promise<void> {
    await this.writeIndex(next);
    this.index = next;
  }

  private writeIndex(index: Index): Promise<void> {
    return this.files.write(INDEX, Buffer.from(JSON.stringify(Index.parse(index)), 'utf8'));
  }

  /** Re-encrypt every file to the current recipients; the index last, so a crash repeats it. */
  private async rekey(recipients: string[]): Promise<void> {
    const names = this.index.embargoes.flatMap(filesOf);
    for (const name of names) await this.files.write(name, await this.files.read(name));
    await this.commit({ ...this.index, recipients });
    await this.o.audit.append('embargo', { event: 'rekeyed', files: names.length + 1, recipients });
  }

  private time(): string {
    return new Date((this.o.now ?? Date.now)()).toISOString();
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }
}

function jsonOf(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function filesOf(e: Entry): string[] {
  return [e.patchFile, ...e.logs.map((l) => l.file), ...e.artifacts.map((a) => a.file)];
}

function summaryOf(e: Entry): EmbargoSummary {
  const lastBreak = e.breaks.at(-1);
  return {
    id: e.id,
    project: e.project,
    digest: e.digest,
    state: e.state,
    submittedBy: e.submittedBy,
    submittedAt: e.submittedAt,
    ...(e.retired ? { retired: e.retired } : {}),
    ...(lastBreak ? { lastBreak } : {}),
    ...(e.build ? { lastBuild: e.build } : {}),
  };
}
